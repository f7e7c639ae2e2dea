// pare::RedisTier behind pare::InferenceCache, against a real redis-server
// started on a free port: sharing between processes, the server killed
// mid-run, a slow server, corrupted values, namespaces, models, TTL, AUTH.
// Without redis-server the whole file is skipped, loudly (exit code 77, which
// ctest reports as "Skipped").

#include "support/testing.hpp"

#include <hiredis/hiredis.h>

#include <atomic>
#include <cstdio>
#include <iostream>
#include <thread>
#include <ATen/Parallel.h>

#include "pare/cache/redis_tier.hpp"
#include "pare/serve/runner.hpp"
#include "support/redis_server.hpp"

using namespace std::chrono_literals;
using pare::InferenceCache;
using pare::InferenceCacheOptions;
using pare::RedisTier;
using pare::RedisTierOptions;
using pare::testing::RedisServer;

namespace {

at::Tensor shared_input() { return at::arange(3 * 32 * 32, at::kFloat).reshape({1, 3, 32, 32}) / 7; }

std::shared_ptr<RedisTier> tier_on(int port, const std::string& prefix = "test:") {
  return std::make_shared<RedisTier>(
      RedisTierOptions().port(port).key_prefix(prefix).timeout(200ms).retry_after(100ms));
}

constexpr int kSkipped = 77;  // SKIP_RETURN_CODE in tests/CMakeLists.txt

int skip_unless_redis_is_installed() {
  if (RedisServer::available()) return 0;
  std::fprintf(stderr, "SKIPPED: every test of the Redis tier: redis-server is not on PATH "
                       "(install the Debian package redis-server; scripts/pare-dev does)\n");
  std::_Exit(kSkipped);
}
const int redis_checked = skip_unless_redis_is_installed();

// Peer mode: the test binary re-executed with PARE_REDIS_PEER=<port> computes
// (or reuses) the shared input's result through Redis, prints what happened
// and exits before Catch runs.
int run_peer_if_asked() {
  const char* port = std::getenv("PARE_REDIS_PEER");
  if (!port) return 0;
  at::set_num_threads(1);
  InferenceCache cache(InferenceCacheOptions().remote(tier_on(std::atoi(port))));
  bool computed = false;
  const auto x = shared_input();
  const auto out = cache.get_or_compute({x}, [&] {
    computed = true;
    return c10::IValue(x.sum().reshape({1}));
  });
  std::printf("%s %.6f\n", computed ? "computed" : "reused", out.toTensor().item<double>());
  std::fflush(stdout);
  std::_Exit(0);
}
const int peer_mode = run_peer_if_asked();

std::string run_peer(int port) {
  char self[4096] = {};
  REQUIRE(::readlink("/proc/self/exe", self, sizeof self - 1) > 0);
  const std::string command = "PARE_REDIS_PEER=" + std::to_string(port) + " '" + self + "'";
  FILE* pipe = ::popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string output;
  char buffer[256];
  while (std::fgets(buffer, sizeof buffer, pipe)) output += buffer;
  REQUIRE(::pclose(pipe) == 0);
  return output;
}

// Runs `f` with a raw hiredis connection to the server, for tampering.
template <class F>
void with_redis(int port, F f) {
  redisContext* c = redisConnect("127.0.0.1", port);
  REQUIRE((c && !c->err));
  f(c);
  redisFree(c);
}

std::vector<std::string> keys_under(int port, const std::string& prefix) {
  std::vector<std::string> keys;
  with_redis(port, [&](redisContext* c) {
    auto* reply = static_cast<redisReply*>(redisCommand(c, "KEYS %s*", prefix.c_str()));
    for (size_t i = 0; i < reply->elements; ++i) keys.emplace_back(reply->element[i]->str, reply->element[i]->len);
    freeReplyObject(reply);
  });
  return keys;
}

struct Counting {
  std::atomic<int> calls{0};
  InferenceCache::Compute on(const at::Tensor& x) {
    return [this, x] { ++calls; return c10::IValue(x * 2); };
  }
};

}  // namespace

