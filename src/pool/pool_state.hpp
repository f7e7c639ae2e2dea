#pragma once
// The state behind a TensorPool (internal to pare): storage blocks, the global
// registry that maps pooled data pointers back to them, and the pool's
// size-classed idle lists with their LRU byte bound. src/pool.cpp routes
// LibTorch's CPU allocations here and implements the public API on top.
//
// Included by src/pool.cpp alone: its unnamed namespaces are that file's.

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <torch/cuda.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/compat.hpp"
#include "pare/core/error.hpp"
#include "pare/pool/pool.hpp"

namespace pare {
namespace detail {
namespace {

constexpr size_t kAlignment = 64;  // as c10's default CPU allocator
constexpr size_t kPage = 4096;

size_t round_up(size_t value, size_t step) { return (value + step - 1) / step * step; }

/// Four classes per power of two from 256 B: at most 25% slack.
size_t default_size_class(size_t bytes) {
  if (bytes <= 256) return 256;
  size_t base = 1;
  while (base * 2 < bytes) base *= 2;  // base < bytes <= 2 * base
  return round_up(bytes, base / 4);
}

}  // namespace

struct PoolState;

/// One piece of storage. Owned by its pool while idle; while in use, it holds
/// its pool's state alive so the deleter stays valid after the pool is gone.
struct StorageBlock {
  void* data = nullptr;
  size_t capacity = 0;
  StorageBlock* newer = nullptr;  // idle LRU list links
  StorageBlock* older = nullptr;
  std::shared_ptr<PoolState> owner;
  at::Tensor backing;  // pinned and CUDA memory: the byte tensor that owns it (host blocks: malloc'd)
};

namespace {

/// Pooled data pointer -> block, for every pool. Sharded to keep concurrent
/// releases of different blocks off one lock. Leaked: storage may die at exit.
class BlockRegistry {
 public:
  static BlockRegistry& get() {
    static auto* registry = new BlockRegistry;
    return *registry;
  }
  void add(StorageBlock* block) {
    auto& shard = shard_of(block->data);
    std::lock_guard<std::mutex> lock(shard.mutex);
    shard.blocks.emplace(block->data, block);
  }
  void remove(void* data) {
    auto& shard = shard_of(data);
    std::lock_guard<std::mutex> lock(shard.mutex);
    shard.blocks.erase(data);
  }
  StorageBlock* find(void* data) {
    auto& shard = shard_of(data);
    std::lock_guard<std::mutex> lock(shard.mutex);
    auto it = shard.blocks.find(data);
    return it == shard.blocks.end() ? nullptr : it->second;
  }

 private:
  struct Shard {
    std::mutex mutex;
    std::unordered_map<void*, StorageBlock*> blocks;
  };
  Shard& shard_of(void* data) {
    const auto bits = reinterpret_cast<uintptr_t>(data) >> 6;
    return shards_[(bits * 0x9E3779B97F4A7C15ull) >> 60];
  }
  std::array<Shard, 16> shards_;
};

void release_cpu(void* data);

}  // namespace

struct PoolState : std::enable_shared_from_this<PoolState> {
  /// Hands this pool's storage to at::detail::empty_generic for leases.
  struct LeaseAllocator final : c10::Allocator {
    PoolState* state = nullptr;
    c10::DataPtr allocate(size_t bytes) PARE_ALLOCATE_CONST override { return state->allocate(bytes); }
    c10::DeleterFnPtr raw_deleter() const override { return &release_cpu; }
    PARE_ALLOCATOR_COPY_DATA
  };

  explicit PoolState(TensorPoolOptions opts)
      : options(std::move(opts)),
        device(options.memory() == PoolMemory::Cuda
                   ? c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(options.device_index()))
                   : c10::Device(c10::kCPU)) {
    lease_allocator.state = this;
  }
  ~PoolState() { free_blocks(take_all_idle()); }

  size_t size_class(size_t bytes) const {
    const auto& classes = options.size_classes();
    if (classes.empty()) return default_size_class(bytes);
    auto it = std::lower_bound(classes.begin(), classes.end(), int64_t(bytes));
    return it != classes.end() ? size_t(*it) : round_up(bytes, kPage);
  }

  c10::DataPtr allocate(size_t bytes) {
    if (bytes == 0) return c10::DataPtr(nullptr, device);
    const size_t capacity = size_class(bytes);
    StorageBlock* block = take_idle(capacity);
    if (!block) block = new_block(capacity);
    block->owner = shared_from_this();
    return c10::DataPtr(block->data, block->data, &release_cpu, device);
  }

