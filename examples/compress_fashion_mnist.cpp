// The main job: train a small CNN and a small ResNet on Fashion-MNIST, compress
// them with pare's passes (pruning, channel removal, int8 quantization,
// distillation), export each variant,
// reload it as a deployment would, and print one table: accuracy, size and
// latency side by side.
//
//   compress_fashion_mnist [--epochs 3] [--resnet-epochs 1] [--out DIR]

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <pare/pare.hpp>
#include <ATen/Parallel.h>

#include "fashion_mnist.hpp"
#include "frontend_models.hpp"

namespace ex = pare::examples;

namespace {

struct Row {
  std::string variant;
  double accuracy = 0, file_mb = 0, latency_b1 = 0, latency_b64 = 0;
  int64_t parameters = 0, nonzeros = 0;
};

// Exports the model as it is at this point of a pipeline (frozen, outputs checked).
pare::ExportTorchScript export_to(const std::string& path, const ex::Dataset& test) {
  const auto sample = std::vector<std::vector<torch::jit::IValue>>{{test.images.slice(0, 0, 64)}};
  return pare::ExportTorchScript(pare::ExportTorchScriptOptions(path).freeze(true).verify_with(sample));
}

// Measures the file a pipeline's `export_to(path)` wrote, reloaded as a deployment
// sees it: a fresh module, no pare code.
Row measure_file(const std::string& variant, const pare::Report& report, const std::string& path,
                 const ex::Dataset& test) {
  auto reloaded = torch::jit::load(path);
  Row row{variant};
  row.accuracy = ex::accuracy(reloaded, test);
  row.latency_b1 = ex::file_latency_ms(path, 1, 200);  // each on the file loaded afresh
  row.latency_b64 = ex::file_latency_ms(path, 64, 30);
  // Counts from the last pass before this export that still saw float weights
  // (quantization freezes them into the graph).
  for (const auto& entry : report.passes) {
    if (entry.total_parameters() > 0) {
      row.parameters = entry.total_parameters();
      row.nonzeros = entry.total_nonzeros();
    }
    const auto written = entry.labels.find("path");
    if (entry.pass == "export_torchscript" && written != entry.labels.end() && written->second == path) {
      row.file_mb = entry.metrics.at("file_bytes") / 1e6;
      break;
    }
  }
  return row;
}

// Exports `pipeline` applied to `model`, reloads the file and measures it.
Row measure(const std::string& variant, const torch::jit::Module& model, pare::Pipeline pipeline,
            const std::string& path, const ex::Dataset& test) {
  return measure_file(variant, pipeline.add(export_to(path, test)).run(model).report, path, test);
}

void print_table(const std::vector<Row>& rows) {
  std::printf("\n%-32s %9s %10s %10s %9s %12s %12s\n", "variant", "top-1 %", "params", "nonzeros",
              "file MB", "b1 ms (p50)", "b64 ms (p50)");
  for (const auto& r : rows)
    std::printf("%-32s %9.2f %10lld %10lld %9.3f %12.3f %12.3f\n", r.variant.c_str(), r.accuracy,
                (long long)r.parameters, (long long)r.nonzeros, r.file_mb, r.latency_b1, r.latency_b64);
}

}  // namespace

