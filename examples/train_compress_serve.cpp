// A model written with the LibTorch C++ frontend, end to end: define a CNN with
// torch::nn, train it on Fashion-MNIST in C++, trace it into TorchScript
// (pare::trace), prune + distill + int8 + export it in one pipeline, reload the
// file in stock Python torch, and serve it with pare::Runner.
//
//   train_compress_serve [--epochs 3] [--out DIR] [--python INTERPRETER] [--limit N]
//
// --limit N trains and distills on the first N training images only (a quick run).

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <pare/pare.hpp>
#include <ATen/Parallel.h>

#include "fashion_mnist.hpp"
#include "frontend_models.hpp"

namespace ex = pare::examples;

namespace {

// Stock Python torch: the exported file, the test split read from the IDX files,
// and the logits C++ computed on the first images (to compare with).
const char* const kReloadScript = R"(import gzip, sys, torch
path, data_dir, io_path = sys.argv[1:4]
def idx(name, header):
    return torch.frombuffer(bytearray(gzip.open(data_dir + "/" + name).read()[header:]), dtype=torch.uint8)
images = idx("t10k-images-idx3-ubyte.gz", 16).view(-1, 1, 28, 28).float().div(255).sub(0.2860).div(0.3530)
labels = idx("t10k-labels-idx1-ubyte.gz", 8).long()
model = torch.jit.load(path)
with torch.no_grad():
    correct = sum(int((model(images[b:b + 1000]).argmax(1) == labels[b:b + 1000]).sum()) for b in range(0, len(images), 1000))
    first, cpp_logits = torch.load(io_path)
    diff = (model(first) - cpp_logits).abs().max().item()
print(f"torch {torch.__version__} accuracy {100.0 * correct / len(images):.2f} max_abs_diff {diff:.3g}")
)";

struct Row {
  std::string variant;
  double accuracy = 0, file_mb = 0, latency_b1 = 0, latency_b64 = 0;
  int64_t parameters = 0, nonzeros = 0;
};

std::string run_command(const std::string& command) {
  std::string output;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) throw std::runtime_error("cannot run " + command);
  char buffer[4096];
  while (std::fgets(buffer, sizeof buffer, pipe)) output += buffer;
  if (::pclose(pipe) != 0) throw std::runtime_error(command + " failed:\n" + output);
  return output;
}

// Loads `path` in stock Python torch; returns its test accuracy, after checking
// that Python's logits equal those of the file reloaded in C++.
double reload_in_python(const std::string& python, const std::string& path, const std::string& out,
                        const ex::Dataset& test) {
  auto reloaded = torch::jit::load(path);
  const auto first = test.images.slice(0, 0, 256);
  torch::NoGradGuard no_grad;
  const auto bytes = torch::pickle_save(c10::ivalue::Tuple::create({first, reloaded.forward({first}).toTensor()}));
  std::ofstream(out + "/reload_io.pt", std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
  std::ofstream(out + "/reload_in_python.py") << kReloadScript;
  const auto line = run_command(python + " " + out + "/reload_in_python.py " + path + " " + ex::fashion_mnist_dir() +
                                " " + out + "/reload_io.pt 2>&1");
  std::printf("  %s: Python %s", path.c_str(), line.c_str());
  double accuracy = 0, diff = 1;
  char version[64] = {0};
  if (std::sscanf(line.c_str(), "torch %63s accuracy %lf max_abs_diff %lf", version, &accuracy, &diff) != 3 || diff > 1e-4)
    throw std::runtime_error("Python's outputs differ from C++'s for " + path + ": " + line);
  return accuracy;
}

Row measure(const std::string& variant, const pare::Result& result, const std::string& path, double accuracy) {
  Row row{variant, accuracy};
  row.file_mb = result.report.at("export_torchscript").metrics.at("file_bytes") / 1e6;
  row.latency_b1 = ex::file_latency_ms(path, 1, 200);  // each on the file loaded afresh
  row.latency_b64 = ex::file_latency_ms(path, 64, 30);
  // Counts from the last pass that still saw float weights (quantization freezes them into the graph).
  for (const auto& entry : result.report.passes) {
    if (entry.total_parameters() == 0) continue;
    row.parameters = entry.total_parameters();
    row.nonzeros = entry.total_nonzeros();
  }
  return row;
}

// Single-image requests from `clients` threads over the test split; returns the top-1 accuracy.
double serve(pare::Runner& runner, const ex::Dataset& test, int clients) {
  std::atomic<int64_t> next{0}, correct{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&] {
      for (int64_t i = next++; i < test.size(); i = next++) {
        const auto logits = runner.run({test.images.slice(0, i, i + 1)}).toTensor();
        correct += logits.argmax(1).item<int64_t>() == test.labels[i].item<int64_t>();
      }
    });
  for (auto& t : threads) t.join();
  return 100.0 * double(correct) / double(test.size());
}

}  // namespace

