#include "frontend_models.hpp"

#include <pare/convert/trace.hpp>

namespace nn = torch::nn;

namespace pare::examples {

FrontendCnnImpl::FrontendCnnImpl(CnnShape shape)
    : features(nn::Conv2d(nn::Conv2dOptions(1, shape.channels1, 3).padding(1)), nn::ReLU(), nn::MaxPool2d(2),
               nn::Conv2d(nn::Conv2dOptions(shape.channels1, shape.channels2, 3).padding(1)), nn::ReLU(),
               nn::MaxPool2d(2)),
      classifier(nn::Linear(shape.channels2 * 7 * 7, shape.hidden), nn::ReLU(), nn::Linear(shape.hidden, 10)) {
  register_module("features", features);
  register_module("classifier", classifier);
}

torch::Tensor FrontendCnnImpl::forward(const torch::Tensor& images) {
  const auto x = features->forward(images);
  // The usual C++ flatten: the tracer sees x.size(0) as a constant, pare::trace makes it the batch size again.
  return classifier->forward(x.view({x.size(0), -1}));
}

namespace {

template <typename Model>
torch::jit::Module train_and_trace(Model model, const Dataset& train, int epochs, const Progress& progress) {
  examples::train(*model, [&](const torch::Tensor& x) { return model->forward(x); }, train, epochs, 1e-3, 0, progress);
  // The traced module shares the model's tensors; clone it so it owns them.
  return pare::trace(model, {train.images.slice(0, 0, 64)}).clone();
}

}  // namespace

torch::jit::Module train_frontend_cnn(const Dataset& train, int epochs, const Progress& progress, CnnShape shape) {
  torch::manual_seed(0);
  return train_and_trace(FrontendCnn(shape), train, epochs, progress);
}

BasicBlockImpl::BasicBlockImpl(int64_t in, int64_t out, int64_t stride)
    : conv1(nn::Conv2dOptions(in, out, 3).stride(stride).padding(1).bias(false)),
      conv2(nn::Conv2dOptions(out, out, 3).padding(1).bias(false)),
      bn1(out),
      bn2(out) {
  register_module("conv1", conv1);
  register_module("bn1", bn1);
  register_module("conv2", conv2);
  register_module("bn2", bn2);
  if (stride != 1 || in != out)
    downsample = register_module(
        "downsample", nn::Sequential(nn::Conv2d(nn::Conv2dOptions(in, out, 1).stride(stride).bias(false)),
                                     nn::BatchNorm2d(out)));
}

torch::Tensor BasicBlockImpl::forward(const torch::Tensor& x) {
  const auto out = bn2(conv2(torch::relu(bn1(conv1(x)))));
  return torch::relu(out + (downsample.is_empty() ? x : downsample->forward(x)));
}

FrontendResNetImpl::FrontendResNetImpl()
    : conv1(nn::Conv2dOptions(1, 16, 3).padding(1).bias(false)),
      bn1(16),
      layers(BasicBlock(16, 16, 1), BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 32, 1),
             BasicBlock(32, 64, 2), BasicBlock(64, 64, 1)),
      fc(64, 10) {
  register_module("conv1", conv1);
  register_module("bn1", bn1);
  register_module("layers", layers);
  register_module("fc", fc);
}

torch::Tensor FrontendResNetImpl::forward(const torch::Tensor& images) {
  const auto x = layers->forward(torch::relu(bn1(conv1(images))));
  return fc(torch::flatten(torch::adaptive_avg_pool2d(x, {1, 1}), 1));
}

torch::jit::Module train_frontend_resnet(const Dataset& train, int epochs, const Progress& progress) {
  torch::manual_seed(0);
  return train_and_trace(FrontendResNet(), train, epochs, progress);
}

}  // namespace pare::examples