  void give_back(StorageBlock* block) noexcept {
    if (options.poison()) poison(*block);
    std::vector<StorageBlock*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex);
      ++stats.releases;
      stats.bytes_in_use -= block->capacity;
      try {
        idle[block->capacity].push_back(block);
      } catch (...) {  // out of memory for bookkeeping: free instead of keeping
        evicted.push_back(block);
        block = nullptr;
      }
      if (block) link_newest(block);
      while (stats.bytes_idle > options.max_bytes()) evicted.push_back(evict_oldest());
    }
    free_blocks(evicted);
  }

  size_t trim() {
    auto blocks = take_all_idle();
    size_t bytes = 0;
    for (auto* block : blocks) bytes += block->capacity;
    free_blocks(blocks);
    return bytes;
  }

  void note_outlived() {
    std::lock_guard<std::mutex> lock(mutex);
    ++stats.outlived;
  }

  PoolStats snapshot() const {
    std::lock_guard<std::mutex> lock(mutex);
    PoolStats copy = stats;
    copy.small = small_leases.load(std::memory_order_relaxed);
    return copy;
  }

  const TensorPoolOptions options;
  std::atomic<uint64_t> small_leases{0};  // counted off the mutex: the small path must stay cheap
  const c10::Device device;  // of the storage handed out
  LeaseAllocator lease_allocator;

 private:
  StorageBlock* take_idle(size_t capacity) {
    std::lock_guard<std::mutex> lock(mutex);
    ++stats.acquires;
    stats.bytes_in_use += capacity;
    stats.peak_bytes_in_use = std::max(stats.peak_bytes_in_use, stats.bytes_in_use);
    auto it = idle.find(capacity);
    if (it == idle.end() || it->second.empty()) {
      ++stats.misses;
      return nullptr;
    }
    ++stats.hits;
    StorageBlock* block = it->second.back();  // most recently used: likely still in cache
    it->second.pop_back();
    unlink(block);
    return block;
  }

  static void poison(StorageBlock& block) {
    if (block.backing.defined() && !block.backing.is_cpu()) block.backing.fill_(0xFF);
    else std::memset(block.data, 0xFF, block.capacity);
  }

  // Pinned and CUDA memory come from LibTorch's own allocators, held by a byte tensor.
  bool allocate_backing(size_t capacity, at::Tensor& backing) const {
    const auto bytes = at::TensorOptions().dtype(at::kByte);
    try {
      backing = options.memory() == PoolMemory::Pinned ? at::empty({int64_t(capacity)}, bytes.pinned_memory(true))
                                                       : at::empty({int64_t(capacity)}, bytes.device(device));
      return true;
    } catch (const std::exception&) {
      return false;
    }
  }

  StorageBlock* new_block(size_t capacity) {
    void* data = nullptr;
    at::Tensor backing;
    const bool allocated = options.memory() == PoolMemory::Host ? posix_memalign(&data, kAlignment, capacity) == 0
                                                                : allocate_backing(capacity, backing);
    if (!allocated) {
      std::lock_guard<std::mutex> lock(mutex);
      stats.bytes_in_use -= capacity;
      throw Error("TensorPool: out of " + device.str() + " memory allocating " + std::to_string(capacity) + " bytes",
                  Error::Kind::Runtime);
    }
    auto* block = new StorageBlock;
    block->data = backing.defined() ? backing.data_ptr() : data;
    block->capacity = capacity;
    block->backing = std::move(backing);
    BlockRegistry::get().add(block);
    return block;
  }

  static void free_blocks(const std::vector<StorageBlock*>& blocks) {
    for (auto* block : blocks) {
      BlockRegistry::get().remove(block->data);
      if (!block->backing.defined()) std::free(block->data);
      delete block;  // a backing tensor frees pinned / CUDA memory with its own allocator
    }
  }

  void link_newest(StorageBlock* block) {  // lru_.older is the newest, lru_.newer the oldest
    block->older = lru_.older;
    block->newer = &lru_;
    lru_.older->newer = block;
    lru_.older = block;
    stats.bytes_idle += block->capacity;
    ++stats.blocks_idle;
  }

  void unlink(StorageBlock* block) {
    block->newer->older = block->older;
    block->older->newer = block->newer;
    block->newer = block->older = nullptr;
    stats.bytes_idle -= block->capacity;
    --stats.blocks_idle;
  }

  StorageBlock* evict_oldest() {  // the oldest idle block is also the oldest of its class
    StorageBlock* block = lru_.newer;
    idle[block->capacity].pop_front();
    unlink(block);
    ++stats.evictions;
    return block;
  }

  std::vector<StorageBlock*> take_all_idle() {
    std::lock_guard<std::mutex> lock(mutex);
    std::vector<StorageBlock*> blocks;
    while (stats.blocks_idle > 0) blocks.push_back(evict_oldest());
    return blocks;
  }

  mutable std::mutex mutex;
  std::unordered_map<size_t, std::deque<StorageBlock*>> idle;  // by capacity, oldest first
  StorageBlock lru_{nullptr, 0, &lru_, &lru_, nullptr, {}};         // sentinel of the idle LRU ring
  PoolStats stats;
};

}  // namespace detail
}  // namespace pare
