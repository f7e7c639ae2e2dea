#include "frontend_cnn.hpp"

#include <pare/trace.hpp>

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

torch::jit::Module train_frontend_cnn(const Dataset& train, int epochs, const Progress& progress, CnnShape shape) {
  torch::manual_seed(0);
  FrontendCnn model(shape);
  examples::train(*model, [&](const torch::Tensor& x) { return model->forward(x); }, train, epochs, 1e-3, 0, progress);
  // The traced module shares the model's tensors; clone it so it owns them.
  return pare::trace(model, {train.images.slice(0, 0, 64)}).clone();
}

}  // namespace pare::examples
