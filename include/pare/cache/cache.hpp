#pragma once
// pare::InferenceCache — an exact, sharded LRU cache of model outputs keyed by
// the content of the inputs (XXH3-128 over dtype, shape and bytes), with
// single-flight computation and an optional shared second tier (pare::RedisTier).

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/ivalue.h>

#include "pare/core/arg.hpp"
#include "pare/core/error.hpp"
#include "pare/core/metrics.hpp"

namespace pare {

/// A 128-bit content hash.
struct Hash128 {
  uint64_t low = 0, high = 0;
  bool operator==(const Hash128& o) const { return low == o.low && high == o.high; }
  bool operator!=(const Hash128& o) const { return !(*this == o); }
  std::string hex() const;  ///< 32 lowercase hex digits, high word first
};

/// XXH3-128 of raw bytes (the primitive the cache keys are built from).
Hash128 content_hash(const void* data, size_t bytes);

/// True when `a` and `b` have the same structure, dtypes, shapes and bytes
/// (what a cache hit proves about the stored input and the query).
bool same_content(const c10::IValue& a, const c10::IValue& b);

/// An exception type that `InferenceCache::get_or_compute`'s `fn` may throw
/// and that should reach every waiting caller as its own type: waiters each
/// receive a copy made by `rethrow_copy`, never the leader's object itself.
class CopyableError {
 public:
  virtual ~CopyableError() = default;
  /// Throws a copy of this exception (`throw MyError(*this);`).
  [[noreturn]] virtual void rethrow_copy() const = 0;
};

/// A shared store behind the in-process LRU (e.g. pare::RedisTier). `get` and
/// `put` throw on failure (unreachable, timeout, protocol error); the cache
/// counts the failure and carries on without the tier. Implementations must be
/// safe to call from many threads.
class CacheTier {
 public:
  virtual ~CacheTier() = default;
  /// The value stored under `key`, or nullopt if there is none.
  virtual std::optional<std::string> get(const std::string& key) = 0;
  /// Stores `value` under `key`; `ttl` of zero means no expiry.
  virtual void put(const std::string& key, const std::string& value, std::chrono::milliseconds ttl) = 0;
};

class InferenceCacheOptions {
 public:
  /// Bytes the cache may hold: stored inputs, outputs and bookkeeping, across
  /// all shards. An entry larger than a quarter of it is not stored (`rejected`).
  PARE_ARG(int64_t, capacity_bytes) = int64_t(256) << 20;
  /// Most entries the cache may hold (0: no limit besides bytes).
  PARE_ARG(int64_t, max_entries) = 0;
  /// Entries older than this are expired on access (0: never).
  PARE_ARG(std::chrono::milliseconds, ttl){0};
  /// Independent LRU lists, each with its own lock; more shards, less contention.
  PARE_ARG(int64_t, shards) = 8;
  /// Mixed into every key of this cache (application, version). Per-model
  /// namespaces are the `key_namespace` argument of the lookups (pare::Runner
  /// passes its model's fingerprint there).
  PARE_ARG(std::string, key_namespace);
  /// On a hit, compare the stored inputs with the query byte for byte, so a
  /// hash collision can never return another input's result. On by default.
  PARE_ARG(bool, verify) = true;
  /// Second tier shared between processes (e.g. std::make_shared<pare::RedisTier>(...)).
  PARE_ARG(std::shared_ptr<CacheTier>, remote);
  /// Test hook: keep only the low `bits` (0..128) bits of each key, forcing collisions.
  PARE_ARG(int64_t, key_bits) = 128;
};
using CacheOptions [[deprecated("renamed InferenceCacheOptions")]] = InferenceCacheOptions;

/// A snapshot of the cache's counters.
struct CacheStats {
  int64_t hits = 0;             ///< answered from memory or the remote tier
  int64_t misses = 0;           ///< lookups that found nothing usable
  int64_t evictions = 0;        ///< entries dropped to respect capacity or max_entries
  int64_t rejected = 0;         ///< results not stored: larger than a quarter of capacity_bytes
  int64_t expirations = 0;      ///< entries dropped because their TTL passed
  int64_t collisions = 0;       ///< same key, different inputs (seen only with verify on)
  int64_t coalesced = 0;        ///< callers that waited for another caller's computation
  int64_t remote_hits = 0;      ///< hits served by the remote tier
  int64_t remote_errors = 0;    ///< remote failures: unreachable, timeout, corrupt value
  int64_t bytes = 0;            ///< bytes held now
  int64_t entries = 0;          ///< entries held now
  double seconds_saved = 0;     ///< sum over hits of the compute time of the entry hit