TEST_CASE("a result computed in one cache is served to another through Redis") {
  at::set_num_threads(1);
  RedisServer server;
  auto tier = tier_on(server.port());
  InferenceCache first(InferenceCacheOptions().remote(tier)), second(InferenceCacheOptions().remote(tier));
  Counting model;
  const auto x = at::randn({2, 5});
  first.get_or_compute({x}, model.on(x));
  const auto out = second.get_or_compute({x}, model.on(x));
  CHECK(model.calls == 1);
  CHECK(out.toTensor().equal(x * 2));
  CHECK(second.stats().remote_hits == 1);
  CHECK(second.stats().hits == 1);
  CHECK(second.stats().entries == 1);  // now in memory as well
  CHECK(tier->stats().errors == 0);

  SECTION("other namespaces and other shapes are not shared") {
    InferenceCache other(InferenceCacheOptions().remote(tier).key_namespace("model-b"));
    other.get_or_compute({x}, model.on(x));
    InferenceCache third(InferenceCacheOptions().remote(tier));
    third.get_or_compute({x.reshape({5, 2})}, model.on(x));
    CHECK(model.calls == 3);
  }
}

TEST_CASE("two separate processes share results through Redis") {
  RedisServer server;
  const auto first = run_peer(server.port());
  const auto second = run_peer(server.port());
  CHECK(first.rfind("computed ", 0) == 0);
  CHECK(second.rfind("reused ", 0) == 0);
  CHECK(first.substr(first.find(' ')) == second.substr(second.find(' ')));
  // And this process reads what the peers stored, without computing.
  InferenceCache cache(InferenceCacheOptions().remote(tier_on(server.port())));
  const auto x = shared_input();
  const auto out = cache.get({x});
  REQUIRE(out.has_value());
  CHECK(out->toTensor().equal(x.sum().reshape({1})));
}

TEST_CASE("inference carries on when Redis is killed mid-run") {
  at::set_num_threads(1);
  auto server = std::make_unique<RedisServer>();
  const int port = server->port();
  auto tier = tier_on(port);
  InferenceCache cache(InferenceCacheOptions().remote(tier));
  Counting model;
  std::vector<at::Tensor> xs;
  for (int i = 0; i < 8; ++i) xs.push_back(at::full({4}, double(i)));
  for (int i = 0; i < 4; ++i) cache.get_or_compute({xs[i]}, model.on(xs[i]));
  server->kill_now();
  for (int i = 0; i < 8; ++i) CHECK(cache.get_or_compute({xs[i]}, model.on(xs[i])).toTensor().equal(xs[i] * 2));
  CHECK(model.calls == 8);  // 0-3 from memory, 4-7 computed
  CHECK(cache.stats().remote_errors >= 1);
  CHECK(tier->stats().skipped >= 1);  // back-off: the dead server is not retried for every call

  SECTION("and uses Redis again once it is back") {
    server = std::make_unique<RedisServer>(port);
    std::this_thread::sleep_for(150ms);  // past retry_after
    const auto y = at::full({4}, 42.0);
    cache.get_or_compute({y}, model.on(y));
    InferenceCache fresh(InferenceCacheOptions().remote(tier));
    CHECK(fresh.get_or_compute({y}, model.on(y)).toTensor().equal(y * 2));
    CHECK(fresh.stats().remote_hits == 1);
  }
}

TEST_CASE("a slow Redis times out and the cache computes instead") {
  at::set_num_threads(1);
  RedisServer server;
  auto tier = std::make_shared<RedisTier>(RedisTierOptions().port(server.port()).timeout(50ms));
  REQUIRE(tier->ping());
  redisContext* busy = redisConnect("127.0.0.1", server.port());
  REQUIRE((busy && !busy->err));
  std::thread sleeper([&] { freeReplyObject(redisCommand(busy, "DEBUG SLEEP 0.6")); });  // no Catch macros off the main thread
  std::this_thread::sleep_for(100ms);  // the server is now busy
  InferenceCache cache(InferenceCacheOptions().remote(tier));
  Counting model;
  const auto x = at::ones({3});
  CHECK(cache.get_or_compute({x}, model.on(x)).toTensor().equal(x * 2));
  CHECK(model.calls == 1);
  CHECK(cache.stats().remote_errors >= 1);
  sleeper.join();
  redisFree(busy);
}

