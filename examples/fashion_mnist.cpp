#include "fashion_mnist.hpp"

#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <vector>

namespace pare::examples {
namespace {

std::vector<uint8_t> read_gz(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file) throw std::runtime_error("cannot open " + path + " (install the Debian package dataset-fashion-mnist)");
  std::vector<uint8_t> bytes;
  uint8_t buffer[1 << 16];
  int n;
  while ((n = gzread(file, buffer, sizeof buffer)) > 0) bytes.insert(bytes.end(), buffer, buffer + n);
  gzclose(file);
  return bytes;
}

uint32_t big_endian(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }

torch::jit::Module layer(const std::string& kind, torch::Tensor weight, torch::Tensor bias) {
  const std::string module_path = kind == "Linear" ? "linear" : "conv";
  torch::jit::Module m("__torch__.torch.nn.modules." + module_path + "." + kind);
  m.register_parameter("weight", weight.detach().clone(), false);
  m.register_parameter("bias", bias.detach().clone(), false);
  m.define(kind == "Linear"
               ? "def forward(self, x):\n  return torch.linear(x, self.weight, self.bias)\n"
               : "def forward(self, x):\n  return torch.conv2d(x, self.weight, self.bias, [1, 1], [1, 1])\n");
  return m;
}

}  // namespace

Dataset Dataset::slice(int64_t begin, int64_t end) const {
  return {images.slice(0, begin, end), labels.slice(0, begin, end)};
}

std::vector<std::pair<torch::Tensor, torch::Tensor>> Dataset::batches(int64_t batch_size) const {
  std::vector<std::pair<torch::Tensor, torch::Tensor>> out;
  for (int64_t begin = 0; begin < size(); begin += batch_size) {
    const auto part = slice(begin, std::min(size(), begin + batch_size));
    out.emplace_back(part.images, part.labels);
  }
  return out;
}

std::string fashion_mnist_dir() {
  const char* dir = std::getenv("PARE_FASHION_MNIST_DIR");
  return dir ? dir : "/usr/share/datasets/fashion-mnist";
}

Dataset load_fashion_mnist(bool train, int64_t limit, const std::string& dir) {
  const std::string prefix = dir + "/" + (train ? "train" : "t10k");
  const auto images = read_gz(prefix + "-images-idx3-ubyte.gz");
  const auto labels = read_gz(prefix + "-labels-idx1-ubyte.gz");
  if (images.size() < 16 || big_endian(images.data()) != 2051 || labels.size() < 8 || big_endian(labels.data()) != 2049)
    throw std::runtime_error("not an IDX file pair: " + prefix);
  int64_t n = big_endian(images.data() + 4);
  if (limit > 0) n = std::min(n, limit);
  auto x = torch::from_blob(const_cast<uint8_t*>(images.data() + 16), {n, 1, 28, 28}, torch::kUInt8)
               .to(torch::kFloat).div_(255.0).sub_(0.2860).div_(0.3530);
  auto y = torch::from_blob(const_cast<uint8_t*>(labels.data() + 8), {n}, torch::kUInt8).to(torch::kLong);
  return {x, y};
}

torch::jit::Module make_fashion_cnn(CnnShape shape, uint64_t seed) {
  torch::manual_seed(seed);
  // torch.nn's default initialisation, borrowed from the C++ frontend's layers.
  torch::nn::Conv2d c1(torch::nn::Conv2dOptions(1, shape.channels1, 3).padding(1));
  torch::nn::Conv2d c2(torch::nn::Conv2dOptions(shape.channels1, shape.channels2, 3).padding(1));
  torch::nn::Linear f1(shape.channels2 * 7 * 7, shape.hidden), f2(shape.hidden, 10);
  torch::jit::Module net("__torch__.pare_examples.FashionCNN");
  net.register_module("conv1", layer("Conv2d", c1->weight, c1->bias));
  net.register_module("conv2", layer("Conv2d", c2->weight, c2->bias));
  net.register_module("fc1", layer("Linear", f1->weight, f1->bias));
  net.register_module("fc2", layer("Linear", f2->weight, f2->bias));
  net.define(R"(
def forward(self, x):
  x = torch.max_pool2d(torch.relu(self.conv1.forward(x)), [2, 2])
  x = torch.max_pool2d(torch.relu(self.conv2.forward(x)), [2, 2])
  x = torch.flatten(x, 1)
  x = torch.relu(self.fc1.forward(x))
  return self.fc2.forward(x)
)");
  return net;
}

