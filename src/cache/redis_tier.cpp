// pare::RedisTier: GET/SET through a small pool of blocking hiredis
// connections, each with a send/receive timeout, and a back-off window after
// failures so a dead server costs one timeout, not one per lookup.

#include "pare/cache/redis_tier.hpp"

#include <atomic>
#include <mutex>
#include <vector>

#include <hiredis/hiredis.h>

namespace pare {
namespace detail {

// Named, not anonymous: RedisTier::Impl holds these, and a class with external
// linkage must not hold a type with internal linkage (GCC warns in unity builds).
struct RedisContextDeleter {
  void operator()(redisContext* c) const { redisFree(c); }
};

}  // namespace detail

namespace {

using Clock = std::chrono::steady_clock;
using Context = std::unique_ptr<redisContext, detail::RedisContextDeleter>;

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

timeval to_timeval(std::chrono::milliseconds ms) {
  return {static_cast<time_t>(ms.count() / 1000), static_cast<suseconds_t>((ms.count() % 1000) * 1000)};
}

[[noreturn]] void fail(const std::string& what) {
  throw Error("RedisTier: " + what, Error::Kind::Runtime);
}

// Escapes glob characters so the prefix matches itself in SCAN MATCH.
std::string glob_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '*' || c == '?' || c == '[' || c == ']' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

struct RedisTier::Impl {
  RedisTierOptions options;
  std::mutex mutex;             // guards idle and retry_at
  std::vector<Context> idle;    // connections ready for reuse
  Clock::time_point retry_at{};  // no calls before this after a failure
  std::atomic<uint64_t> gets{0}, puts{0}, errors{0}, skipped{0};

  explicit Impl(RedisTierOptions o) : options(std::move(o)) {
    require(!options.host().empty(), "RedisTierOptions: host is empty");
    require(options.port() > 0 && options.port() < 65536,
            "RedisTierOptions: port must be in [1, 65535], got " + std::to_string(options.port()));
    require(options.timeout().count() > 0, "RedisTierOptions: timeout must be > 0");
    require(options.ttl().count() >= 0 && options.retry_after().count() >= 0,
            "RedisTierOptions: ttl and retry_after must be >= 0");
    require(options.user().empty() || !options.password().empty(),
            "RedisTierOptions: user(\"" + options.user() + "\") needs a password(...)");
  }

  // AUTH [user] password on a fresh connection. A refusal is the caller's
  // configuration, not the server's health: InvalidArgument.
  void authenticate(redisContext* c) {
    if (options.password().empty()) return;
    const auto& user = options.user();
    const auto& password = options.password();
    Reply reply(static_cast<redisReply*>(
        user.empty() ? redisCommand(c, "AUTH %b", password.data(), password.size())
                     : redisCommand(c, "AUTH %b %b", user.data(), user.size(), password.data(), password.size())));
    if (!reply) fail(std::string("AUTH failed: ") + (c->err ? c->errstr : "no reply"));
    if (reply->type == REDIS_REPLY_ERROR)
      throw Error("RedisTier: " + options.host() + ":" + std::to_string(options.port()) + " refused AUTH" +
                      (user.empty() ? "" : " for user \"" + user + "\"") + ": " + std::string(reply->str, reply->len) +
                      "; check RedisTierOptions::password" + (user.empty() ? "" : " and ::user"),
                  Error::Kind::InvalidArgument);
  }

  bool backing_off() {
    std::lock_guard<std::mutex> lock(mutex);
    return Clock::now() < retry_at;
  }

  Context connect() {
    Context c(redisConnectWithTimeout(options.host().c_str(), int(options.port()), to_timeval(options.timeout())));
    if (!c) fail("cannot allocate a connection");
    if (c->err) fail("cannot connect to " + options.host() + ":" + std::to_string(options.port()) + ": " + c->errstr);
    if (redisSetTimeout(c.get(), to_timeval(options.timeout())) != REDIS_OK) fail("cannot set the timeout");
    authenticate(c.get());
    return c;
  }

  Context acquire() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (!idle.empty()) {
        Context c = std::move(idle.back());
        idle.pop_back();
        return c;
      }
    }
    return connect();
  }

  void release(Context c) {
    std::lock_guard<std::mutex> lock(mutex);
    if (idle.size() < size_t(options.max_idle_connections())) idle.push_back(std::move(c));
  }

  // Runs one command; on any failure drops the connection, starts the back-off and throws.
  template <class... Args>
  Reply command(const char* format, Args... args) {
    try {
      Context c = acquire();
      Reply reply(static_cast<redisReply*>(redisCommand(c.get(), format, args...)));
      if (!reply) fail(std::string("command failed: ") + (c->err ? c->errstr : "no reply"));
      if (reply->type == REDIS_REPLY_ERROR) fail("server error: " + std::string(reply->str, reply->len));
      release(std::move(c));
      return reply;
    } catch (const Error&) {
      errors.fetch_add(1, std::memory_order_relaxed);
      std::lock_guard<std::mutex> lock(mutex);
      retry_at = Clock::now() + options.retry_after();
      idle.clear();  // the others may point at the same dead server
      throw;
    }
  }
};

