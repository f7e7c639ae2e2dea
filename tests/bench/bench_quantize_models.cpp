// bench_quantize's model table: torchvision resnet18 / mobilenet_v2 /
// densenet121 (random weights, settled BatchNorm, 3x64x64) and a small ResNet
// trained on Fashion-MNIST, quantized by pare here and by PyTorch's FX
// graph-mode PTQ in /usr/bin/python3 (bench_quantize_models.py) on the same
// calibration batches; the script also times fp32, pare's file and FX's
// result in turns in one process.

#include "bench_quantize_models.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <stdexcept>

#include <nlohmann/json.hpp>
#include <pare/pare.hpp>
#include <pare/quantize/quantize.hpp>

#include "fashion_mnist.hpp"

namespace ex = pare::examples;

namespace {

constexpr int64_t kCalibrationBatches = 8;

std::string script() { return std::string(PARE_BENCH_SOURCE_DIR) + "/bench_quantize_models.py"; }

void run_or_throw(const std::string& command) {
  if (std::system(command.c_str()) != 0) throw std::runtime_error("failed: " + command);
}

// 8 calibration batches and one held out, for the torchvision models (random
// 8x3x64x64 images) and for the small ResNet (Fashion-MNIST training images).
c10::Dict<std::string, torch::Tensor> make_data() {
  torch::manual_seed(1);
  c10::Dict<std::string, torch::Tensor> data;
  data.insert("images_calibration", torch::randn({kCalibrationBatches, 8, 3, 64, 64}));
  data.insert("images_held_out", torch::randn({8, 3, 64, 64}));
  const auto train = ex::load_fashion_mnist(true, (kCalibrationBatches + 1) * 64);
  data.insert("mnist_calibration", train.images.slice(0, 0, kCalibrationBatches * 64).reshape({kCalibrationBatches, 64, 1, 28, 28}));
  data.insert("mnist_held_out", train.images.slice(0, kCalibrationBatches * 64));
  return data;
}

struct PareRun {
  double seconds = 0, sqnr = NAN, layers_int8 = 0, conv_add_fused = 0, islands = 0, fallbacks = 0;
  std::string float_ops, islands_kept_float, file_check;
};

double metric_or_nan(const pare::PassReport& entry, const std::string& key) {
  const auto it = entry.metrics.find(key);
  return it == entry.metrics.end() ? NAN : it->second;
}

PareRun quantize_with_pare(const std::string& dir, const std::string& name, const std::string& engine,
                           const c10::Dict<std::string, torch::Tensor>& data) {
  const std::string key = name == "small_resnet" ? "mnist" : "images";
  pare::InputBatches batches;
  const auto calibration = data.at(key + "_calibration");
  for (int64_t b = 0; b < calibration.size(0); ++b) batches.push_back({calibration[b]});
  batches.push_back({data.at(key + "_held_out")});  // the last batch is held out for pare's own SQNR
  const auto start = std::chrono::steady_clock::now();
  const auto result = pare::Pipeline()
                          .add(pare::QuantizeInt8(pare::QuantizeInt8Options(batches).engine(engine).fold_residual_adds(true)
                                                      .batch_sizes({1, 8})))  // the sizes the table times
                          .add(pare::ExportTorchScript(pare::ExportTorchScriptOptions(dir + "/" + name + "_pare.pt")))
                          .run(torch::jit::load(dir + "/" + name + "_fp32.pt"));
  PareRun run;
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto& entry = result.report.at("quantize_int8");
  run.sqnr = entry.metrics.at("output_sqnr_db");
  run.layers_int8 = entry.metrics.at("layers_int8");
  run.conv_add_fused = entry.metrics.at("conv_add_fused");
  run.float_ops = entry.labels.count("float_ops") ? entry.labels.at("float_ops") : "";
  run.islands_kept_float = entry.labels.count("islands_kept_float") ? entry.labels.at("islands_kept_float") : "";
  run.islands = metric_or_nan(entry, "islands_timed");
  run.fallbacks = metric_or_nan(entry, "file_fallbacks");
  char check[160];
  std::snprintf(check, sizeof check, "pass's file check fp32/int8: b1 %.2f / %.2f ms, b8 %.2f / %.2f ms",
                metric_or_nan(entry, "file_fp32_ms_b1"), metric_or_nan(entry, "file_int8_ms_b1"),
                metric_or_nan(entry, "file_fp32_ms_b8"), metric_or_nan(entry, "file_int8_ms_b8"));
  run.file_check = check;
  return run;
}

std::string cell(const nlohmann::json& m, const std::string& key, const char* format) {
  if (!m.contains(key)) return "-";
  char out[32];
  std::snprintf(out, sizeof out, format, m.at(key).get<double>());
  return out;
}

}  // namespace

