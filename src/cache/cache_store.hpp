#pragma once
// Internal: the in-memory half of pare::InferenceCache — LRU lists in shards
// under one shared byte budget, and the flights of computations in progress.
// cache.cpp builds single-flight lookups and the remote tier on top of it.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "pare/cache/cache.hpp"

namespace pare::cache_detail {

using Clock = std::chrono::steady_clock;
using Inputs = InferenceCache::Inputs;

// Per-entry bookkeeping (list node, map node, IValue headers), counted against capacity.
constexpr size_t kEntryOverhead = 256;

/// Throws a copy of the exception in `error`, never the object itself: one
/// exception object must not be thrown in several threads at once (handlers
/// may modify it, as c10::Error::add_context does). pare::Error, c10::Error
/// and the standard exceptions are copied as those classes, a CopyableError
/// by its rethrow_copy(); anything else becomes pare::Error (Runtime).
[[noreturn]] void throw_copy_of(const std::exception_ptr& error);

struct Counters {
  std::atomic<uint64_t> hits{0}, misses{0}, evictions{0}, rejected{0}, expirations{0}, collisions{0},
      coalesced{0}, remote_hits{0}, remote_errors{0}, nanoseconds_saved{0};
};

inline void bump(std::atomic<uint64_t>& counter, uint64_t by = 1) {
  counter.fetch_add(by, std::memory_order_relaxed);
}

struct KeyHasher {
  size_t operator()(const Hash128& k) const { return static_cast<size_t>(k.low ^ (k.high * 0x9E3779B97F4A7C15ull)); }
};

struct Entry {
  Hash128 key;
  std::string scope;   // the qualified namespace, checked on every hit
  Inputs inputs;       // the cache's own copy; empty when verify is off
  c10::IValue output;  // the cache's own copy, never handed out
  size_t bytes = 0;
  double compute_seconds = 0;
  Clock::time_point expires = Clock::time_point::max();
};

// One computation in progress; callers with the same inputs wait for it.
struct Flight {
  std::string scope;
  Inputs inputs;  // the leader's; it stays in get_or_compute until the flight lands
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  c10::IValue output;        // the stored copy; waiters take deep copies
  double compute_seconds = 0;
  std::exception_ptr error;  // never rethrown itself: each waiter throws a copy

  void finish(c10::IValue value, double seconds, std::exception_ptr failure);
  void wait();
};

// What a locked lookup hands out: references to immutable stored values.
struct Found {
  Inputs inputs;
  c10::IValue output;
  double compute_seconds = 0;
};

// What get_or_compute does after one locked look at its shard.
struct Probe {
  enum class Role { Hit, Leader, Waiter, Alone } role = Role::Alone;
  Found found;                     // Hit
  std::shared_ptr<Flight> flight;  // Leader, Waiter
};

struct Shard {
  std::mutex mutex;
  std::list<Entry> lru;  // front: most recently used
  std::unordered_map<Hash128, std::list<Entry>::iterator, KeyHasher> index;
  std::unordered_map<Hash128, std::shared_ptr<Flight>, KeyHasher> flights;
  std::atomic<size_t> bytes{0};  // written under `mutex`; read without it to pick eviction victims
};

class MemoryStore {
 public:
  MemoryStore(const InferenceCacheOptions& options, Counters& counters);

  /// The live entry for (key, scope, inputs), or nullopt (a collision is counted and is a miss).
  std::optional<Found> find(const Hash128& key, const std::string& scope, const Inputs& inputs);
  /// The lookup and the flight registration in one critical section, so that
  /// between a miss and the flight no other caller can slip in and compute too.
  Probe probe(const Hash128& key, const std::string& scope, const Inputs& inputs);
  /// Ends a leader's flight. Call after storing the result: a caller then
  /// finds either the entry or the flight, never neither.
  void land(const Hash128& key, const std::shared_ptr<Flight>& flight, c10::IValue stored, double seconds,
            std::exception_ptr error);
  /// Stores `entry` (copies made by the caller), then evicts to fit the capacity;
  /// an entry over a quarter of the capacity is counted as rejected instead.
  void insert(Entry entry);
  bool erase(const Hash128& key, const std::string& scope, const Inputs& inputs);
  void clear();
  /// Adds the bytes and entries held to `stats`.
  void fill(CacheStats& stats);
  /// True when `stored` matches `inputs` (always, with verify off); counts a collision if not.
  bool verified(const Inputs& stored, const Inputs& inputs);

 private:
  Shard& shard_of(const Hash128& key) { return shards_[(key.low ^ key.high) % shards_.size()]; }
  void drop_locked(Shard& s, std::list<Entry>::iterator it);
  std::optional<Found> find_locked(Shard& s, const Hash128& key, const std::string& scope);
  void reclaim(Shard& inserted_into, size_t inserted_bytes);

  std::vector<Shard> shards_;
  size_t capacity_bytes_, max_entry_bytes_, shard_max_entries_;
  bool verify_;
  std::atomic<size_t> total_bytes_{0};
  Counters& counters_;
};

}  // namespace pare::cache_detail
