// pare::InferenceCache: sharded LRU lists, single-flight computation, the
// remote tier, statistics. IValue specifics live in cache_values.cpp.

#include "pare/cache.hpp"

#include <atomic>
#include <condition_variable>
#include <list>
#include <mutex>
#include <unordered_map>

#include "cache_values.hpp"

namespace pare {
namespace {

using Clock = std::chrono::steady_clock;
using cache_detail::deep_copy;
using cache_detail::same_inputs;

// Per-entry bookkeeping (list node, map node, IValue headers), counted against capacity.
constexpr size_t kEntryOverhead = 256;

struct KeyHasher {
  size_t operator()(const Hash128& k) const { return static_cast<size_t>(k.low ^ (k.high * 0x9E3779B97F4A7C15ull)); }
};

struct Entry {
  Hash128 key;
  InferenceCache::Inputs inputs;  // the cache's own copy; empty when verify is off
  c10::IValue output;             // the cache's own copy, never handed out
  size_t bytes = 0;
  double compute_seconds = 0;
  Clock::time_point expires = Clock::time_point::max();
};

// One computation in progress; callers with the same inputs wait for it.
struct Flight {
  InferenceCache::Inputs inputs;
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  c10::IValue output;  // the stored copy; waiters take deep copies
  double compute_seconds = 0;
  std::exception_ptr error;

  void finish(c10::IValue value, double seconds, std::exception_ptr failure) {
    std::lock_guard<std::mutex> lock(mutex);
    output = std::move(value);
    compute_seconds = seconds;
    error = std::move(failure);
    done = true;
    done_cv.notify_all();
  }
  void wait() {
    std::unique_lock<std::mutex> lock(mutex);
    done_cv.wait(lock, [&] { return done; });
  }
};

struct Shard {
  std::mutex mutex;
  std::list<Entry> lru;  // front: most recently used
  std::unordered_map<Hash128, std::list<Entry>::iterator, KeyHasher> index;
  std::unordered_map<Hash128, std::shared_ptr<Flight>, KeyHasher> flights;
  size_t bytes = 0;
};

// What a locked lookup hands out: references to immutable stored values.
struct Found {
  InferenceCache::Inputs inputs;
  c10::IValue output;
  double compute_seconds = 0;
};

struct Counters {
  std::atomic<uint64_t> hits{0}, misses{0}, evictions{0}, expirations{0}, collisions{0}, coalesced{0},
      remote_hits{0}, remote_errors{0}, nanoseconds_saved{0};
};

void bump(std::atomic<uint64_t>& counter, uint64_t by = 1) { counter.fetch_add(by, std::memory_order_relaxed); }

}  // namespace

struct InferenceCache::Impl {
  CacheOptions options;
  std::vector<Shard> shards;
  size_t shard_capacity = 0, shard_max_entries = 0;
  mutable Counters counters;

  explicit Impl(CacheOptions o) : options(std::move(o)) {
    require(options.capacity_bytes() > 0, "CacheOptions: capacity_bytes must be > 0");
    require(options.shards() >= 1 && options.shards() <= 1024,
            "CacheOptions: shards must be in [1, 1024], got " + std::to_string(options.shards()));
    require(options.key_bits() >= 0 && options.key_bits() <= 128,
            "CacheOptions: key_bits must be in [0, 128], got " + std::to_string(options.key_bits()));
    require(options.ttl().count() >= 0, "CacheOptions: ttl must be >= 0 (0: no expiry)");
    size_t count = options.shards();
    if (options.max_entries() > 0) count = std::min(count, options.max_entries());  // >= 1 entry per shard
    shards = std::vector<Shard>(count);
    shard_capacity = options.capacity_bytes() / count;
    shard_max_entries = options.max_entries() / count;
  }

