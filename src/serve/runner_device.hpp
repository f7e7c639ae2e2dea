#pragma once
// Internal to the Runner: where its model runs and the host <-> device traffic
// around each forward pass. On the CPU every step is the identity (or a plain
// cat). On a CUDA device, a batch is stacked on the host into pinned memory and
// crosses in one non-blocking copy on the worker's own stream; outputs come
// back to the host in one copy, or stay on the device once that stream is done.
// Written against c10's device-generic stream interface, so it compiles the
// same against CPU-only LibTorch builds.

#include <optional>
#include <vector>

#include <ATen/core/ivalue.h>
#include <c10/core/Device.h>
#include <c10/core/Stream.h>

#include "pare/pool/pool.hpp"

namespace pare::detail {

/// Pinned host buffers of one batch, held until the copy reading them is done.
struct Staging {
  std::vector<PooledTensor> leases;
  std::vector<at::Tensor> buffers;
};

class DeviceIO {
 public:
  /// `pool`: serves the pinned staging buffers when it holds pinned memory.
  DeviceIO(c10::Device device, bool outputs_on_device, std::shared_ptr<TensorPool> pool);

  const c10::Device& device() const { return device_; }
  bool on_accelerator() const { return !device_.is_cpu(); }

  /// A stream of its own for a worker thread; nullopt on the CPU.
  std::optional<c10::Stream> new_stream() const;
  /// The calling thread's current stream on the device; nullopt on the CPU.
  std::optional<c10::Stream> current_stream() const;

  /// `parts` stacked along dim 0 on the model's device.
  at::Tensor stack(const std::vector<at::Tensor>& parts, Staging& staging) const;
  /// One request's inputs on the model's device (tensors moved, other values as they are).
  std::vector<c10::IValue> to_device(const std::vector<c10::IValue>& inputs, Staging& staging) const;
  /// The model's output as callers get it: on the host, or on the device with
  /// `stream`'s work finished.
  c10::IValue deliver(const c10::IValue& output, const std::optional<c10::Stream>& stream) const;
  /// Marks device outputs as used on the receiving thread's current stream, so
  /// the caching allocator never hands their memory to the worker's stream
  /// while the receiver's work on them is pending.
  void hand_over(const c10::IValue& output) const;

 private:
  at::Tensor pinned(at::IntArrayRef sizes, at::ScalarType dtype, Staging& staging) const;

  c10::Device device_;
  bool outputs_on_device_;
  std::shared_ptr<TensorPool> pool_;
};

}  // namespace pare::detail
