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
  double seconds = 0, sqnr = NAN, layers_int8 = 0, conv_add_fused = 0;
  std::string float_ops, islands_kept_float;
};

PareRun quantize_with_pare(const std::string& dir, const std::string& name, const std::string& engine,
                           const c10::Dict<std::string, torch::Tensor>& data) {
  const std::string key = name == "small_resnet" ? "mnist" : "images";
  pare::InputBatches batches;
  const auto calibration = data.at(key + "_calibration");
  for (int64_t b = 0; b < calibration.size(0); ++b) batches.push_back({calibration[b]});
  batches.push_back({data.at(key + "_held_out")});  // the last batch is held out for pare's own SQNR
  const auto start = std::chrono::steady_clock::now();
  const auto result = pare::Pipeline()
                          .add(pare::QuantizeInt8(pare::QuantizeInt8Options(batches).engine(engine).fold_residual_adds(true)))
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
    std::printf("%-13s %4.0f layers %3.0f folded %6.1f s  float ops: %s; islands kept float: %s\n", name.c_str(),
                r.layers_int8, r.conv_add_fused, r.seconds, r.float_ops.c_str(), r.islands_kept_float.c_str());
  }
}
