#pragma once
// Example support: Fashion-MNIST models written with the LibTorch C++ frontend
// (torch::nn) — the main job's CNN and a small ResNet — trained in C++ and
// traced into TorchScript with pare::trace.

#include <torch/torch.h>

#include "fashion_mnist.hpp"

namespace pare::examples {

/// The main job's CNN (conv 32, conv 64, fc 128, fc 10) as torch::nn layers.
struct FrontendCnnImpl : torch::nn::Module {
  torch::nn::Sequential features, classifier;
  explicit FrontendCnnImpl(CnnShape shape = {});
  torch::Tensor forward(const torch::Tensor& images);
};
TORCH_MODULE(FrontendCnn);

/// Trains a FrontendCnn on `train` (seeded like make_fashion_cnn/train) and
/// returns it traced: features.0.weight … classifier.2.bias, any batch size.
torch::jit::Module train_frontend_cnn(const Dataset& train, int epochs, const Progress& progress = {},
                                      CnnShape shape = {});

/// torchvision's BasicBlock: conv3x3-BN-ReLU, conv3x3-BN, plus the input (through
/// a 1x1 conv + BN when the shape changes), then ReLU.
struct BasicBlockImpl : torch::nn::Module {
  torch::nn::Conv2d conv1, conv2;
  torch::nn::BatchNorm2d bn1, bn2;
  torch::nn::Sequential downsample{nullptr};
  BasicBlockImpl(int64_t in, int64_t out, int64_t stride);
  torch::Tensor forward(const torch::Tensor& x);
};
TORCH_MODULE(BasicBlock);

/// A ResNet for 1x28x28 images: stem conv 16 + BN, three stages of two blocks
/// (16, 32, 64 channels; stride 2 from the second), global average pool, Linear 10.
struct FrontendResNetImpl : torch::nn::Module {
  torch::nn::Conv2d conv1;
  torch::nn::BatchNorm2d bn1;
  torch::nn::Sequential layers;
  torch::nn::Linear fc;
  FrontendResNetImpl();
  torch::Tensor forward(const torch::Tensor& images);
};
TORCH_MODULE(FrontendResNet);

/// Trains a FrontendResNet on `train` and returns it traced (eval mode, any batch size).
torch::jit::Module train_frontend_resnet(const Dataset& train, int epochs, const Progress& progress = {});

}  // namespace pare::examples
