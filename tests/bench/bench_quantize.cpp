// Static int8 on the Fashion-MNIST CNN and a 3-layer 1024-wide MLP: accuracy
// for every observer x per-channel/per-tensor beside PyTorch's eager PTQ on
// the same weights and 512 calibration images (run through /usr/bin/python3),
// latency at batch 1 and 64 against LibTorch fp32 and PyTorch eager int8, and
// the exported file size against fp32.
//
// Then the model table (bench_quantize_models.cpp): torchvision resnet18,
// mobilenet_v2, densenet121 and a small trained ResNet, pare int8 beside
// PyTorch's FX graph-mode PTQ, on 1 thread unless --model-threads says otherwise
// (also efficientnet_b0, squeezenet1_1 and mnasnet0_5: squeeze-excite with
// SiLU, fire modules, a depthwise search-space network). And the max_drop
// table: a trained CNN with an outlier layer, plain int8 beside max_drop.
//
//   bench_quantize [--epochs 3] [--cache DIR] [--threads 2] [--rounds 20]
//                  [--only mnist|max_drop|models] [--models resnet18,mobilenet_v2,...]
//                  [--model-threads 1] [--model-engine onednn]
// Trained weights are cached in DIR (default: the working directory).

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <pare/pare.hpp>
#include <pare/quantize/quantize.hpp>
#include <ATen/Parallel.h>

#include "bench_quantize_models.hpp"
#include "fashion_mnist.hpp"

namespace ex = pare::examples;

