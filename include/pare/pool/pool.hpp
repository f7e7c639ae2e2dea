#pragma once
// pare::TensorPool — reuse of already-touched CPU tensor storage.
//
// A serving loop allocates the same input, output and activation buffers over
// and over; each fresh large allocation costs a system call and a page fault per
// 4 KiB page on first touch. The pool keeps released storage idle (bounded by
// bytes, least recently used freed first) and hands it back to the next request
// of the same size class.
//
//   pare::TensorPool pool(pare::TensorPoolOptions().max_bytes(256 << 20));
//   {
//     auto lease = pool.acquire({64, 1024}, torch::kFloat);
//     lease.tensor().fill_(1);
//   }  // storage is idle in the pool again (unless a copy of the tensor lives on)
//   {
//     pare::PoolAllocatorGuard guard(pool);  // LibTorch's CPU allocations on this thread
//     model.forward({input});                // reuse the pool's storage
//   }
//
// Contract: storage returns to the pool when the last tensor using it dies, never
// earlier. A lease ending while a copy or view of its tensor lives on is counted
// (stats().outlived) and its storage comes back when that copy dies, so a tensor
// can never alias storage handed to someone else. Raw pointers (data_ptr()) kept
// past the end of a lease are not tracked: the poison option makes their misuse
// visible.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pare/core/arg.hpp"
#include "pare/core/error.hpp"
#include "pare/core/metrics.hpp"

namespace pare {

/// The memory a pool holds. One pool holds one kind; stats, poison and trim are per pool.
enum class PoolMemory {
  Host,    ///< pageable CPU memory (the default)
  Pinned,  ///< page-locked CPU memory: fast, asynchronous host <-> GPU copies (needs CUDA)
  Cuda,    ///< GPU memory on CUDA device device_index()
};
/// "host", "pinned" or "cuda": the names Python and the reports use.
std::string to_string(PoolMemory memory);
/// The inverse of to_string; pare::Error naming the known kinds otherwise.
PoolMemory parse_pool_memory(const std::string& name);
/// Every memory name, in PoolMemory order.
std::vector<std::string> pool_memory_names();

class TensorPoolOptions {
 public:
  /// Idle bytes kept for reuse; above it idle storage is freed least recently used first.
  PARE_ARG(int64_t, max_bytes) = int64_t{256} << 20;
  /// Byte sizes of the storage classes, ascending. A request takes the smallest
  /// class that holds it; above the largest one, it is rounded up to 4 KiB pages.
  /// Empty (the default): four classes per power of two from 256 B (at most 25% slack).
  PARE_ARG(std::vector<int64_t>, size_classes);
  /// Fill storage with 0xFF bytes (NaN for floating types) when it returns to
  /// the pool, so reads through stale raw pointers show up in tests.
  PARE_ARG(bool, poison) = false;
  /// Leases smaller than this many bytes get plain storage from LibTorch's
  /// allocator: the system allocator recycles small blocks without page faults,
  /// faster than the pool's bookkeeping. 0 (the default, measured at least as
  /// fast as torch::empty, docs/pool.md): pool every size. (Allocator mode
  /// under a PoolAllocatorGuard pools every size regardless.)
  PARE_ARG(int64_t, small_bytes) = 0;
  /// Which memory the pool holds. Pinned and Cuda pools need a CUDA device
  /// (pare::Error at construction otherwise) and serve leases only: a
  /// PoolAllocatorGuard routes CPU allocations and needs a Host pool. A Cuda
  /// block returns to the pool when its last tensor dies; work still queued on
  /// a stream that uses it must be finished first (the pool does not track streams).
  PARE_ARG(PoolMemory, memory) = PoolMemory::Host;
  /// The CUDA device a Cuda pool allocates on.
  PARE_ARG(int64_t, device_index) = 0;
};
using PoolOptions [[deprecated("renamed TensorPoolOptions")]] = TensorPoolOptions;

struct PoolStats {
  int64_t acquires = 0;   ///< storage requests (leases and guarded allocations)
  int64_t hits = 0;       ///< served from idle storage
  int64_t misses = 0;     ///< served by a new allocation
  int64_t releases = 0;   ///< storage returned to the pool
  int64_t evictions = 0;  ///< idle storage freed by the byte bound or trim()
  int64_t outlived = 0;   ///< leases that ended while a copy of their tensor lived on
  int64_t blocks_idle = 0;
  int64_t bytes_idle = 0;
  int64_t bytes_in_use = 0;  ///< capacity of storage handed out and not yet returned
  int64_t peak_bytes_in_use = 0;
  int64_t small = 0;  ///< leases below small_bytes, given plain storage (not in acquires)
  /// The stats in Prometheus text format, as pare_pool_* families.
  std::string to_prometheus(const prometheus::Labels& labels = {}) const;
};

namespace detail {
struct PoolState;
}

/// A lease on pooled storage: holds one tensor. Movable, not copyable; the
/// storage goes back to the pool when the lease and every copy of the tensor end.
class PooledTensor {
 public:
  PooledTensor() = default;
  PooledTensor(PooledTensor&&) noexcept = default;
  PooledTensor& operator=(PooledTensor&& other) noexcept;
  PooledTensor(const PooledTensor&) = delete;
  PooledTensor& operator=(const PooledTensor&) = delete;
  ~PooledTensor() { release(); }

