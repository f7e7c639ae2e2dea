// The in-memory store of pare::InferenceCache: sharded LRU lists under one
// byte budget, and single-flight registration.

#include "cache/cache_store.hpp"

#include <cstdlib>
#include <new>
#include <stdexcept>

#include <c10/util/Exception.h>

#include "cache/cache_values.hpp"

namespace pare::cache_detail {
namespace {

template <class T>
[[noreturn]] void throw_copy(const T& e) {
  throw T(e);
}

}  // namespace

void throw_copy_of(const std::exception_ptr& error) {
  // Most derived classes first: each handler copies the class it names.
  try {
    std::rethrow_exception(error);
  } catch (const CopyableError& e) {
    e.rethrow_copy();
  } catch (const Error& e) {
    throw_copy(e);
  } catch (const c10::IndexError& e) {
    throw_copy(e);
  } catch (const c10::ValueError& e) {
    throw_copy(e);
  } catch (const c10::TypeError& e) {
    throw_copy(e);
  } catch (const c10::NotImplementedError& e) {
    throw_copy(e);
  } catch (const c10::LinAlgError& e) {
    throw_copy(e);
  } catch (const c10::OutOfMemoryError& e) {
    throw_copy(e);
  } catch (const c10::Error& e) {
    throw_copy(e);
  } catch (const std::bad_alloc&) {
    throw std::bad_alloc();
  } catch (const std::invalid_argument& e) {
    throw_copy(e);
  } catch (const std::out_of_range& e) {
    throw_copy(e);
  } catch (const std::logic_error& e) {
    throw_copy(e);
  } catch (const std::range_error& e) {
    throw_copy(e);
  } catch (const std::overflow_error& e) {
    throw_copy(e);
  } catch (const std::runtime_error& e) {
    throw_copy(e);
  } catch (const std::exception& e) {
    throw Error(std::string("InferenceCache: the computation this call waited for failed: ") + e.what(),
                Error::Kind::Runtime);
  } catch (...) {
    throw Error("InferenceCache: the computation this call waited for failed with a non-standard exception",
                Error::Kind::Runtime);
  }
  std::abort();  // unreachable: every handler throws (CopyableError::rethrow_copy is [[noreturn]])
}

void Flight::finish(c10::IValue value, double seconds, std::exception_ptr failure) {
  std::lock_guard<std::mutex> lock(mutex);
  output = std::move(value);
  compute_seconds = seconds;
  error = std::move(failure);
  done = true;
  done_cv.notify_all();
}

void Flight::wait() {
  std::unique_lock<std::mutex> lock(mutex);
  done_cv.wait(lock, [&] { return done; });
}

MemoryStore::MemoryStore(const InferenceCacheOptions& options, Counters& counters)
    : capacity_bytes_(size_t(options.capacity_bytes())),
      max_entry_bytes_(size_t(options.capacity_bytes()) / 4),
      verify_(options.verify()),
      counters_(counters) {
  size_t count = size_t(options.shards());
  const auto max_entries = size_t(options.max_entries());
  if (max_entries > 0) count = std::min(count, max_entries);  // >= 1 entry per shard
  shards_ = std::vector<Shard>(count);
  shard_max_entries_ = max_entries / count;
}

void MemoryStore::drop_locked(Shard& s, std::list<Entry>::iterator it) {
  s.bytes -= it->bytes;
  total_bytes_ -= it->bytes;
  s.index.erase(it->key);
  s.lru.erase(it);
}

// The live entry under `key` if it was stored under `scope`; drops it if expired.
std::optional<Found> MemoryStore::find_locked(Shard& s, const Hash128& key, const std::string& scope) {
  auto it = s.index.find(key);
  if (it == s.index.end()) return std::nullopt;
  if (Clock::now() >= it->second->expires) {
    drop_locked(s, it->second);
    bump(counters_.expirations);
    return std::nullopt;
  }
  const Entry& e = *it->second;
  if (e.scope != scope) {
    bump(counters_.collisions);
    return std::nullopt;
  }
  s.lru.splice(s.lru.begin(), s.lru, it->second);
  return Found{e.inputs, e.output, e.compute_seconds};
}

// Compares outside the shard lock: stored values are immutable.
bool MemoryStore::verified(const Inputs& stored, const Inputs& inputs) {
  if (!verify_ || same_inputs(stored, inputs)) return true;
  bump(counters_.collisions);
  return false;
}

std::optional<Found> MemoryStore::find(const Hash128& key, const std::string& scope, const Inputs& inputs) {
  Shard& s = shard_of(key);
  std::optional<Found> found;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    found = find_locked(s, key, scope);
  }
  if (found && !verified(found->inputs, inputs)) return std::nullopt;
  return found;
}

