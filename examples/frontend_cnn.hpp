#pragma once
// Example support: the Fashion-MNIST CNN written with the LibTorch C++ frontend
// (torch::nn), trained in C++ and traced into TorchScript with pare::trace.

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

}  // namespace pare::examples
