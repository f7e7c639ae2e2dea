// TensorPool: size-classed idle storage with an LRU byte bound, leases, and a
// routing CPU allocator that sends a guarded thread's LibTorch allocations here.
//
// Every pooled allocation is a c10::DataPtr whose context is its data pointer
// and whose deleter is `release_cpu`. That makes it usable through
// Allocator::raw_allocate / raw_deallocate, which oneDNN (ideep) uses for its
// buffers, and lets one deleter serve both the pool and the forwarded
// allocations: a global registry maps pooled data pointers to their blocks.

#include "pare/pool/pool.hpp"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/accumulate.h>
#include <torch/cuda.h>

#include <atomic>
#include <mutex>

#include "core/compat.hpp"
#include "pare/core/error.hpp"
#include "pool/pool_state.hpp"

namespace pare {
namespace detail {

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

void validate(const TensorPoolOptions& options) {
  if (options.memory() != PoolMemory::Host) {
    require(torch::cuda::is_available(),
            std::string("TensorPoolOptions.memory: ") + (options.memory() == PoolMemory::Pinned ? "Pinned" : "Cuda") +
                " memory needs a CUDA device, and this process sees none; use PoolMemory::Host",
            Error::Kind::Runtime);
    require(options.device_index() >= 0 && options.device_index() < int(torch::cuda::device_count()),
            "TensorPoolOptions.device_index: " + std::to_string(options.device_index()) +
                " is not a CUDA device here (" + std::to_string(torch::cuda::device_count()) + " visible)");
  }
  const auto& classes = options.size_classes();
  for (size_t i = 0; i < classes.size(); ++i) {
    require(classes[i] > 0, "TensorPoolOptions.size_classes: sizes must be positive byte counts");
    require(i == 0 || classes[i] > classes[i - 1],
            "TensorPoolOptions.size_classes: sizes must be strictly ascending, got " +
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

TensorPool::TensorPool(TensorPoolOptions options) {
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
                (served.is_cpu() ? std::string("CPU") : served.str()) + " storage only (TensorPoolOptions.memory)");
  if (!detail::supported_dtype(dtype))
    throw Error(std::string("TensorPool.acquire: dtype ") + c10::toString(dtype) +
                " is not served; expected a plain numeric or bool dtype");
  for (auto dim : shape)
    if (dim < 0) throw Error("TensorPool.acquire: shape " + c10::str(shape) + " has a negative dimension; expected sizes >= 0");
  if (state_->options.memory() == PoolMemory::Host && state_->options.small_bytes() > 0 &&
      size_t(c10::multiply_integers(shape)) * c10::elementSize(dtype) < size_t(state_->options.small_bytes())) {
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
const TensorPoolOptions& TensorPool::options() const { return state_->options; }
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
