// The main job: train a small CNN on Fashion-MNIST, compress it with pare's
// passes, export each variant, reload it as a deployment would, and print one
// table: accuracy, size and latency side by side.
//
//   compress_fashion_mnist [--epochs 3] [--out DIR]

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <pare/pare.hpp>

#include "fashion_mnist.hpp"

namespace ex = pare::examples;

namespace {

struct Row {
  std::string variant;
  double accuracy = 0, file_mb = 0, latency_b1 = 0, latency_b64 = 0;
  int64_t parameters = 0, nonzeros = 0;
};

// Exports `passes` applied to `model`, reloads the file and measures it.
Row measure(const std::string& variant, const torch::jit::Module& model, pare::Pipeline pipeline,
            const std::string& path, const ex::Dataset& test) {
  const auto sample = std::vector<std::vector<torch::jit::IValue>>{{test.images.slice(0, 0, 64)}};
  pipeline.add(pare::ExportTorchScript(path, pare::ExportOptions().freeze(true).verify_with(sample)));
  const auto result = pipeline.run(model);
  const auto& exported = result.report.at("export_torchscript");
  auto reloaded = torch::jit::load(path);  // what a deployment sees: a fresh module, no pare code
  Row row{variant};
  row.accuracy = ex::accuracy(reloaded, test);
  row.file_mb = exported.metrics.at("file_bytes") / 1e6;
  row.latency_b1 = ex::median_latency_ms(reloaded, 1, 200);
  row.latency_b64 = ex::median_latency_ms(reloaded, 64, 30);
  row.parameters = exported.total_parameters();
  row.nonzeros = exported.total_nonzeros();
  return row;
}

void print_table(const std::vector<Row>& rows) {
  std::printf("\n%-28s %9s %10s %10s %9s %12s %12s\n", "variant", "top-1 %", "params", "nonzeros",
              "file MB", "b1 ms (p50)", "b64 ms (p50)");
  for (const auto& r : rows)
    std::printf("%-28s %9.2f %10lld %10lld %9.3f %12.3f %12.3f\n", r.variant.c_str(), r.accuracy,
                (long long)r.parameters, (long long)r.nonzeros, r.file_mb, r.latency_b1, r.latency_b64);
}

}  // namespace

int main(int argc, char** argv) try {
  int epochs = 3;
  std::string out = ".";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--epochs")) epochs = std::stoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--out")) out = argv[i + 1];
  }
  torch::set_num_threads(2);
  const auto train = ex::load_fashion_mnist(true), test = ex::load_fashion_mnist(false);
  std::printf("Fashion-MNIST: %lld training, %lld test images\n", (long long)train.size(), (long long)test.size());

  auto model = ex::make_fashion_cnn();
  ex::train(model, train, epochs, 1e-3, 0, ex::progress_bar("training (" + std::to_string(epochs) + " epochs)"));

  std::vector<Row> rows;
  rows.push_back(measure("fp32", model, pare::Pipeline(), out + "/fashion_fp32.pt", test));
  for (double amount : {0.5, 0.9}) {
    pare::Pipeline prune;
    prune.add(pare::L1Prune(pare::L1PruneOptions().amount(amount).scope(pare::Scope::Global)));
    const std::string name = "pruned " + std::to_string(int(amount * 100)) + "% global";
    rows.push_back(measure(name, model, prune, out + "/fashion_pruned" + std::to_string(int(amount * 100)) + ".pt", test));
  }
  print_table(rows);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