Probe MemoryStore::probe(const Hash128& key, const std::string& scope, const Inputs& inputs) {
  Shard& s = shard_of(key);
  Probe probe;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    if (auto found = find_locked(s, key, scope)) {
      probe.role = Probe::Role::Hit;
      probe.found = std::move(*found);
    } else if (auto it = s.flights.find(key); it != s.flights.end()) {
      probe.role = Probe::Role::Waiter;
      probe.flight = it->second;
    } else {
      probe.role = Probe::Role::Leader;
      probe.flight = std::make_shared<Flight>();
      probe.flight->scope = scope;
      probe.flight->inputs = inputs;
      s.flights.emplace(key, probe.flight);
    }
  }
  // A colliding entry or flight (same key, other inputs): compute alone, unshared.
  if (probe.role == Probe::Role::Hit && !verified(probe.found.inputs, inputs)) probe.role = Probe::Role::Alone;
  if (probe.role == Probe::Role::Waiter && (probe.flight->scope != scope || !verified(probe.flight->inputs, inputs))) {
    probe.role = Probe::Role::Alone;
    probe.flight.reset();
  }
  return probe;
}

void MemoryStore::land(const Hash128& key, const std::shared_ptr<Flight>& flight, c10::IValue stored,
                       double seconds, std::exception_ptr error) {
  if (!flight) return;
  Shard& s = shard_of(key);
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.flights.erase(key);
  }
  flight->finish(std::move(stored), seconds, std::move(error));
}

void MemoryStore::insert(Entry entry) {
  const Hash128 key = entry.key;
  const size_t bytes = entry.bytes;
  Shard& s = shard_of(key);
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    auto existing = s.index.find(key);
    if (existing != s.index.end()) drop_locked(s, existing->second);
    if (bytes > max_entry_bytes_) {
      bump(counters_.rejected);
      return;
    }
    while (shard_max_entries_ && s.lru.size() >= shard_max_entries_) {
      drop_locked(s, std::prev(s.lru.end()));
      bump(counters_.evictions);
    }
    s.bytes += bytes;
    total_bytes_ += bytes;
    s.lru.push_front(std::move(entry));
    s.index.emplace(key, s.lru.begin());
  }
  reclaim(s, bytes);
}

// Shards share one byte budget: a shard may grow past an even share (so an
// entry up to a quarter of the capacity fits) while the others shrink. Evicts
// the least recently used entry of the fullest shard until the total fits.
void MemoryStore::reclaim(Shard& inserted_into, size_t inserted_bytes) {
  while (total_bytes_.load() > capacity_bytes_) {
    Shard* victim = nullptr;
    size_t most = 0;
    for (auto& s : shards_) {
      size_t evictable = s.bytes.load(std::memory_order_relaxed);
      if (&s == &inserted_into) evictable -= std::min(evictable, inserted_bytes);  // spare the new entry
      if (evictable > most) most = evictable, victim = &s;
    }
    if (!victim) return;  // only entries being inserted right now remain
    std::lock_guard<std::mutex> lock(victim->mutex);
    if (victim->lru.empty()) continue;
    drop_locked(*victim, std::prev(victim->lru.end()));
    bump(counters_.evictions);
  }
}

bool MemoryStore::erase(const Hash128& key, const std::string& scope, const Inputs& inputs) {
  Shard& s = shard_of(key);
  std::lock_guard<std::mutex> lock(s.mutex);
  auto it = s.index.find(key);
  if (it == s.index.end() || it->second->scope != scope) return false;
  if (verify_ && !same_inputs(it->second->inputs, inputs)) return false;
  drop_locked(s, it->second);
  return true;
}

void MemoryStore::clear() {
  for (auto& s : shards_) {
    std::lock_guard<std::mutex> lock(s.mutex);
    while (!s.lru.empty()) drop_locked(s, s.lru.begin());
  }
}

void MemoryStore::fill(CacheStats& stats) {
  for (auto& s : shards_) {
    std::lock_guard<std::mutex> lock(s.mutex);
    stats.bytes += s.bytes.load();
    stats.entries += s.lru.size();
  }
}

}  // namespace pare::cache_detail
