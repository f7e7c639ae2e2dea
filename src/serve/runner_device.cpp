#include "serve/runner_device.hpp"

#include <ATen/ATen.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/cuda.h>

#include "core/ivalue_walk.hpp"
#include "pare/core/error.hpp"

namespace pare::detail {

DeviceIO::DeviceIO(c10::Device device, bool outputs_on_device, std::shared_ptr<TensorPool> pool)
    : device_(device), outputs_on_device_(outputs_on_device), pool_(std::move(pool)) {
  require(device.is_cpu() || device.is_cuda(),
          "RunnerOptions.device: " + device.str() + " is not served; expected cpu or cuda[:index]");
  if (device.is_cuda()) {
    require(torch::cuda::is_available(),
            "RunnerOptions.device: " + device.str() +
                " requested but this process sees no CUDA device (CPU-only LibTorch, or no GPU visible)",
            Error::Kind::Runtime);
    if (!device_.has_index()) device_ = c10::Device(c10::kCUDA, 0);
    require(device_.index() < static_cast<int64_t>(torch::cuda::device_count()),
            "RunnerOptions.device: " + device_.str() + " does not exist; this process sees " +
                std::to_string(torch::cuda::device_count()) + " CUDA device(s)");
  }
}

std::optional<c10::Stream> DeviceIO::new_stream() const {
  if (!on_accelerator()) return std::nullopt;
  return c10::impl::VirtualGuardImpl(device_.type()).getStreamFromGlobalPool(device_);
}

std::optional<c10::Stream> DeviceIO::current_stream() const {
  if (!on_accelerator()) return std::nullopt;
  return c10::impl::VirtualGuardImpl(device_.type()).getStream(device_);
}

at::Tensor DeviceIO::pinned(at::IntArrayRef sizes, at::ScalarType dtype, Staging& staging) const {
  if (pool_ && pool_->options().memory() == PoolMemory::Pinned) {
    staging.leases.push_back(pool_->acquire(sizes, dtype));
    return staging.leases.back().tensor();
  }
  staging.buffers.push_back(at::empty(sizes, at::TensorOptions().dtype(dtype).pinned_memory(true)));
  return staging.buffers.back();
}

at::Tensor DeviceIO::stack(const std::vector<at::Tensor>& parts, Staging& staging) const {
  if (!on_accelerator()) return parts.size() == 1 ? parts.front() : at::cat(parts, 0);
  bool on_host = true;
  for (const auto& part : parts) on_host = on_host && part.device().is_cpu();
  if (!on_host) {  // some inputs already live on a device: stack there
    std::vector<at::Tensor> moved;
    for (const auto& part : parts) moved.push_back(part.to(device_, /*non_blocking=*/true));
    return moved.size() == 1 ? moved.front() : at::cat(moved, 0);
  }
  auto sizes = parts.front().sizes().vec();
  sizes[0] = 0;
  for (const auto& part : parts) sizes[0] += part.size(0);
  auto host = pinned(sizes, parts.front().scalar_type(), staging);
  if (parts.size() == 1) host.copy_(parts.front());
  else at::cat_out(host, parts, 0);
  return host.to(device_, /*non_blocking=*/true);
}

std::vector<c10::IValue> DeviceIO::to_device(const std::vector<c10::IValue>& inputs, Staging& staging) const {
  if (!on_accelerator()) return inputs;
  std::vector<c10::IValue> out;
  for (const auto& input : inputs)
    out.push_back(map_tensors(input, [&](const at::Tensor& t) {
      return t.dim() > 0 ? stack({t}, staging) : t.to(device_);
    }));
  return out;
}

c10::IValue DeviceIO::deliver(const c10::IValue& output, const std::optional<c10::Stream>& stream) const {
  if (!on_accelerator()) return output;
  if (!outputs_on_device_) return map_tensors(output, [](const at::Tensor& t) { return t.to(at::kCPU); });
  if (stream) stream->synchronize();
  return output;
}

void DeviceIO::hand_over(const c10::IValue& output) const {
  if (!on_accelerator() || !outputs_on_device_) return;
  const c10::impl::VirtualGuardImpl guard_impl(device_.type());
  const auto receiver = guard_impl.getStream(device_);
  for_each_tensor(output, [&](const at::Tensor& t) {
    if (t.device() == device_ && t.has_storage()) guard_impl.recordDataPtrOnStream(t.storage().data_ptr(), receiver);
  });
}

}  // namespace pare::detail