void print_model_table(const std::string& dir, const std::vector<std::string>& models, const std::string& engine,
                       int threads, int rounds) {
  std::string names;
  for (const auto& m : models) names += " " + m;
  std::fprintf(stderr, "preparing%s (scripted, settled BatchNorm; small_resnet is trained once and cached)...\n",
               names.c_str());
  run_or_throw(PARE_PYTHON " " + script() + " prepare " + dir + names);
  const auto data = make_data();
  const auto bytes = torch::pickle_save(data);
  std::ofstream(dir + "/models_data.pt", std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));

  std::map<std::string, PareRun> pare_runs;
  for (const auto& name : models) {
    std::fprintf(stderr, "pare int8: %s\n", name.c_str());
    pare_runs[name] = quantize_with_pare(dir, name, engine, data);
  }
  std::fprintf(stderr, "FX PTQ and timing in " PARE_PYTHON "...\n");
  const std::string json_path = dir + "/models_measured.json";
  run_or_throw(PARE_PYTHON " " + script() + " measure " + dir + " " + engine + " " + std::to_string(threads) + " " +
               std::to_string(rounds) + names + " > " + json_path);
  const auto measured = nlohmann::json::parse(std::ifstream(json_path));

  std::printf("\ntorchvision models (random weights, settled BatchNorm) and a Fashion-MNIST ResNet; engine %s, "
              "%d thread(s), %lld calibration batches; medians of fp32 / pare int8 / FX int8 taking turns in one "
              PARE_PYTHON " process (torch %s)\n",
              engine.c_str(), threads, (long long)kCalibrationBatches,
              measured.at("torch").get<std::string>().c_str());
  std::printf("%-13s %8s %8s %8s %8s %8s %8s %9s %9s %8s %8s %8s\n", "model", "fp32 b1", "pare b1", "FX b1", "fp32 b8",
              "pare b8", "FX b8", "pare dB", "FX dB", "FX/pare1", "FX/pare8", "fp32/pare8");
  for (const auto& name : models) {
    const auto& m = measured.at(name);
    const auto ratio = [&](const std::string& a, const std::string& b) {
      return m.contains(a) && m.contains(b) ? m.at(a).get<double>() / m.at(b).get<double>() : NAN;
    };
    std::printf("%-13s %8s %8s %8s %8s %8s %8s %9s %9s %7.2fx %7.2fx %9.2fx\n", name.c_str(),
                cell(m, "fp32_b1_ms", "%.2f").c_str(), cell(m, "pare_b1_ms", "%.2f").c_str(),
                cell(m, "fx_b1_ms", "%.2f").c_str(), cell(m, "fp32_b8_ms", "%.2f").c_str(),
                cell(m, "pare_b8_ms", "%.2f").c_str(), cell(m, "fx_b8_ms", "%.2f").c_str(),
                cell(m, "pare_sqnr_db", "%.1f").c_str(), cell(m, "fx_sqnr_db", "%.1f").c_str(),
                ratio("fx_b1_ms", "pare_b1_ms"), ratio("fx_b8_ms", "pare_b8_ms"), ratio("fp32_b8_ms", "pare_b8_ms"));
    if (m.contains("fx_error")) std::printf("  FX could not quantize %s: %s\n", name.c_str(), m.at("fx_error").get<std::string>().c_str());
  }
  std::printf("(ms: median forward time; dB: output SQNR against fp32 on a held-out batch; x: the first runtime's "
              "median / the second's, > 1 means pare is faster)\n");
  if (measured.contains("small_resnet")) {
    const auto& m = measured.at("small_resnet");
    const double fp32 = m.at("fp32_top1").get<double>();
    std::printf("\nsmall_resnet on the Fashion-MNIST test split (10k): top-1 fp32 %.2f%%, pare int8 %.2f%% (%+.2f pt)",
                fp32, m.at("pare_top1").get<double>(), m.at("pare_top1").get<double>() - fp32);
    if (m.contains("fx_top1"))
      std::printf(", FX int8 %.2f%% (%+.2f pt)", m.at("fx_top1").get<double>(), m.at("fx_top1").get<double>() - fp32);
    std::printf("\n");
  }
  std::printf("\npare per model: int8 layers, residual adds folded into their conv, time to quantize (incl. island "
              "timing and export), float ops left:\n");
  for (const auto& name : models) {
    const auto& r = pare_runs[name];
    std::printf("%-13s %4.0f layers %3.0f folded %6.1f s  float ops: %s; islands kept float (of %.0f, %.0f file "
                "fallback rounds): %s; %s\n", name.c_str(), r.layers_int8, r.conv_add_fused, r.seconds,
                r.float_ops.c_str(), r.islands, r.fallbacks, r.islands_kept_float.c_str(), r.file_check.c_str());
  }
}

