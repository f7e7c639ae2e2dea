// TensorPool: size-classed idle storage with an LRU byte bound, leases, and a
// routing CPU allocator that sends a guarded thread's LibTorch allocations here.
//
// Every pooled allocation is a c10::DataPtr whose context is its data pointer
// and whose deleter is `release_cpu`. That makes it usable through
// Allocator::raw_allocate / raw_deallocate, which oneDNN (ideep) uses for its
// buffers, and lets one deleter serve both the pool and the forwarded
// allocations: a global registry maps pooled data pointers to their blocks.

#include "pare/pool.hpp"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/accumulate.h>
#include <torch/cuda.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <unordered_map>

#include "compat.hpp"
#include "pare/error.hpp"

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

  explicit PoolState(PoolOptions opts)
      : options(std::move(opts)),
        device(options.memory() == PoolMemory::Cuda ? c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(options.device_index()))
                                                    : c10::Device(c10::kCPU)) {
    lease_allocator.state = this;
  }
  ~PoolState() { free_blocks(take_all_idle()); }

  size_t size_class(size_t bytes) const {
    const auto& classes = options.size_classes();
    if (classes.empty()) return default_size_class(bytes);
    auto it = std::lower_bound(classes.begin(), classes.end(), bytes);
    return it != classes.end() ? *it : round_up(bytes, kPage);
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

  const PoolOptions options;
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

namespace {

thread_local PoolState* t_guarded_pool = nullptr;

/// Replaces LibTorch's CPU allocator once; forwards unless a guard is active on this thread.
class RoutingAllocator final : public c10::Allocator {
 public:
  explicit RoutingAllocator(c10::Allocator* fallback)
      : fallback_(fallback), fallback_raw_deleter_(fallback->raw_deleter()) {}

  c10::DataPtr allocate(size_t bytes) PARE_ALLOCATE_CONST override {
    if (PoolState* state = t_guarded_pool) {
      routed_.fetch_add(1, std::memory_order_relaxed);
      return state->allocate(bytes);
    }
    forwarded_.fetch_add(1, std::memory_order_relaxed);
    return fallback_->allocate(bytes);
  }
  // raw_deallocate receives pooled and forwarded pointers alike: release_cpu tells them apart.
  c10::DeleterFnPtr raw_deleter() const override { return &release_cpu; }
  PARE_ALLOCATOR_COPY_DATA

  c10::DeleterFnPtr fallback_raw_deleter() const { return fallback_raw_deleter_; }
  uint64_t forwarded() const { return forwarded_.load(std::memory_order_relaxed); }
  uint64_t routed() const { return routed_.load(std::memory_order_relaxed); }

 private:
  c10::Allocator* fallback_;
  c10::DeleterFnPtr fallback_raw_deleter_;
  mutable std::atomic<uint64_t> forwarded_{0};
  mutable std::atomic<uint64_t> routed_{0};
};

std::atomic<RoutingAllocator*> g_router{nullptr};

void release_cpu(void* data) {
  if (data == nullptr) return;
  if (StorageBlock* block = BlockRegistry::get().find(data)) {
    std::shared_ptr<PoolState> state = std::move(block->owner);  // keeps the pool alive past give_back
    state->give_back(block);
    return;
  }
  // Not pooled: memory LibTorch's own allocator handed out through raw_allocate.
  g_router.load()->fallback_raw_deleter()(data);
}

bool supported_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kBool: case at::kByte: case at::kChar: case at::kShort: case at::kInt: case at::kLong:
    case at::kHalf: case at::kBFloat16: case at::kFloat: case at::kDouble:
    case at::kComplexFloat: case at::kComplexDouble:
      return true;
    default:
      return false;
  }
}

void validate(const PoolOptions& options) {
  if (options.memory() != PoolMemory::Host) {
    require(torch::cuda::is_available(), std::string("PoolOptions.memory: ") +
                                             (options.memory() == PoolMemory::Pinned ? "Pinned" : "Cuda") +
                                             " memory needs a CUDA device, and this process sees none; use PoolMemory::Host",
            Error::Kind::Runtime);
    require(options.device_index() >= 0 && options.device_index() < int(torch::cuda::device_count()),
            "PoolOptions.device_index: " + std::to_string(options.device_index()) + " is not a CUDA device here (" +
                std::to_string(torch::cuda::device_count()) + " visible)");
  }
  const auto& classes = options.size_classes();
  for (size_t i = 0; i < classes.size(); ++i) {
    require(classes[i] > 0, "PoolOptions.size_classes: sizes must be positive byte counts");
    require(i == 0 || classes[i] > classes[i - 1],
            "PoolOptions.size_classes: sizes must be strictly ascending, got " +
                std::to_string(classes[i - (i > 0)]) + " before " + std::to_string(classes[i]));
  }
}

}  // namespace
}  // namespace detail

PooledTensor::PooledTensor(at::Tensor tensor, std::shared_ptr<detail::PoolState> state)
    : tensor_(std::move(tensor)), state_(std::move(state)) {}