  Hash128 key_of(const Inputs& inputs) const {
    auto key = cache_detail::hash_inputs(options.key_namespace(), inputs);
    const int bits = options.key_bits();
    if (bits < 128) key.high &= bits <= 64 ? 0 : (~0ull >> (128 - bits));
    if (bits < 64) key.low &= bits == 0 ? 0 : (~0ull >> (64 - bits));
    return key;
  }
  Shard& shard_of(const Hash128& key) { return shards[(key.low ^ key.high) % shards.size()]; }
  std::string remote_key(const Hash128& key) const {
    return options.key_namespace().empty() ? key.hex() : options.key_namespace() + ":" + key.hex();
  }

  void drop_locked(Shard& s, std::list<Entry>::iterator it) {
    s.bytes -= it->bytes;
    s.index.erase(it->key);
    s.lru.erase(it);
  }

  std::optional<Found> find_locked(Shard& s, const Hash128& key) {
    auto it = s.index.find(key);
    if (it == s.index.end()) return std::nullopt;
    if (Clock::now() >= it->second->expires) {
      drop_locked(s, it->second);
      bump(counters.expirations);
      return std::nullopt;
    }
    s.lru.splice(s.lru.begin(), s.lru, it->second);
    const Entry& e = *it->second;
    return Found{e.inputs, e.output, e.compute_seconds};
  }

  // Looks up memory; a found entry whose stored inputs differ (a collision) is a miss.
  std::optional<Found> find(const Hash128& key, const Inputs& inputs) {
    Shard& s = shard_of(key);
    std::optional<Found> found;
    {
      std::lock_guard<std::mutex> lock(s.mutex);
      found = find_locked(s, key);
    }
    if (found && options.verify() && !same_inputs(found->inputs, inputs)) {
      bump(counters.collisions);
      return std::nullopt;
    }
    return found;
  }

  // Stores copies already made by the caller; evicts least recently used entries to fit.
  void insert(const Hash128& key, Inputs stored_inputs, c10::IValue stored_output, size_t bytes, double seconds) {
    Entry entry{key, std::move(stored_inputs), std::move(stored_output), bytes + kEntryOverhead, seconds};
    if (options.ttl().count() > 0) entry.expires = Clock::now() + options.ttl();
    Shard& s = shard_of(key);
    std::lock_guard<std::mutex> lock(s.mutex);
    auto existing = s.index.find(key);
    if (existing != s.index.end()) drop_locked(s, existing->second);
    if (entry.bytes > shard_capacity) return;  // larger than a shard may ever hold
    while (!s.lru.empty() && (s.bytes + entry.bytes > shard_capacity ||
                              (shard_max_entries && s.lru.size() >= shard_max_entries))) {
      drop_locked(s, std::prev(s.lru.end()));
      bump(counters.evictions);
    }
    s.bytes += entry.bytes;
    s.lru.push_front(std::move(entry));
    s.index.emplace(key, s.lru.begin());
  }

  void store(const Hash128& key, const Inputs& inputs, const c10::IValue& output, double seconds,
             c10::IValue* stored = nullptr) {
    size_t bytes = 0;
    Inputs inputs_copy;
    if (options.verify())
      for (const auto& input : inputs) inputs_copy.push_back(deep_copy(input, bytes, "InferenceCache"));
    auto output_copy = deep_copy(output, bytes, "InferenceCache");
    if (stored) *stored = output_copy;
    insert(key, std::move(inputs_copy), std::move(output_copy), bytes, seconds);
  }

  void record_hit(double compute_seconds) {
    bump(counters.hits);
    bump(counters.nanoseconds_saved, static_cast<uint64_t>(std::max(0.0, compute_seconds) * 1e9));
  }