TEST_CASE("a corrupted value in Redis is detected, counted and replaced") {
  at::set_num_threads(1);
  RedisServer server;
  auto tier = tier_on(server.port(), "corrupt:");
  Counting model;
  const auto x = at::randn({8, 8});
  InferenceCache(InferenceCacheOptions().remote(tier)).get_or_compute({x}, model.on(x));
  const auto keys = keys_under(server.port(), "corrupt:");
  REQUIRE(keys.size() == 1);

  const std::string tamper = GENERATE(as<std::string>{}, "flip", "garbage", "truncate");
  with_redis(server.port(), [&](redisContext* c) {
    redisReply* r = nullptr;
    if (tamper == "flip") r = static_cast<redisReply*>(redisCommand(c, "SETRANGE %s 60 XXXX", keys[0].c_str()));
    if (tamper == "garbage") r = static_cast<redisReply*>(redisCommand(c, "SET %s not-a-record", keys[0].c_str()));
    if (tamper == "truncate") r = static_cast<redisReply*>(redisCommand(c, "SET %s PARECR", keys[0].c_str()));
    freeReplyObject(r);
  });
  InferenceCache victim(InferenceCacheOptions().remote(tier));
  CHECK(victim.get_or_compute({x}, model.on(x)).toTensor().equal(x * 2));
  CHECK(model.calls == 2);
  CHECK(victim.stats().remote_errors == 1);
  CHECK(victim.stats().remote_hits == 0);
  // The recomputed result replaced the bad value.
  InferenceCache healed(InferenceCacheOptions().remote(tier));
  CHECK(healed.get_or_compute({x}, model.on(x)).toTensor().equal(x * 2));
  CHECK(healed.stats().remote_hits == 1);
}

TEST_CASE("Redis entries expire with the TTL and clear() removes the prefix") {
  at::set_num_threads(1);
  RedisServer server;
  auto tier = tier_on(server.port(), "ttl:");
  Counting model;
  const auto x = at::ones({2}), y = at::zeros({2});
  InferenceCache(InferenceCacheOptions().remote(tier).ttl(100ms)).get_or_compute({x}, model.on(x));
  InferenceCache(InferenceCacheOptions().remote(tier)).get_or_compute({y}, model.on(y));
  std::this_thread::sleep_for(250ms);
  InferenceCache fresh(InferenceCacheOptions().remote(tier));
  fresh.get_or_compute({x}, model.on(x));
  CHECK(model.calls == 3);  // x expired in Redis and was computed again
  CHECK(tier->clear() == 2);
  CHECK(keys_under(server.port(), "ttl:").empty());
}

TEST_CASE("threads share one tier safely") {
  at::set_num_threads(1);
  RedisServer server;
  auto tier = tier_on(server.port(), "threads:");
  InferenceCache a(InferenceCacheOptions().remote(tier).shards(2)), b(InferenceCacheOptions().remote(tier).shards(2));
  std::vector<at::Tensor> xs;
  for (int i = 0; i < 16; ++i) xs.push_back(at::full({16}, double(i)));
  std::atomic<int> wrong{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < 4; ++t)
    pool.emplace_back([&, t] {
      InferenceCache& cache = t % 2 ? a : b;
      for (int i = 0; i < 64; ++i) {
        const auto& x = xs[(i * 5 + t) % xs.size()];
        if (!cache.get_or_compute({x}, [&] { return c10::IValue(x * 2); }).toTensor().equal(x * 2)) ++wrong;
      }
    });
  for (auto& th : pool) th.join();
  CHECK(wrong == 0);
  CHECK(a.stats().remote_errors + b.stats().remote_errors == 0);
  CHECK(a.stats().remote_hits + b.stats().remote_hits >= 1);
}

TEST_CASE("RedisTierOptions are validated") {
  CHECK_THROWS_AS(RedisTier(RedisTierOptions().port(0)), pare::Error);
  CHECK_THROWS_AS(RedisTier(RedisTierOptions().host("")), pare::Error);
  CHECK_THROWS_AS(RedisTier(RedisTierOptions().timeout(0ms)), pare::Error);
  // Nothing listens on a fresh free port: get() throws, the back-off then skips.
  RedisTier nowhere(RedisTierOptions().port(pare::testing::free_port()).retry_after(10s));
  CHECK_THROWS_AS(nowhere.get("k"), pare::Error);
  CHECK_FALSE(nowhere.get("k").has_value());
  CHECK(nowhere.stats().errors == 1);
  CHECK(nowhere.stats().skipped == 1);
}