PooledTensor& PooledTensor::operator=(PooledTensor&& other) noexcept {
  if (this != &other) {
    release();
    tensor_ = std::move(other.tensor_);
    state_ = std::move(other.state_);
  }
  return *this;
}

const at::Tensor& PooledTensor::tensor() const {
  if (!valid())  // the message is built only on failure: tensor() sits on hot paths
    throw Error("PooledTensor.tensor: the lease has ended (moved from or released)", Error::Kind::Runtime);
  return tensor_;
}

bool PooledTensor::release() noexcept {
  if (!tensor_.defined()) return false;
  const bool shared = tensor_.use_count() > 1 || tensor_.storage().use_count() > 1;
  if (shared && state_) state_->note_outlived();
  tensor_ = at::Tensor();
  state_.reset();
  return !shared;
}

TensorPool::TensorPool(PoolOptions options) {
  detail::validate(options);
  // c10's allocator table is not thread-safe: the router goes in here, on the
  // thread that builds the pool, before any guard or Runner worker can use it.
  install_pool_allocator();
  state_ = std::make_shared<detail::PoolState>(std::move(options));
}

PooledTensor TensorPool::acquire(at::IntArrayRef shape, at::ScalarType dtype, at::Device device) {
  // Messages are built only on failure: formatting them on every call cost more than a small allocation.
  const auto& served = state_->device;
  if (device.type() != served.type() || (device.has_index() && device.index() != served.index()))
    throw Error("TensorPool.acquire: device " + device.str() + " is not served; this pool holds " +
                (served.is_cpu() ? std::string("CPU") : served.str()) + " storage only (PoolOptions.memory)");
  if (!detail::supported_dtype(dtype))
    throw Error(std::string("TensorPool.acquire: dtype ") + c10::toString(dtype) +
                " is not served; expected a plain numeric or bool dtype");
  for (auto dim : shape)
    if (dim < 0) throw Error("TensorPool.acquire: shape " + c10::str(shape) + " has a negative dimension; expected sizes >= 0");
  if (state_->options.memory() == PoolMemory::Host && state_->options.small_bytes() > 0 &&
      size_t(c10::multiply_integers(shape)) * c10::elementSize(dtype) < state_->options.small_bytes()) {
    state_->small_leases.fetch_add(1, std::memory_order_relaxed);
    return PooledTensor(at::empty(shape, at::TensorOptions().dtype(dtype)), state_);
  }
  const auto key = served.is_cuda() ? c10::DispatchKey::CUDA : c10::DispatchKey::CPU;
  auto tensor = at::detail::empty_generic(shape, &state_->lease_allocator, c10::DispatchKeySet(key), dtype,
                                          c10::nullopt);
  return PooledTensor(at::Tensor(std::move(tensor)), state_);
}

size_t TensorPool::trim() { return state_->trim(); }
PoolStats TensorPool::stats() const { return state_->snapshot(); }
const PoolOptions& TensorPool::options() const { return state_->options; }
size_t TensorPool::size_class(size_t bytes) const { return state_->size_class(bytes); }

void install_pool_allocator() {
  static std::mutex install_mutex;
  std::lock_guard<std::mutex> lock(install_mutex);
  if (detail::g_router.load()) return;
  c10::Allocator* current = c10::GetCPUAllocator();
  require(current->raw_deleter() != nullptr,
          "install_pool_allocator: LibTorch's current CPU allocator has no raw deleter; "
          "pare can only wrap allocators that support raw_deallocate", Error::Kind::Runtime);
  auto* router = new detail::RoutingAllocator(current);  // static lifetime, as c10 expects
  c10::SetCPUAllocator(router, /*priority=*/0);
  require(c10::GetCPUAllocator() == router,
          "install_pool_allocator: LibTorch kept a higher-priority CPU allocator; "
          "the pool cannot route its allocations", Error::Kind::Runtime);
  detail::g_router.store(router);
}

uint64_t unpooled_cpu_allocations() {
  auto* router = detail::g_router.load();
  return router ? router->forwarded() : 0;
}

uint64_t pooled_cpu_allocations() {
  auto* router = detail::g_router.load();
  return router ? router->routed() : 0;
}

PoolAllocatorGuard::PoolAllocatorGuard(TensorPool& pool)
    : state_(pool.state_), previous_(detail::t_guarded_pool) {
  require(state_->options.memory() == PoolMemory::Host,
          "PoolAllocatorGuard: the pool holds pinned or CUDA memory; routing LibTorch's CPU allocations needs a "
          "PoolMemory::Host pool");
  // The pool's constructor installed the router: a guard only reads the table.
  require(detail::g_router.load() != nullptr && c10::GetCPUAllocator() == detail::g_router.load(),
          "PoolAllocatorGuard: another CPU allocator replaced pare's; allocations cannot be routed",
          Error::Kind::Runtime);
  detail::t_guarded_pool = state_.get();
}

PoolAllocatorGuard::~PoolAllocatorGuard() { detail::t_guarded_pool = previous_; }

}  // namespace pare
