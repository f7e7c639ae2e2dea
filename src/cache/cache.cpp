// pare::InferenceCache: single-flight lookups over the in-memory store
// (cache_store.cpp), the remote tier, statistics. IValue specifics live in
// cache_values.cpp.

#include "pare/cache/cache.hpp"

#include "cache/cache_store.hpp"
#include "cache/cache_values.hpp"

namespace pare {

using cache_detail::bump;
using cache_detail::Clock;
using cache_detail::deep_copy;
using cache_detail::Entry;
using cache_detail::Flight;
using cache_detail::Found;
using cache_detail::Probe;

struct InferenceCache::Impl {
  InferenceCacheOptions options;
  cache_detail::Counters counters;
  cache_detail::MemoryStore memory;

  explicit Impl(InferenceCacheOptions o) : options(validated(std::move(o))), memory(options, counters) {}

  static InferenceCacheOptions validated(InferenceCacheOptions options) {
    require(options.capacity_bytes() > 0, "InferenceCacheOptions: capacity_bytes must be > 0");
    require(options.shards() >= 1 && options.shards() <= 1024,
            "InferenceCacheOptions: shards must be in [1, 1024], got " + std::to_string(options.shards()));
    require(options.key_bits() >= 0 && options.key_bits() <= 128,
            "InferenceCacheOptions: key_bits must be in [0, 128], got " + std::to_string(options.key_bits()));
    require(options.ttl().count() >= 0, "InferenceCacheOptions: ttl must be >= 0 (0: no expiry)");
    return options;
  }

  // The cache's namespace and the caller's, length-prefixed so that no two pairs give one scope.
  std::string scope_of(const std::string& key_namespace) const {
    const auto& own = options.key_namespace();
    return std::to_string(own.size()) + ":" + own + key_namespace;
  }

  Hash128 key_of(const std::string& scope, const Inputs& inputs) const {
    auto key = cache_detail::hash_inputs(scope, inputs);
    const int64_t bits = options.key_bits();
    if (bits < 128) key.high &= bits <= 64 ? 0 : (~0ull >> (128 - bits));
    if (bits < 64) key.low &= bits == 0 ? 0 : (~0ull >> (64 - bits));
    return key;
  }

  std::string remote_key(const Hash128& key) const {
    return options.key_namespace().empty() ? key.hex() : options.key_namespace() + ":" + key.hex();
  }

  void store(const Hash128& key, const std::string& scope, const Inputs& inputs, const c10::IValue& output,
             double seconds, c10::IValue* stored = nullptr) {
    Entry entry{key, scope, {}, {}, 0, seconds};
    if (options.verify())
      for (const auto& input : inputs) entry.inputs.push_back(deep_copy(input, entry.bytes, "InferenceCache"));
    entry.output = deep_copy(output, entry.bytes, "InferenceCache");
    entry.bytes += cache_detail::kEntryOverhead;
    if (options.ttl().count() > 0) entry.expires = Clock::now() + options.ttl();
    if (stored) *stored = entry.output;
    memory.insert(std::move(entry));
  }

  void record_hit(double compute_seconds) {
    bump(counters.hits);
    bump(counters.nanoseconds_saved, static_cast<uint64_t>(std::max(0.0, compute_seconds) * 1e9));
  }

  c10::IValue hit(const c10::IValue& output, double compute_seconds) {
    record_hit(compute_seconds);
    size_t ignored = 0;
    return deep_copy(output, ignored, "InferenceCache");
  }

  // The remote tier's record for `key`, if it holds one for this scope and these very inputs.
  std::optional<CacheRecord> remote_get(const Hash128& key, const std::string& scope, const Inputs& inputs) {
    const auto& remote = options.remote();
    if (!remote) return std::nullopt;
    try {
      auto bytes = remote->get(remote_key(key));
      if (!bytes) return std::nullopt;
      auto record = deserialize_cache_record(*bytes);
      if (record.key_namespace != scope) {
        bump(counters.collisions);
        return std::nullopt;
      }
      if (!memory.verified(record.inputs, inputs)) return std::nullopt;
      bump(counters.remote_hits);
      return record;
    } catch (const std::exception&) {  // down, slow or garbage: count it, compute instead
      bump(counters.remote_errors);
      return std::nullopt;
    }
  }

  void remote_put(const Hash128& key, const std::string& scope, const Inputs& inputs, const c10::IValue& output,
                  double seconds) {
    const auto& remote = options.remote();
    if (!remote) return;
    try {
      remote->put(remote_key(key),
                  serialize_cache_record(options.verify() ? inputs : Inputs{}, output, seconds, scope), options.ttl());
    } catch (const std::exception&) {
      bump(counters.remote_errors);
    }
  }

  // Memory, then remote (filling memory). Counts a hit, not a miss.
  std::optional<Found> lookup(const Hash128& key, const std::string& scope, const Inputs& inputs) {
    if (auto found = memory.find(key, scope, inputs)) return found;
    if (auto record = remote_get(key, scope, inputs)) {
      c10::IValue stored;
      store(key, scope, inputs, record->output, record->compute_seconds, &stored);
      return Found{{}, stored, record->compute_seconds};
    }
    return std::nullopt;
  }