namespace {

// y = x * weight: models that differ only in their weights.
torch::jit::Module scaling(float weight) {
  torch::jit::Module m("__torch__.Scaling");
  m.register_parameter("weight", torch::full({1}, weight), false);
  m.define("def forward(self, x):\n  return x * self.weight\n");
  return m;
}

}  // namespace

TEST_CASE("runners over different models in two processes share one Redis tier without mixing results") {
  at::set_num_threads(1);
  RedisServer server;
  auto tier = tier_on(server.port(), "models:");
  // Two caches stand for two processes; each serves its own model.
  auto first_process = std::make_shared<InferenceCache>(InferenceCacheOptions().remote(tier));
  auto second_process = std::make_shared<InferenceCache>(InferenceCacheOptions().remote(tier));
  pare::Runner doubling(scaling(2), pare::RunnerOptions().cache(first_process));
  pare::Runner tripling(scaling(3), pare::RunnerOptions().cache(second_process));
  const auto x = torch::full({1, 4}, 5.0f);
  CHECK(torch::equal(doubling.run({x}).toTensor(), x * 2));
  CHECK(torch::equal(tripling.run({x}).toTensor(), x * 3));  // before: Redis served x * 2
  CHECK(second_process->stats().remote_hits == 0);
  CHECK(keys_under(server.port(), "models:").size() == 2);

  SECTION("a third process serving the first model reuses its result") {
    auto third_process = std::make_shared<InferenceCache>(InferenceCacheOptions().remote(tier));
    pare::Runner doubling_again(scaling(2), pare::RunnerOptions().cache(third_process));
    CHECK(torch::equal(doubling_again.run({x}).toTensor(), x * 2));
    CHECK(third_process->stats().remote_hits == 1);
    CHECK(doubling_again.stats().batches == 0);
  }
}

TEST_CASE("a Redis server with a password: the right one works, a wrong one fails at construction") {
  at::set_num_threads(1);
  RedisServer server(0, {"--requirepass", "s3cret"});
  auto options = RedisTierOptions().port(server.port()).key_prefix("auth:").timeout(200ms);
  auto tier = std::make_shared<RedisTier>(RedisTierOptions(options).password("s3cret"));
  Counting model;
  const auto x = at::ones({3});
  InferenceCache(InferenceCacheOptions().remote(tier)).get_or_compute({x}, model.on(x));
  InferenceCache other(InferenceCacheOptions().remote(tier));
  CHECK(other.get_or_compute({x}, model.on(x)).toTensor().equal(x * 2));
  CHECK(model.calls == 1);
  CHECK(other.stats().remote_hits == 1);
  CHECK(tier->stats().errors == 0);

  CHECK_THROWS_WITH(RedisTier(RedisTierOptions(options).password("wrong")),
                    Catch::Contains("refused AUTH") && Catch::Contains("password"));
  CHECK_THROWS_WITH(RedisTier(options), Catch::Contains("requires a password"));
  try {
    RedisTier(RedisTierOptions(options).password("wrong"));
  } catch (const pare::Error& e) {
    CHECK(e.kind() == pare::Error::Kind::InvalidArgument);
  }
}

TEST_CASE("a Redis ACL user authenticates with its name and password") {
  at::set_num_threads(1);
  RedisServer server(0, {"--user", "default", "off", "--user", "cache", "on", ">pw1", "~pare:*", "+@all"});
  auto options = RedisTierOptions().port(server.port()).key_prefix("pare:acl:").timeout(200ms);
  auto tier = std::make_shared<RedisTier>(RedisTierOptions(options).user("cache").password("pw1"));
  CHECK(tier->ping());
  Counting model;
  const auto x = at::ones({2});
  InferenceCache(InferenceCacheOptions().remote(tier)).get_or_compute({x}, model.on(x));
  CHECK(InferenceCache(InferenceCacheOptions().remote(tier)).get({x}).has_value());
  CHECK(tier->stats().errors == 0);
  CHECK_THROWS_WITH(RedisTier(RedisTierOptions(options).user("cache").password("pw2")),
                    Catch::Contains("refused AUTH for user \"cache\""));
  CHECK_THROWS_WITH(RedisTier(RedisTierOptions(options).user("nobody").password("pw1")),
                    Catch::Contains("refused AUTH"));
  CHECK_THROWS_WITH(RedisTier(RedisTierOptions(options).user("cache")), Catch::Contains("needs a password"));
}