  double hit_ratio() const { return hits + misses ? double(hits) / double(hits + misses) : 0.0; }
  /// Prometheus text exposition (metric names pare_cache_*).
  std::string to_prometheus(const prometheus::Labels& labels = {}) const;
};

/// Thread-safe. Holds IValue results (tensors, tuples, lists, dicts of
/// tensors) for IValue inputs on the CPU or a CUDA device. A GPU input's key is
/// a device-side fingerprint from 1 MiB on (its bytes copied to the host below
/// that; see docs/cache.md); a hit compares stored inputs on the
/// device; values are stored and returned on the device they came from (the
/// remote tier stores and returns host copies). Results are copied on return (and
/// inputs and outputs copied on insert), so callers may write into what they
/// get without touching what the cache holds.
class InferenceCache {
 public:
  using Inputs = std::vector<c10::IValue>;
  using Compute = std::function<c10::IValue()>;

  explicit InferenceCache(InferenceCacheOptions options = {});
  ~InferenceCache();
  InferenceCache(const InferenceCache&) = delete;
  InferenceCache& operator=(const InferenceCache&) = delete;

  // Every lookup takes a `key_namespace`: entries stored under one namespace
  // are never returned under another (e.g. the fingerprints of two models
  // sharing one cache; see pare::model_fingerprint). It is part of the key,
  // stored with each entry and each remote record, and checked on every hit.

  /// The stored result for `inputs` (memory, then the remote tier), or nullopt.
  std::optional<c10::IValue> get(const Inputs& inputs, const std::string& key_namespace = {});
  /// Stores `output` for `inputs`; `compute_time` is what a later hit saves.
  void put(const Inputs& inputs, const c10::IValue& output, std::chrono::duration<double> compute_time = {},
           const std::string& key_namespace = {});
  [[deprecated("pass the compute time as a std::chrono duration")]] void put(const Inputs& inputs,
                                                                             const c10::IValue& output,
                                                                             double compute_seconds,
                                                                             const std::string& key_namespace = {}) {
    put(inputs, output, std::chrono::duration<double>(compute_seconds), key_namespace);
  }
  /// The stored result, or `fn()` stored and returned. Concurrent misses on the
  /// same inputs run `fn` once. If `fn` throws, nothing is cached and the
  /// exception passes through unchanged to the caller that ran `fn`; every
  /// waiting caller receives its own copy of it (pare::Error, c10::Error and the
  /// standard exceptions as their own type, a CopyableError through its
  /// `rethrow_copy`, anything else as pare::Error (Runtime) with its message).
  c10::IValue get_or_compute(const Inputs& inputs, const Compute& fn, const std::string& key_namespace = {});
  /// Removes the entry for `inputs` from memory; true if there was one.
  bool erase(const Inputs& inputs, const std::string& key_namespace = {});
  /// Removes every entry from memory (the remote tier keeps its own).
  void clear();

  CacheStats stats() const;
  std::string to_prometheus(const prometheus::Labels& labels = {}) const { return stats().to_prometheus(labels); }
  const InferenceCacheOptions& options() const;

  /// The key of `inputs` (namespaces, dtype, shape, bytes), after `key_bits` truncation.
  Hash128 key_of(const Inputs& inputs, const std::string& key_namespace = {}) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Serialized form of (namespace, inputs, output, compute_seconds), as stored
/// in a remote tier: a versioned header, a checksum, dtype and shape of every tensor.
std::string serialize_cache_record(const InferenceCache::Inputs& inputs, const c10::IValue& output,
                                   double compute_seconds, const std::string& key_namespace = {});
struct CacheRecord {
  std::string key_namespace;  ///< the namespace the record was stored under
  InferenceCache::Inputs inputs;
  c10::IValue output;
  double compute_seconds = 0;
};
/// Parses a record; pare::Error (Runtime) on anything malformed or corrupt.
CacheRecord deserialize_cache_record(const std::string& bytes);

}  // namespace pare