  // The remote tier's record for `key`, if it holds one for these very inputs.
  std::optional<CacheRecord> remote_get(const Hash128& key, const Inputs& inputs) {
    const auto& remote = options.remote();
    if (!remote) return std::nullopt;
    try {
      auto bytes = remote->get(remote_key(key));
      if (!bytes) return std::nullopt;
      auto record = deserialize_cache_record(*bytes);
      if (options.verify() && !same_inputs(record.inputs, inputs)) {
        bump(counters.collisions);
        return std::nullopt;
      }
      bump(counters.remote_hits);
      return record;
    } catch (const std::exception&) {  // down, slow or garbage: count it, compute instead
      bump(counters.remote_errors);
      return std::nullopt;
    }
  }

  void remote_put(const Hash128& key, const Inputs& inputs, const c10::IValue& output, double seconds) {
    const auto& remote = options.remote();
    if (!remote) return;
    try {
      remote->put(remote_key(key), serialize_cache_record(options.verify() ? inputs : Inputs{}, output, seconds),
                  options.ttl());
    } catch (const std::exception&) {
      bump(counters.remote_errors);
    }
  }

  // Memory, then remote (filling memory). Counts a hit, not a miss.
  std::optional<Found> lookup(const Hash128& key, const Inputs& inputs) {
    if (auto found = find(key, inputs)) return found;
    if (auto record = remote_get(key, inputs)) {
      c10::IValue stored;
      store(key, inputs, record->output, record->compute_seconds, &stored);
      return Found{{}, stored, record->compute_seconds};
    }
    return std::nullopt;
  }