  /// The leased tensor; pare::Error if the lease has ended.
  const at::Tensor& tensor() const;
  bool valid() const { return tensor_.defined(); }
  explicit operator bool() const { return valid(); }

  /// Ends the lease now. Returns true if the storage went back to the pool,
  /// false if a copy of the tensor still uses it (it returns when that copy dies)
  /// or the lease had already ended.
  bool release() noexcept;

 private:
  friend class TensorPool;
  PooledTensor(at::Tensor tensor, std::shared_ptr<detail::PoolState> state);

  at::Tensor tensor_;
  std::shared_ptr<detail::PoolState> state_;
};

/// Thread-safe pool of CPU storage. Not copyable: share one pool as a
/// std::shared_ptr (as RunnerOptions::pool takes it), like InferenceCache.
class TensorPool {
 public:
  /// Also installs pare's routing CPU allocator (install_pool_allocator), once
  /// per process, on the constructing thread: build pools before starting
  /// threads that allocate, as c10's allocator table is not thread-safe.
  explicit TensorPool(TensorPoolOptions options = {});
  TensorPool(const TensorPool&) = delete;
  TensorPool& operator=(const TensorPool&) = delete;

  /// A contiguous tensor of `shape` and `dtype` on reused storage when an idle
  /// block of the same size class exists. Contents are uninitialized. `device`
  /// is the pool's: cpu for Host and Pinned pools, cuda:device_index() for Cuda.
  PooledTensor acquire(at::IntArrayRef shape, at::ScalarType dtype = at::kFloat,
                       at::Device device = at::kCPU);

  /// Frees all idle storage; returns the bytes freed.
  size_t trim();

  PoolStats stats() const;
  /// stats().to_prometheus(labels).
  std::string to_prometheus(const prometheus::Labels& labels = {}) const { return stats().to_prometheus(labels); }
  const TensorPoolOptions& options() const;

  /// The size class (capacity in bytes) a request of `bytes` is served from.
  size_t size_class(size_t bytes) const;

 private:
  friend class PoolAllocatorGuard;
  std::shared_ptr<detail::PoolState> state_;
};

/// Routes LibTorch's CPU allocations made on the current thread within its
/// scope through `pool` (like c10's WithCPUCachingAllocatorGuard, which desktop
/// builds do not honor). Guards nest; the innermost wins. Tensors allocated
/// under the guard may outlive it and the pool: their storage keeps the pool's
/// state alive and returns to it when they die.
///
/// Thread-local by design: allocations made by other threads (including
/// intra-op worker threads) go to LibTorch's default allocator, so unrelated
/// work elsewhere in the process never lands in the pool.
class PoolAllocatorGuard {
 public:
  explicit PoolAllocatorGuard(TensorPool& pool);
  ~PoolAllocatorGuard();
  PoolAllocatorGuard(const PoolAllocatorGuard&) = delete;
  PoolAllocatorGuard& operator=(const PoolAllocatorGuard&) = delete;

 private:
  std::shared_ptr<detail::PoolState> state_;
  detail::PoolState* previous_;
};

/// Installs pare's routing CPU allocator (done by the first TensorPool).
/// It forwards to the allocator it replaces unless a guard is active on the
/// calling thread. Call it once at start-up, before other threads allocate, to
/// keep the switch out of concurrent work. Idempotent; pare::Error if LibTorch
/// refuses the replacement.
void install_pool_allocator();

/// CPU allocations forwarded to LibTorch's own allocator (not pooled) since
/// install_pool_allocator(), on all threads: lets callers count what a scope allocates.
uint64_t unpooled_cpu_allocations();

/// CPU allocator calls served under a guard, on all threads, zero-byte requests
/// included (they need no storage and do not show in a pool's stats).
uint64_t pooled_cpu_allocations();

}  // namespace pare