// Checks the credentials once, now: a refused AUTH, or a server that wants a
// password none was given for, throws. An unreachable server does not: the
// cache carries on without it and the tier retries after its back-off.
RedisTier::RedisTier(RedisTierOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  Context c;
  try {
    c = impl_->connect();  // sends AUTH when there is a password
  } catch (const Error& e) {
    if (e.kind() == Error::Kind::InvalidArgument) throw;
    return;
  }
  Reply reply(static_cast<redisReply*>(redisCommand(c.get(), "PING")));
  if (reply && reply->type == REDIS_REPLY_ERROR && std::string(reply->str, reply->len).rfind("NOAUTH", 0) == 0)
    throw Error("RedisTier: " + impl_->options.host() + ":" + std::to_string(impl_->options.port()) +
                    " requires a password: set RedisTierOptions::password (and ::user for an ACL user)",
                Error::Kind::InvalidArgument);
  if (reply && reply->type == REDIS_REPLY_STATUS) impl_->release(std::move(c));
}
RedisTier::~RedisTier() = default;

const RedisTierOptions& RedisTier::options() const { return impl_->options; }

std::optional<std::string> RedisTier::get(const std::string& key) {
  if (impl_->backing_off()) {
    impl_->skipped.fetch_add(1, std::memory_order_relaxed);
    return std::nullopt;
  }
  impl_->gets.fetch_add(1, std::memory_order_relaxed);
  const std::string full = impl_->options.key_prefix() + key;
  Reply reply = impl_->command("GET %b", full.data(), full.size());
  if (reply->type == REDIS_REPLY_NIL) return std::nullopt;
  if (reply->type != REDIS_REPLY_STRING) fail("GET " + full + " returned a non-string reply");
  return std::string(reply->str, reply->len);
}

void RedisTier::put(const std::string& key, const std::string& value, std::chrono::milliseconds ttl) {
  if (impl_->backing_off()) {
    impl_->skipped.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  impl_->puts.fetch_add(1, std::memory_order_relaxed);
  const std::string full = impl_->options.key_prefix() + key;
  const auto expiry = impl_->options.ttl().count() > 0 ? impl_->options.ttl() : ttl;
  if (expiry.count() > 0)
    impl_->command("SET %b %b PX %lld", full.data(), full.size(), value.data(), value.size(),
                   static_cast<long long>(expiry.count()));
  else
    impl_->command("SET %b %b", full.data(), full.size(), value.data(), value.size());
}

int64_t RedisTier::clear() {
  const std::string pattern = glob_escape(impl_->options.key_prefix()) + "*";
  std::string cursor = "0";
  int64_t deleted = 0;
  do {
    Reply reply = impl_->command("SCAN %b MATCH %b COUNT 512", cursor.data(), cursor.size(), pattern.data(),
                                 pattern.size());
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) fail("SCAN returned an unexpected reply");
    cursor.assign(reply->element[0]->str, reply->element[0]->len);
    const redisReply* keys = reply->element[1];
    for (size_t i = 0; i < keys->elements; ++i) {
      Reply del = impl_->command("DEL %b", keys->element[i]->str, keys->element[i]->len);
      deleted += static_cast<int64_t>(del->integer);
    }
  } while (cursor != "0");
  return deleted;
}

bool RedisTier::ping() {
  try {
    Reply reply = impl_->command("PING");
    return reply->type == REDIS_REPLY_STATUS;
  } catch (const Error&) {
    return false;
  }
}

RedisTierStats RedisTier::stats() const {
  RedisTierStats s;
  s.gets = int64_t(impl_->gets.load());
  s.puts = int64_t(impl_->puts.load());
  s.errors = int64_t(impl_->errors.load());
  s.skipped = int64_t(impl_->skipped.load());
  return s;
}

std::string RedisTierStats::to_prometheus(const prometheus::Labels& labels) const {
  std::string out;
  auto counter = [&](const char* name, const char* help, int64_t value) {
    prometheus::append_metric(out, std::string("pare_redis_tier_") + name, "counter", help, double(value), labels);
  };
  counter("gets_total", "GET commands sent to the Redis tier.", gets);
  counter("puts_total", "SET commands sent to the Redis tier.", puts);
  counter("errors_total", "Failed Redis commands or connections.", errors);
  counter("skipped_total", "Calls not sent because the server failed less than retry_after ago.", skipped);
  return out;
}

}  // namespace pare