  c10::IValue get_or_compute(const Inputs& inputs, const Compute& fn);
};

c10::IValue InferenceCache::Impl::get_or_compute(const Inputs& inputs, const Compute& fn) {
  const Hash128 key = key_of(inputs);
  if (auto found = find(key, inputs)) {
    record_hit(found->compute_seconds);
    size_t ignored = 0;
    return deep_copy(found->output, ignored, "InferenceCache");
  }
  Shard& s = shard_of(key);
  std::shared_ptr<Flight> flight;
  bool leader = false;
  {
    std::unique_lock<std::mutex> lock(s.mutex);
    auto it = s.flights.find(key);
    if (it == s.flights.end()) {
      flight = std::make_shared<Flight>();
      flight->inputs = inputs;
      s.flights.emplace(key, flight);
      leader = true;
    } else if (!options.verify() || same_inputs(it->second->inputs, inputs)) {
      flight = it->second;
    }  // else: a colliding computation of other inputs; compute on our own, unshared
  }
  if (flight && !leader) {
    bump(counters.coalesced);
    flight->wait();
    if (flight->error) std::rethrow_exception(flight->error);
    record_hit(flight->compute_seconds);
    size_t ignored = 0;
    return deep_copy(flight->output, ignored, "InferenceCache");
  }
  auto finish = [&](c10::IValue stored, double seconds, std::exception_ptr error) {
    if (!leader) return;
    {
      std::lock_guard<std::mutex> lock(s.mutex);
      s.flights.erase(key);
    }
    flight->finish(std::move(stored), seconds, std::move(error));
  };
  if (auto record = remote_get(key, inputs)) {
    c10::IValue stored;
    store(key, inputs, record->output, record->compute_seconds, &stored);
    record_hit(record->compute_seconds);
    finish(stored, record->compute_seconds, nullptr);
    return std::move(record->output);  // freshly parsed: nobody else holds it
  }
  bump(counters.misses);
  c10::IValue output, stored;
  double seconds = 0;
  try {
    const auto start = Clock::now();
    output = fn();
    seconds = std::chrono::duration<double>(Clock::now() - start).count();
    store(key, inputs, output, seconds, &stored);
  } catch (...) {
    finish({}, 0, std::current_exception());
    throw;
  }
  finish(stored, seconds, nullptr);
  remote_put(key, inputs, stored, seconds);
  return output;
}

InferenceCache::InferenceCache(CacheOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
InferenceCache::~InferenceCache() = default;

const CacheOptions& InferenceCache::options() const { return impl_->options; }

Hash128 InferenceCache::key_of(const Inputs& inputs) const { return impl_->key_of(inputs); }

std::optional<c10::IValue> InferenceCache::get(const Inputs& inputs) {
  const Hash128 key = impl_->key_of(inputs);
  auto found = impl_->lookup(key, inputs);
  if (!found) {
    bump(impl_->counters.misses);
    return std::nullopt;
  }
  impl_->record_hit(found->compute_seconds);
  size_t ignored = 0;
  return deep_copy(found->output, ignored, "InferenceCache::get");
}

void InferenceCache::put(const Inputs& inputs, const c10::IValue& output, double compute_seconds) {
  require(compute_seconds >= 0, "InferenceCache::put: compute_seconds must be >= 0");
  const Hash128 key = impl_->key_of(inputs);
  c10::IValue stored;
  impl_->store(key, inputs, output, compute_seconds, &stored);
  impl_->remote_put(key, inputs, stored, compute_seconds);
}

c10::IValue InferenceCache::get_or_compute(const Inputs& inputs, const Compute& fn) {
  require(static_cast<bool>(fn), "InferenceCache::get_or_compute: fn is empty; expected a callable");
  return impl_->get_or_compute(inputs, fn);
}

bool InferenceCache::erase(const Inputs& inputs) {
  const Hash128 key = impl_->key_of(inputs);
  Shard& s = impl_->shard_of(key);
  std::lock_guard<std::mutex> lock(s.mutex);
  auto it = s.index.find(key);
  if (it == s.index.end()) return false;
  if (impl_->options.verify() && !same_inputs(it->second->inputs, inputs)) return false;
  impl_->drop_locked(s, it->second);
  return true;
}

void InferenceCache::clear() {
  for (auto& s : impl_->shards) {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.index.clear();
    s.lru.clear();
    s.bytes = 0;
  }
}

CacheStats InferenceCache::stats() const {
  const auto& c = impl_->counters;
  CacheStats out;
  out.hits = c.hits.load();
  out.misses = c.misses.load();
  out.evictions = c.evictions.load();
  out.expirations = c.expirations.load();
  out.collisions = c.collisions.load();
  out.coalesced = c.coalesced.load();
  out.remote_hits = c.remote_hits.load();
  out.remote_errors = c.remote_errors.load();
  out.seconds_saved = double(c.nanoseconds_saved.load()) * 1e-9;
  for (auto& s : impl_->shards) {
    std::lock_guard<std::mutex> lock(s.mutex);
    out.bytes += s.bytes;
    out.entries += s.lru.size();
  }
  return out;
}

std::string CacheStats::to_prometheus(const prometheus::Labels& labels) const {
  using prometheus::append_metric;
  std::string out;
  auto counter = [&](const char* name, const char* help, double value) {
    append_metric(out, std::string("pare_cache_") + name, "counter", help, value, labels);
  };
  auto gauge = [&](const char* name, const char* help, double value) {
    append_metric(out, std::string("pare_cache_") + name, "gauge", help, value, labels);
  };
  counter("hits_total", "Lookups answered from the cache (memory or remote tier).", double(hits));
  counter("misses_total", "Lookups that found no usable entry.", double(misses));
  counter("evictions_total", "Entries dropped to respect capacity.", double(evictions));
  counter("expirations_total", "Entries dropped because their TTL passed.", double(expirations));
  counter("collisions_total", "Key matches whose stored inputs differed.", double(collisions));
  counter("coalesced_total", "Callers that waited for a computation already running.", double(coalesced));
  counter("remote_hits_total", "Hits served by the remote tier.", double(remote_hits));
  counter("remote_errors_total", "Remote tier failures (unreachable, timeout, corrupt value).", double(remote_errors));
  counter("saved_seconds_total", "Compute time of the entries hit.", seconds_saved);
  gauge("bytes", "Bytes held in memory.", double(bytes));
  gauge("entries", "Entries held in memory.", double(entries));
  gauge("hit_ratio", "hits / (hits + misses).", hit_ratio());
  return out;
}

}  // namespace pare