int main(int argc, char** argv) try {
  int epochs = 3, resnet_epochs = 1;  // the ResNet costs ~6x the CNN's compute per image
  std::string out = ".";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--epochs")) epochs = std::stoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--resnet-epochs")) resnet_epochs = std::stoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--out")) out = argv[i + 1];
  }
  std::filesystem::create_directories(out);  // before minutes of training, not when the first file is saved
  torch::set_num_threads(2);
  const auto train = ex::load_fashion_mnist(true), test = ex::load_fashion_mnist(false);
  std::printf("Fashion-MNIST: %lld training, %lld test images\n", (long long)train.size(), (long long)test.size());

  auto model = ex::make_fashion_cnn();
  ex::train(model, train, epochs, 1e-3, 0, ex::progress_bar("training (" + std::to_string(epochs) + " epochs)"));

  auto prune = [](double amount) { return pare::L1Prune(pare::L1PruneOptions(amount).scope(pare::Scope::Global)); };
  // 512 calibration images in batches of 64, and one more batch held out to measure each layer's SQNR.
  pare::InputBatches calibration;
  for (int64_t b = 0; b < 9; ++b) calibration.push_back({train.images.slice(0, b * 64, (b + 1) * 64)});
  auto int8 = [&] {
    auto bar = ex::progress_bar("calibrating int8");
    return pare::QuantizeInt8(pare::QuantizeInt8Options(calibration).progress(
        [bar](int64_t done, int64_t total) mutable { bar(done, total, std::nan("")); }));
  };

  std::vector<Row> rows;
  rows.push_back(measure("fp32", model, pare::Pipeline(), out + "/fashion_fp32.pt", test));
  rows.push_back(measure("pruned 50% global", model, pare::Pipeline().add(prune(0.5)), out + "/fashion_pruned50.pt", test));
  rows.push_back(measure("pruned 90% global", model, pare::Pipeline().add(prune(0.9)), out + "/fashion_pruned90.pt", test));
  rows.push_back(measure("int8", model, pare::Pipeline().add(int8()), out + "/fashion_int8.pt", test));
  rows.push_back(measure("pruned 90% + int8", model, pare::Pipeline().add(prune(0.9)).add(int8()),
                         out + "/fashion_pruned90_int8.pt", test));

  // Recovery: one epoch of distillation from the dense model, pruning masks kept. A soft
  // mix (T 1, alpha 0.5) recovers more than the defaults from a teacher trained this briefly
  // (docs/distill.md has the sweep).
  const std::vector<pare::Batch> batches = train.batches(64);
  const auto distill_from = [&](const torch::jit::Module& teacher) {
    return pare::Distill(pare::DistillOptions(teacher, batches).epochs(1).temperature(1.0).alpha(0.5).progress(
        ex::progress_bar("distilling (1 epoch)")));
  };
  const auto distilled = pare::Pipeline().add(prune(0.9)).add(distill_from(model)).run(model);
  rows.push_back(measure("pruned 90% + distilled", distilled.module, pare::Pipeline(),
                         out + "/fashion_pruned90_distilled.pt", test));
  rows.push_back(measure("pruned 90% + distilled + int8", distilled.module, pare::Pipeline().add(int8()),
                         out + "/fashion_pruned90_distilled_int8.pt", test));
  // The same CNN written with the C++ frontend (torch::nn), traced (docs/trace.md), compressed the same way.
  const auto frontend = ex::train_frontend_cnn(train, epochs, ex::progress_bar("training torch::nn CNN"));
  const auto frontend_distilled =
      pare::Pipeline().add(prune(0.9)).add(distill_from(frontend)).run(frontend);
  rows.push_back(measure("C++ frontend CNN fp32", frontend, pare::Pipeline(), out + "/fashion_frontend_fp32.pt", test));
  rows.push_back(measure("C++ frontend CNN p90+dist+int8", frontend_distilled.module, pare::Pipeline().add(int8()),
                         out + "/fashion_frontend_pruned90_distilled_int8.pt", test));

  // A small ResNet (BatchNorm, residual adds), also from the C++ frontend: half of
  // every group's channels removed (docs/channels.md: ~4x fewer MACs), BatchNorm
  // statistics re-estimated, two epochs of
  // distillation from the unpruned network with the default loss (T 4, alpha 0.7;
  // one epoch left it 4.5 pt short), then int8 — one pipeline, exported after each stage.
  const auto resnet = ex::train_frontend_resnet(train, resnet_epochs, ex::progress_bar("training torch::nn ResNet"));
  rows.push_back(measure("C++ frontend ResNet fp32", resnet, pare::Pipeline(), out + "/fashion_resnet_fp32.pt", test));
  const std::string channels_path = out + "/fashion_resnet_channels50_distilled.pt",
                    channels_int8_path = out + "/fashion_resnet_channels50_distilled_int8.pt";
  // Traced, the ResNet's BatchNorm keeps fixed statistics while Distill trains: they are
  // re-estimated first for the narrower network (RecalibrateBatchNorm, 2048 training images).
  pare::InputBatches bn_batches;
  for (int64_t b = 0; b < 32; ++b) bn_batches.push_back({train.images.slice(0, b * 64, (b + 1) * 64)});
  const auto channels = pare::Pipeline()
                            .add(pare::PruneChannels(pare::PruneChannelsOptions(0.5).round_to(8).input_shape({1, 1, 28, 28})))
                            .add(pare::RecalibrateBatchNorm(pare::RecalibrateBatchNormOptions(bn_batches)))
                            .add(pare::Distill(pare::DistillOptions(resnet, batches).epochs(2).progress(
                                ex::progress_bar("recovering ResNet (2 epochs)"))))
                            .add(export_to(channels_path, test))
                            .add(int8())
                            .add(export_to(channels_int8_path, test))
                            .run(resnet);
  rows.push_back(measure_file("ResNet channels 50% + distilled", channels.report, channels_path, test));
  rows.push_back(measure_file("ResNet ch. 50% + dist + int8", channels.report, channels_int8_path, test));
  print_table(rows);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