  c10::IValue get_or_compute(const Inputs& inputs, const Compute& fn, const std::string& key_namespace);
  c10::IValue compute(const Hash128& key, const std::string& scope, const Inputs& inputs, const Compute& fn,
                      const std::shared_ptr<Flight>& flight);
};

c10::IValue InferenceCache::Impl::get_or_compute(const Inputs& inputs, const Compute& fn,
                                                 const std::string& key_namespace) {
  const std::string scope = scope_of(key_namespace);
  const Hash128 key = key_of(scope, inputs);
  Probe probe = memory.probe(key, scope, inputs);
  switch (probe.role) {
    case Probe::Role::Hit: return hit(probe.found.output, probe.found.compute_seconds);
    case Probe::Role::Waiter:
      bump(counters.coalesced);
      probe.flight->wait();
      if (probe.flight->error) cache_detail::throw_copy_of(probe.flight->error);
      return hit(probe.flight->output, probe.flight->compute_seconds);
    case Probe::Role::Leader: return compute(key, scope, inputs, fn, probe.flight);
    case Probe::Role::Alone: break;
  }
  return compute(key, scope, inputs, fn, nullptr);
}

// The remote tier, else `fn`; stores the result, then lands the flight it leads (if any).
c10::IValue InferenceCache::Impl::compute(const Hash128& key, const std::string& scope, const Inputs& inputs,
                                          const Compute& fn, const std::shared_ptr<Flight>& flight) {
  c10::IValue output, stored;
  double seconds = 0;
  bool computed = false;
  try {
    if (auto record = remote_get(key, scope, inputs)) {
      output = std::move(record->output);  // freshly parsed: nobody else holds it
      seconds = record->compute_seconds;
    } else {
      bump(counters.misses);
      const auto start = Clock::now();
      output = fn();
      seconds = std::chrono::duration<double>(Clock::now() - start).count();
      computed = true;
    }
    store(key, scope, inputs, output, seconds, &stored);
  } catch (...) {
    memory.land(key, flight, {}, 0, std::current_exception());
    throw;  // the leader's own exception, unchanged
  }
  memory.land(key, flight, stored, seconds, nullptr);
  if (computed) remote_put(key, scope, inputs, stored, seconds);
  else record_hit(seconds);
  return output;
}

InferenceCache::InferenceCache(InferenceCacheOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
InferenceCache::~InferenceCache() = default;

const InferenceCacheOptions& InferenceCache::options() const { return impl_->options; }

Hash128 InferenceCache::key_of(const Inputs& inputs, const std::string& key_namespace) const {
  return impl_->key_of(impl_->scope_of(key_namespace), inputs);
}

std::optional<c10::IValue> InferenceCache::get(const Inputs& inputs, const std::string& key_namespace) {
  const std::string scope = impl_->scope_of(key_namespace);
  auto found = impl_->lookup(impl_->key_of(scope, inputs), scope, inputs);
  if (!found) {
    bump(impl_->counters.misses);
    return std::nullopt;
  }
  return impl_->hit(found->output, found->compute_seconds);
}

void InferenceCache::put(const Inputs& inputs, const c10::IValue& output, std::chrono::duration<double> compute_time,
                         const std::string& key_namespace) {
  const double compute_seconds = compute_time.count();
  require(compute_seconds >= 0, "InferenceCache::put: compute_time must be >= 0");
  const std::string scope = impl_->scope_of(key_namespace);
  const Hash128 key = impl_->key_of(scope, inputs);
  c10::IValue stored;
  impl_->store(key, scope, inputs, output, compute_seconds, &stored);
  impl_->remote_put(key, scope, inputs, stored, compute_seconds);
}

c10::IValue InferenceCache::get_or_compute(const Inputs& inputs, const Compute& fn, const std::string& key_namespace) {
  require(static_cast<bool>(fn), "InferenceCache::get_or_compute: fn is empty; expected a callable");
  return impl_->get_or_compute(inputs, fn, key_namespace);
}

bool InferenceCache::erase(const Inputs& inputs, const std::string& key_namespace) {
  const std::string scope = impl_->scope_of(key_namespace);
  return impl_->memory.erase(impl_->key_of(scope, inputs), scope, inputs);
}

void InferenceCache::clear() { impl_->memory.clear(); }

CacheStats InferenceCache::stats() const {
  const auto& c = impl_->counters;
  CacheStats out;
  out.hits = c.hits.load();
  out.misses = c.misses.load();
  out.evictions = c.evictions.load();
  out.rejected = c.rejected.load();
  out.expirations = c.expirations.load();
  out.collisions = c.collisions.load();
  out.coalesced = c.coalesced.load();
  out.remote_hits = c.remote_hits.load();
  out.remote_errors = c.remote_errors.load();
  out.seconds_saved = double(c.nanoseconds_saved.load()) * 1e-9;
  impl_->memory.fill(out);
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
  counter("rejected_total", "Results not stored: larger than a quarter of the capacity.", double(rejected));
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