namespace {

torch::jit::Module linear(int64_t in, int64_t out) {
  torch::nn::Linear init(in, out);  // torch.nn's default initialisation
  torch::jit::Module m("__torch__.torch.nn.modules.linear.Linear");
  m.register_parameter("weight", init->weight.detach().clone(), false);
  m.register_parameter("bias", init->bias.detach().clone(), false);
  m.define("def forward(self, x):\n  return torch.linear(x, self.weight, self.bias)\n");
  return m;
}

torch::jit::Module make_mlp(int64_t width) {
  torch::manual_seed(0);
  torch::jit::Module net("__torch__.pare_bench.Mlp");
  net.register_module("fc1", linear(784, width));
  net.register_module("fc2", linear(width, width));
  net.register_module("fc3", linear(width, 10));
  net.define(R"(
def forward(self, x):
  x = torch.relu(self.fc1.forward(torch.flatten(x, 1)))
  return self.fc3.forward(torch.relu(self.fc2.forward(x)))
)");
  return net;
}

// Trains once and caches the module (as saved TorchScript) in `path`.
torch::jit::Module trained(const std::string& path, torch::jit::Module model, const ex::Dataset& train, int epochs) {
  if (std::ifstream(path).good()) return torch::jit::load(path);
  ex::train(model, train, epochs, 1e-3, 0, ex::progress_bar("training " + path));
  model.save(path);
  return model;
}

struct Measured {
  double accuracy = 0, bytes = 0;
  std::string path;
};

Measured export_and_measure(const torch::jit::Module& model, pare::Pipeline pipeline, const std::string& path,
                            const ex::Dataset& test) {
  pipeline.add(pare::ExportTorchScript(pare::ExportTorchScriptOptions(path).freeze(true)));
  const auto result = pipeline.run(model);
  auto reloaded = torch::jit::load(path);  // what a deployment runs: a fresh module from the file
  return {ex::accuracy(reloaded, test), result.report.at("export_torchscript").metrics.at("file_bytes"), path};
}

// LibTorch's thread setting does not reach OpenBLAS's own pthread pool, which
// LibTorch fp32 uses for Linear: give both the same count so the fp32 baseline
// runs on as many threads as the int8 kernels (and the Python child inherits it).
void set_blas_threads(int threads) {
  setenv("OPENBLAS_NUM_THREADS", std::to_string(threads).c_str(), 1);
  using SetThreads = void (*)(int);
  if (auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(threads);
}

double median(std::vector<double> values) {
  std::nth_element(values.begin(), values.begin() + values.size() / 2, values.end());
  return values[values.size() / 2];
}

// Median forward time (ms) of each module at `batch`. The modules take turns
// in short rounds so that load from other processes hits all of them alike.
std::vector<double> interleaved_medians_ms(std::vector<torch::jit::Module> modules, int64_t batch, int rounds,
                                           int per_round) {
  torch::NoGradGuard no_grad;
  const std::vector<torch::jit::IValue> input{torch::randn({batch, 1, 28, 28})};
  for (auto& m : modules)
    for (int i = 0; i < 5; ++i) m.forward(input);  // warm-up: profiling executor, packing caches
  std::vector<std::vector<double>> times(modules.size());
  for (int r = 0; r < rounds; ++r)
    for (size_t k = 0; k < modules.size(); ++k)
      for (int i = 0; i < per_round; ++i) {
        const auto start = std::chrono::steady_clock::now();
        modules[k].forward(input);
        times[k].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
      }
  std::vector<double> out;
  for (auto& t : times) out.push_back(median(t));
  return out;
}

// The weights, calibration images and test split, as a pickle torch.load reads.
void write_reference_data(const std::string& path, const std::vector<std::pair<std::string, torch::jit::Module>>& models,
                          const torch::Tensor& calibration, const ex::Dataset& test, int threads, int rounds) {
  c10::Dict<std::string, torch::Tensor> data;
  for (const auto& [name, model] : models)
    for (const auto& p : model.named_parameters()) data.insert(name + "." + p.name, p.value.detach());
  data.insert("calibration", calibration);
  data.insert("test_images", test.images);
  data.insert("test_labels", test.labels);
  data.insert("threads", torch::tensor(threads));
  data.insert("rounds", torch::tensor(rounds));
  const auto bytes = torch::pickle_save(data);
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

// `models`: "name=fp32_file,int8_file" per model, for the same-process check.
nlohmann::json run_reference(const std::string& data_path, const std::string& engine,
                             const std::vector<std::string>& models) {
  const std::string script = std::string(PARE_BENCH_SOURCE_DIR) + "/bench_quantize_reference.py";
  const std::string out = data_path + ".json";
  std::string command = PARE_PYTHON " " + script + " " + data_path + " " + engine;
  for (const auto& m : models) command += " " + m;
  command += " > " + out;
  if (std::system(command.c_str()) != 0) throw std::runtime_error("the PyTorch reference failed: " + command);
  return nlohmann::json::parse(std::ifstream(out));
}

}  // namespace

void mnist_tables(int epochs, int threads, int rounds, const std::string& cache);

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> out;
  for (size_t at = 0; at <= text.size();) {
    const auto end = std::min(text.find(',', at), text.size());
    if (end > at) out.push_back(text.substr(at, end - at));
    at = end + 1;
  }
  return out;
}

int main(int argc, char** argv) try {
  int epochs = 3, threads = 2, rounds = 20, model_threads = 1;
  std::string cache = ".", only,
              models = "resnet18,mobilenet_v2,densenet121,small_resnet,efficientnet_b0,squeezenet1_1,mnasnet0_5",
              model_engine = "onednn";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--only")) only = argv[i + 1];
    else if (!std::strcmp(argv[i], "--models")) models = argv[i + 1];
    else if (!std::strcmp(argv[i], "--model-threads")) model_threads = std::stoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--model-engine")) model_engine = argv[i + 1];
    if (!std::strcmp(argv[i], "--epochs")) epochs = std::stoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--cache")) cache = argv[i + 1];
    else if (!std::strcmp(argv[i], "--threads")) threads = std::stoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--rounds")) rounds = std::stoi(argv[i + 1]);
  }
  if (only.empty() || only == "mnist") mnist_tables(epochs, threads, rounds, cache);
  if (only.empty() || only == "max_drop") {
    torch::set_num_threads(threads);
    print_max_drop_table(cache, epochs);
  }
  if (only.empty() || only == "models") {
    torch::set_num_threads(model_threads);
    set_blas_threads(model_threads);
    print_model_table(cache, split_commas(models), model_engine, model_threads, rounds);
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}

// The CNN and MLP tables (accuracy per observer, latency, size).
void mnist_tables(int epochs, int threads, int rounds, const std::string& cache) {
  torch::set_num_threads(threads);
  set_blas_threads(threads);
  const auto train = ex::load_fashion_mnist(true), test = ex::load_fashion_mnist(false);
  const std::string engine = pare::available_quantized_engines().at(0);
  std::printf("quantized engine: %s, threads: %d, calibration: 512 training images (+64 held out for SQNR)\n",
              engine.c_str(), threads);

  const std::vector<std::pair<std::string, torch::jit::Module>> models = {
      {"cnn", trained(cache + "/bench_quantize_cnn_e" + std::to_string(epochs) + ".pt", ex::make_fashion_cnn(), train, epochs)},
      {"mlp", trained(cache + "/bench_quantize_mlp_e" + std::to_string(epochs) + ".pt", make_mlp(1024), train, epochs)}};
  pare::InputBatches calibration;
  for (int64_t b = 0; b < 9; ++b) calibration.push_back({train.images.slice(0, b * 64, (b + 1) * 64)});

  // Accuracy of every variant; the default (histogram, per channel) is kept for timing.
  std::map<std::string, std::vector<std::pair<std::string, double>>> accuracy_rows;
  std::map<std::string, Measured> fp32, best;
  std::vector<std::string> files;
  for (const auto& [name, model] : models) {
    fp32[name] = export_and_measure(model, pare::Pipeline(), cache + "/bq_" + name + "_fp32.pt", test);
    for (auto kind : {pare::ObserverKind::MinMax, pare::ObserverKind::MovingAverageMinMax, pare::ObserverKind::Percentile,
                      pare::ObserverKind::Histogram, pare::ObserverKind::Entropy}) {
      for (bool per_channel : {true, false}) {
        const std::string variant = "pare " + pare::to_string(kind) + (per_channel ? " per-channel" : " per-tensor");
        std::fprintf(stderr, "%s: %s\n", name.c_str(), variant.c_str());
        const bool kept = kind == pare::ObserverKind::Histogram && per_channel;
        const auto path = cache + "/bq_" + name + (kept ? "_int8.pt" : "_int8_variant.pt");
        pare::Pipeline pipeline;
        pipeline.add(pare::QuantizeInt8(
            pare::QuantizeInt8Options(calibration).observer(kind).per_channel(per_channel).engine(engine)));
        const auto m = export_and_measure(model, pipeline, path, test);
        accuracy_rows[name].emplace_back(variant, m.accuracy);
        if (kept) best[name] = m;
      }
    }
    if (name == "mlp") {
      pare::Pipeline dynamic;
      dynamic.add(pare::QuantizeInt8Dynamic(pare::QuantizeInt8DynamicOptions().engine(engine)));
      accuracy_rows[name].emplace_back(
          "pare dynamic int8", export_and_measure(model, dynamic, cache + "/bq_mlp_dyn.pt", test).accuracy);
    }
    files.push_back(name + "=" + fp32[name].path + "," + best[name].path);
  }
  std::remove((cache + "/bq_cnn_int8_variant.pt").c_str());
  std::remove((cache + "/bq_mlp_int8_variant.pt").c_str());

  std::fprintf(stderr, "PyTorch eager PTQ reference...\n");
  const std::string data_path = cache + "/bench_quantize_reference.pt";
  write_reference_data(data_path, models, train.images.slice(0, 0, 512), test, threads, rounds);
  const auto reference = run_reference(data_path, engine, files);

  std::printf("\n%-5s %-40s %9s %9s\n", "model", "variant (top-1 on the 10k test split)", "top-1 %", "vs fp32");
  for (const auto& [name, model] : models) {
    const auto& ref = reference.at(name);
    auto row = [&, name = name](const std::string& variant, double accuracy) {
      std::printf("%-5s %-40s %9.2f %+9.2f\n", name.c_str(), variant.c_str(), accuracy, accuracy - fp32[name].accuracy);
    };
    row("fp32 (LibTorch)", fp32[name].accuracy);
    row("fp32 (PyTorch eager, same weights)", ref.at("fp32_accuracy").get<double>());
    row("PyTorch eager PTQ (default qconfig)", ref.at("int8_accuracy").get<double>());
    for (const auto& [variant, accuracy] : accuracy_rows[name]) row(variant, accuracy);
    row("pare histogram/pc file in stock PyTorch", ref.at("pare_int8_accuracy").get<double>());
  }

  std::printf("\n%-5s %-28s %10s %10s %11s %11s %10s\n", "model", "runtime", "b1 ms p50", "b64 ms p50",
              "b1 speedup", "b64 speedup", "size/fp32");
  for (const auto& [name, model] : models) {
    std::fprintf(stderr, "timing %s...\n", name.c_str());
    const std::vector<torch::jit::Module> timed = {torch::jit::load(fp32[name].path), torch::jit::load(best[name].path)};
    const auto b1 = interleaved_medians_ms(timed, 1, rounds, 20);
    const auto b64 = interleaved_medians_ms(timed, 64, rounds, 5);
    const auto& ref = reference.at(name);
    const double eager_b1 = ref.at("eager_int8_b1_ms").get<double>(), eager_b64 = ref.at("eager_int8_b64_ms").get<double>();
    auto row = [&, name = name](const char* runtime, double t1, double t64, const std::string& size) {
      std::printf("%-5s %-28s %10.3f %10.3f %10.2fx %10.2fx %10s\n", name.c_str(), runtime, t1, t64, b1[0] / t1,
                  b64[0] / t64, size.c_str());
    };
    char size[32];
    std::snprintf(size, sizeof size, "%.3f", best[name].bytes / fp32[name].bytes);
    row("LibTorch fp32 (frozen)", b1[0], b64[0], "1.000");
    row("PyTorch eager int8", eager_b1, eager_b64, "-");
    row("pare int8 (histogram/pc)", b1[1], b64[1], size);
  }
  std::printf("(speedup: LibTorch fp32 median / this runtime's median; fp32 and pare int8 take turns in one process; "
              "PyTorch eager int8 was timed in its own " PARE_PYTHON " process)\n");

  std::printf("\nsame-process check in " PARE_PYTHON " (stock PyTorch, no pare), medians in ms:\n");
  std::printf("%-5s %-34s %10s %10s %16s %16s\n", "model", "runtime", "b1 ms p50", "b64 ms p50",
              "b1 vs eager int8", "b64 vs eager int8");
  for (const auto& [name, model] : models) {
    const auto& ref = reference.at(name);
    const double e1 = ref.at("eager_int8_b1_ms").get<double>(), e64 = ref.at("eager_int8_b64_ms").get<double>();
    for (const auto& [label, key] : std::vector<std::pair<std::string, std::string>>{
             {"PyTorch eager fp32", "eager_fp32"}, {"PyTorch eager int8", "eager_int8"},
             {"pare int8 file (torch.jit.load)", "pare_int8"}}) {
      const double t1 = ref.at(key + "_b1_ms").get<double>(), t64 = ref.at(key + "_b64_ms").get<double>();
      std::printf("%-5s %-34s %10.3f %10.3f %15.2fx %15.2fx\n", name.c_str(), label.c_str(), t1, t64, e1 / t1, e64 / t64);
    }
  }
  std::printf("(x: PyTorch eager int8 median / this runtime's median; >1 is faster than eager int8)\n");
}