namespace {

// Adam with cross-entropy over shuffled batches of 64; `parameters` are left requiring no grad.
void fit(std::vector<torch::Tensor> parameters, const std::function<torch::Tensor(const torch::Tensor&)>& forward,
         const Dataset& data, int epochs, double lr, uint64_t seed, const Progress& progress) {
  for (auto& p : parameters) p.set_requires_grad(true);
  torch::optim::Adam optimizer(parameters, torch::optim::AdamOptions(lr));
  torch::manual_seed(seed);
  const int64_t batch = 64, steps = (data.size() + batch - 1) / batch;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    const auto order = torch::randperm(data.size(), torch::kLong);
    double running = 0;
    for (int64_t step = 0; step < steps; ++step) {
      const auto index = order.slice(0, step * batch, std::min(data.size(), (step + 1) * batch));
      const auto logits = forward(data.images.index_select(0, index));
      const auto loss = torch::nn::functional::cross_entropy(logits, data.labels.index_select(0, index));
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      running = step == 0 ? loss.item<double>() : 0.98 * running + 0.02 * loss.item<double>();
      if (progress) progress(epoch * steps + step + 1, epochs * steps, running);
    }
  }
  for (auto& p : parameters) p.set_requires_grad(false);
}

}  // namespace

void train(torch::jit::Module& module, const Dataset& data, int epochs, double lr, uint64_t seed,
           const Progress& progress) {
  std::vector<torch::Tensor> params;
  for (const auto& p : module.parameters()) params.push_back(p);
  module.train();
  fit(params, [&](const torch::Tensor& x) { return module.forward({x}).toTensor(); }, data, epochs, lr, seed, progress);
  module.eval();
}

void train(torch::nn::Module& module, const std::function<torch::Tensor(const torch::Tensor&)>& forward,
           const Dataset& data, int epochs, double lr, uint64_t seed, const Progress& progress) {
  module.train();
  fit(module.parameters(), forward, data, epochs, lr, seed, progress);
  module.eval();
}

double accuracy(torch::jit::Module& module, const Dataset& data) {
  torch::NoGradGuard no_grad;
  int64_t correct = 0;
  for (int64_t begin = 0; begin < data.size(); begin += 1000) {
    const auto part = data.slice(begin, std::min(data.size(), begin + 1000));
    const auto logits = module.forward({part.images}).toTensor();
    correct += logits.argmax(1).eq(part.labels).sum().item<int64_t>();
  }
  return 100.0 * double(correct) / double(data.size());
}

double median_latency_ms(torch::jit::Module& module, int64_t batch, int repeats) {
  torch::NoGradGuard no_grad;
  const auto input = torch::randn({batch, 1, 28, 28});
  for (int i = 0; i < 4; ++i) module.forward({input});  // warm-up (one more below): profiling executor, caches
  return median_call_ms(repeats, [&] { module.forward({input}); });
}

double file_latency_ms(const std::string& path, int64_t batch, int repeats) {
  auto module = torch::jit::load(path);
  return median_latency_ms(module, batch, repeats);
}

Progress progress_bar(const std::string& label) {
  return [label, last = -1](int64_t step, int64_t steps, double loss) mutable {
    const int percent = int(100 * step / std::max<int64_t>(steps, 1));
    if (percent == last && step != steps) return;
    last = percent;
    const int filled = percent * 30 / 100;
    std::fprintf(stderr, "\r%-24s [%.*s%*s] %3d%%", label.c_str(), filled, "##############################",
                 30 - filled, "", percent);
    if (!std::isnan(loss)) std::fprintf(stderr, "  loss %.4f", loss);
    if (step == steps) std::fprintf(stderr, "\n");
  };
}

}  // namespace pare::examples