namespace {

// The Fashion-MNIST CNN with outlier channels in its first layer (x300,
// compensated in the second: the float model is unchanged), as in
// tests/test_quantize_accuracy.cpp.
torch::jit::Module with_outlier_channels(const torch::jit::Module& model, double scale) {
  auto copy = model.clone();
  torch::NoGradGuard no_grad;
  auto conv1 = copy.attr("conv1").toModule(), conv2 = copy.attr("conv2").toModule();
  for (int64_t c : {0, 1, 2, 3}) {
    conv1.attr("weight").toTensor()[c].mul_(scale);
    conv1.attr("bias").toTensor()[c].mul_(scale);
    conv2.attr("weight").toTensor().select(1, c).div_(scale);
  }
  return copy;
}

}  // namespace

void print_max_drop_table(const std::string& dir, int epochs) {
  const auto all = ex::load_fashion_mnist(true, 12000);
  const auto train = all.slice(0, 10000), validation = all.slice(10000, 12000);
  auto test = ex::load_fashion_mnist(false);
  const std::string path = dir + "/bq_outlier_cnn_e" + std::to_string(epochs) + ".pt";
  torch::jit::Module trained;
  try {
    trained = torch::jit::load(path);
  } catch (const std::exception&) {
    trained = ex::make_fashion_cnn({16, 32, 64}, 0);
    ex::train(trained, train, epochs, 1e-3, 0, ex::progress_bar("training the CNN"));
    trained.save(path);
  }
  auto model = with_outlier_channels(trained, 300.0);
  pare::InputBatches calibration;
  for (int64_t b = 0; b < kCalibrationBatches + 1; ++b) calibration.push_back({train.images.slice(0, b * 64, (b + 1) * 64)});
  std::vector<pare::LabelledBatch> evaluation;  // held-out training images: the test split stays unseen
  for (const auto& [images, labels] : validation.batches(500)) evaluation.push_back({{images}, labels});
  const double fp32 = ex::accuracy(model, test), trained_fp32 = ex::accuracy(trained, test);
  std::printf("\nmax_drop: the Fashion-MNIST CNN (%d epochs on 10k images) with conv1's channels 0-3 scaled x300 "
              "and conv2 compensating; evaluate() on 2000 held-out training images, top-1 on the 10k test split "
              "(fp32 %.2f%%; %.2f%% before the rescaling)\n", epochs, fp32, trained_fp32);
  std::printf("%-22s %9s %9s %9s %9s %6s %8s  %s\n", "pare int8", "val fp32", "val int8", "test top1", "vs fp32",
              "int8 L", "time s", "layers in float (most sensitive first)");
  for (const std::optional<double>& budget : {std::optional<double>(), std::optional<double>(1.0),
                                              std::optional<double>(0.3)}) {
    auto options = pare::QuantizeInt8Options(calibration).evaluate(evaluation).never_slower(false);
    if (budget) options.max_drop(*budget);
    const auto start = std::chrono::steady_clock::now();
    auto result = pare::Pipeline().add(pare::QuantizeInt8(options)).run(model);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const auto& entry = result.report.at("quantize_int8");
    const double top1 = ex::accuracy(result.module, test);
    const std::string label = budget ? "max_drop(" + std::to_string(*budget).substr(0, 3) + ")" : "plain (no budget)";
    std::printf("%-22s %8.2f%% %8.2f%% %8.2f%% %+8.2f %6.0f %8.1f  %s\n", label.c_str(),
                entry.metrics.at("accuracy_fp32"), entry.metrics.at("accuracy_int8"), top1, top1 - fp32,
                entry.metrics.at("layers_int8"), seconds, entry.labels.at("accuracy_fallback").c_str());
  }
}