int main(int argc, char** argv) try {
  int epochs = 3;
  int64_t limit = -1;
  std::string out = ".", python = PARE_PYTHON;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--epochs")) epochs = std::stoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--out")) out = argv[i + 1];
    else if (!std::strcmp(argv[i], "--python")) python = argv[i + 1];
    else if (!std::strcmp(argv[i], "--limit")) limit = std::stoll(argv[i + 1]);
  }
  torch::set_num_threads(2);
  const auto train = ex::load_fashion_mnist(true, limit), test = ex::load_fashion_mnist(false);

  // 1. torch::nn, trained in C++, traced: the parameters keep their torch::nn names.
  const auto model = ex::train_frontend_cnn(train, epochs, ex::progress_bar("training torch::nn CNN"));
  std::printf("traced:");
  for (const auto& p : model.named_parameters()) std::printf(" %s", p.name.c_str());
  std::printf("\n");

  // 2. One pipeline: prune 90% (globally), distill from the dense model, int8, export.
  pare::InputBatches calibration;
  for (int64_t b = 0; b < 9; ++b) calibration.push_back({train.images.slice(0, b * 64, (b + 1) * 64)});
  const std::vector<pare::Batch> batches = train.batches(64);
  const auto export_to = [&](const std::string& path) {
    const auto sample = std::vector<std::vector<torch::jit::IValue>>{{test.images.slice(0, 0, 64)}};
    return pare::ExportTorchScript(pare::ExportTorchScriptOptions(path).freeze(true).verify_with(sample));
  };
  const auto fp32_path = out + "/frontend_fp32.pt", small_path = out + "/frontend_pruned90_distilled_int8.pt";
  const auto fp32 = pare::Pipeline().add(export_to(fp32_path)).run(model);
  const auto small = pare::Pipeline()
                         .add(pare::L1Prune(pare::L1PruneOptions(0.9).scope(pare::Scope::Global)))
                         .add(pare::Distill(pare::DistillOptions(model, batches)
                                                .epochs(1)
                                                .temperature(1.0)
                                                .alpha(0.5)
                                                .progress(ex::progress_bar("distilling (1 epoch)"))))
                         .add(pare::QuantizeInt8(pare::QuantizeInt8Options(calibration)))
                         .add(export_to(small_path))
                         .run(model);
  std::printf("%s", small.report.to_string().c_str());

  // 3. Stock Python torch reloads both files and measures their accuracy.
  std::printf("reloading in stock Python torch (%s):\n", python.c_str());
  std::vector<Row> rows;
  rows.push_back(measure("C++ frontend CNN fp32", fp32, fp32_path, reload_in_python(python, fp32_path, out, test)));
  rows.push_back(measure("C++ frontend CNN pruned 90% + distilled + int8", small, small_path,
                         reload_in_python(python, small_path, out, test)));

  // 4. pare::Runner serves the compressed file: single-image requests from 8 threads, batched dynamically.
  pare::Runner runner(torch::jit::load(small_path), pare::RunnerOptions().max_batch(64).threads(2).warmup(3)
                                                         .example_inputs({test.images.slice(0, 0, 1)}));
  const double served = serve(runner, test, 8);
  const auto stats = runner.stats();
  std::printf("pare::Runner: %llu requests from 8 threads in %llu batches, top-1 %.2f %%, p50 %.3f ms, p99 %.3f ms, "
              "%.0f requests/s\n",
              (unsigned long long)stats.requests, (unsigned long long)stats.batches, served, stats.p50_ms,
              stats.p99_ms, stats.throughput());

  std::printf("\n%-48s %9s %10s %10s %9s %12s %12s\n", "variant", "top-1 %", "params", "nonzeros", "file MB",
              "b1 ms (p50)", "b64 ms (p50)");
  for (const auto& r : rows)
    std::printf("%-48s %9.2f %10lld %10lld %9.3f %12.3f %12.3f\n", r.variant.c_str(), r.accuracy,
                (long long)r.parameters, (long long)r.nonzeros, r.file_mb, r.latency_b1, r.latency_b64);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
