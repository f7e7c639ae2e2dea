// Channel removal on a small ResNet trained on Fashion-MNIST, and on torchvision's resnet18.
//  1. the ResNet (BatchNorm, residual blocks, written by bench_channels_models.py) is
//     trained for --epochs, then channels are removed until MACs drop 2x and 4x,
//     each followed by --recovery epochs of Distill against the unpruned model;
//     the 4x model is also quantized to int8, and a second 2x model narrows
//     only the first two stages (the allocation bench_channels_allocations.py
//     finds fastest per MAC). Accuracy, MACs, file size and
//     1-thread latency at batch 1 and 64 against the fp32 original, one run;
//     then the fp32 models again exported with channels_last (NHWC weights).
//  2. resnet18 (random weights, 3x64x64) at 50% channels: MACs, params, file
//     size and 1-thread batch-8 latency before/after.
//  3. the channels-last export on unpruned resnet18, mobilenet_v2, densenet121:
//     batch 1 and 8 latency, plain and NHWC.
//  4. a 3x3 convolution's GMAC/s at batch 64 by width and memory order: why
//     latency does not fall in step with MACs.
//
//   bench_channels [--train N] [--test N] [--epochs 2] [--recovery 2] [--seconds 2] [--round-to 8]
//                  [--scope local|global] [--engine NAME] [--only resnet18|small_resnet|layouts|widths]
//
// The int8 model is quantized for --engine (default: the best this LibTorch has,
// x86 on 2.x) with residual adds folded into their convolutions where the engine
// can (onednn on 2.x), and timed with the process's quantized engine set to it.

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <ATen/Parallel.h>
#include <pare/pare.hpp>
#include <pare/tools/bench.hpp>

#include "fashion_mnist.hpp"

namespace ex = pare::examples;
namespace fs = std::filesystem;

namespace {

struct Args {
  int64_t train = 60000, test = 10000;
  int epochs = 2, recovery = 2;
  int64_t round_to = 8;
  double seconds = 2.0;
  std::string only;  // resnet18, small_resnet, layouts or widths: that part alone
  std::string engine;
  pare::Scope scope = pare::Scope::Local;
};



Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--train") a.train = std::stoll(value);
    else if (flag == "--test") a.test = std::stoll(value);
    else if (flag == "--epochs") a.epochs = std::stoi(value);
    else if (flag == "--recovery") a.recovery = std::stoi(value);
    else if (flag == "--seconds") a.seconds = std::stod(value);
    else if (flag == "--round-to") a.round_to = std::stoll(value);
    else if (flag == "--only") a.only = value;
    else if (flag == "--engine") a.engine = value;
    else if (flag == "--scope") a.scope = pare::parse_scope(value);
    else throw std::runtime_error("unknown flag " + flag);
  }
  if (a.engine.empty()) a.engine = pare::available_quantized_engines().at(0);
  return a;
}

fs::path write_models() {
  const auto dir = fs::temp_directory_path() / "pare_bench_channels";
  const std::string command = PARE_PYTHON " " PARE_BENCH_SOURCE_DIR "/bench_channels_models.py " + dir.string();
  if (std::system(command.c_str()) != 0) throw std::runtime_error("failed: " + command);
  return dir;
}

pare::PruneChannelsOptions with_amount(const pare::PruneChannelsOptions& o, double amount) {
  return pare::PruneChannelsOptions(amount)
      .scope(o.scope())
      .round_to(o.round_to())
      .include(o.include())
      .exclude(o.exclude())
      .input_shape(o.input_shape());
}

// Each group's kept channels, "name before->after", on one line.
std::string kept_widths(const torch::jit::Module& model, const pare::PruneChannelsOptions& options) {
  std::string line;
  for (const auto& g : pare::prune_channels(model, options).stats.groups)
    line += " " + g.name + " " + std::to_string(g.channels_before) + "->" + std::to_string(g.channels_after);
  return line;
}

// The smallest channel fraction whose pruned model has at most 1/factor of the MACs.
double amount_for(const torch::jit::Module& model, double factor, const pare::PruneChannelsOptions& base) {
  double low = 0.0, high = 0.95;
  for (int i = 0; i < 10; ++i) {
    const double mid = 0.5 * (low + high);
    const auto stats = pare::prune_channels(model, with_amount(base, mid)).stats;
    (double(stats.macs_before) / double(stats.macs_after) >= factor ? high : low) = mid;
  }
  return high;
}

struct Variant {
  std::string name;
  torch::jit::Module module;
  std::optional<torch::jit::Module> nhwc;  // the same export with ExportTorchScriptOptions::channels_last
  double accuracy = 0;
  bool has_accuracy = false;
  int64_t macs = 0, params = 0, file_bytes = 0;
};

int64_t params_of(const torch::jit::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

// Runs `pipeline` plus a frozen export (as users ship it; frozen graphs run
// faster), counts MACs and parameters before freezing and measures the file.
// `unfrozen` is the pipeline's module before the export, for later pipelines.
Variant finish(const std::string& name, pare::Pipeline pipeline, const torch::jit::Module& model,
               const ex::Dataset& test, const std::vector<int64_t>& shape, torch::jit::Module* unfrozen = nullptr) {
  const auto path = (fs::temp_directory_path() / ("pare_bench_channels_" + name + ".pt")).string();
  const bool int8 = name.find("int8") != std::string::npos;
  if (!pipeline.passes().empty()) {
    auto before = pipeline.run(model).module;
    if (unfrozen) *unfrozen = before;
    Variant v = finish(name, pare::Pipeline(), before, test, shape);
    if (int8) v.macs = pare::count_macs(model, shape);  // int8 ops are not conv/linear calls: the source's count
    return v;
  }
  pipeline.add(pare::ExportTorchScript(pare::ExportTorchScriptOptions(path).freeze(!int8)));
  Variant v{name, pipeline.run(model).module, std::nullopt};
  v.has_accuracy = test.size() > 0;
  v.accuracy = v.has_accuracy ? ex::accuracy(v.module, test) : 0.0;
  v.macs = int8 ? 0 : pare::count_macs(model, shape);
  v.params = int8 ? 0 : params_of(model);  // int8 weights are packed, not parameters
  v.file_bytes = int64_t(fs::file_size(path));
  v.module = torch::jit::load(path);
  if (!int8) {
    auto sample = shape;
    sample[0] = 2;
    const auto nhwc_path = (fs::temp_directory_path() / ("pare_bench_channels_" + name + "_nhwc.pt")).string();
    const auto result = pare::Pipeline()
                            .add(pare::ExportTorchScript(pare::ExportTorchScriptOptions(nhwc_path).freeze(true).channels_last(true).verify_with(
                                {{torch::randn(sample)}})))
                            .run(model);
    if (result.report.at("export_torchscript").labels.at("channels_last") == "true") v.nhwc = torch::jit::load(nhwc_path);
  }
  return v;
}

// The variants exported in channels-last order, named "<name> NHWC".
std::vector<Variant> nhwc_variants(const std::vector<Variant>& variants) {
  std::vector<Variant> out;
  for (const auto& v : variants)
    if (v.nhwc) out.push_back(Variant{v.name + " NHWC", *v.nhwc, std::nullopt});
  return out;
}

void print_variants(const std::vector<Variant>& variants) {
  const auto& base = variants.front();
  std::printf("%-18s %9s %12s %8s %11s %8s %10s %8s\n", "model", "accuracy", "MACs", "ratio", "params",
              "ratio", "file", "ratio");
  auto cell = [](bool known, const char* format, double value) {  // "-" where a figure does not apply
    char text[32];
    std::snprintf(text, sizeof text, format, value);
    return known ? std::string(text) : std::string("-");
  };
  for (const auto& v : variants) {
    std::printf("%-18s %9s %12lld %7.2fx %11s %8s %10lld %7.3fx\n", v.name.c_str(),
                cell(v.has_accuracy, "%.2f%%", v.accuracy).c_str(), (long long)v.macs,
                double(base.macs) / double(v.macs), cell(v.params > 0, "%.0f", double(v.params)).c_str(),
                cell(v.params > 0, "%.2fx", double(base.params) / double(std::max<int64_t>(v.params, 1))).c_str(),
                (long long)v.file_bytes, double(v.file_bytes) / double(base.file_bytes));
  }
}

std::vector<pare::BenchRow> print_latency(const std::vector<Variant>& variants, const std::vector<int64_t>& shape,
                                          std::vector<int64_t> batches, double seconds) {
  std::vector<std::pair<std::string, torch::jit::Module>> models;
  for (const auto& v : variants) models.emplace_back(v.name, v.module);
  const auto rows = pare::benchmark_models(
      models, pare::BenchOptions().inputs({shape}).batches(std::move(batches)).threads({1}).duration(std::chrono::milliseconds(std::llround(seconds * 1000))));
  std::printf("%s", pare::bench_table(rows).c_str());
  return rows;
}

// Both tables start with the unpruned model, one row per batch size: what the
// NHWC export alone gains on it.
void print_layout_gain(const std::vector<pare::BenchRow>& plain, const std::vector<pare::BenchRow>& nhwc, size_t batches) {
  std::printf("%s NHWC vs %s, p50:", plain.front().model.c_str(), plain.front().model.c_str());
  for (size_t i = 0; i < batches; ++i)
    std::printf(" batch %lld %.2fx", (long long)plain[i].batch, plain[i].p50_ms / nhwc[i].p50_ms);
  std::printf("\n");
}

// Why throughput does not fall in step with MACs: a 3x3 convolution's
// multiply-accumulates per second at batch 64 by width (in = out channels),
// at the small ResNet's first two feature map sizes, in both memory orders.
void print_width_efficiency() {
  at::set_num_threads(1);
  torch::NoGradGuard no_grad;
  std::printf("\n3x3 convolution, batch 64, 1 thread: GMAC/s by width (NCHW / NHWC weights and input)\n%-7s", "size");
  const std::vector<int64_t> widths{8, 16, 24, 32, 40, 48, 64};
  for (auto w : widths) std::printf(" %13lld", (long long)w);
  for (int64_t size : {28, 14}) {
    std::printf("\n%2lldx%-4lld", (long long)size, (long long)size);
    for (auto w : widths) {
      double gmacs[2];
      for (int nhwc = 0; nhwc < 2; ++nhwc) {
        const auto order = nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
        const auto x = torch::randn({64, w, size, size}).contiguous(order);
        const auto weight = torch::randn({w, w, 3, 3}).contiguous(order);
        const double ms = ex::median_call_ms(15, [&] { torch::conv2d(x, weight, {}, 1, 1); });
        gmacs[nhwc] = double(64 * size * size * w * w * 9) / ms / 1e6;
      }
      std::printf(" %6.1f / %4.1f", gmacs[0], gmacs[1]);
    }
  }
  std::printf("\n");
}

void small_resnet(const Args& a, const fs::path& dir) {
  const auto train = ex::load_fashion_mnist(true, a.train), test = ex::load_fashion_mnist(false, a.test);
  auto model = torch::jit::load((dir / "small_resnet.pt").string());
  at::set_num_threads(std::max(1, int(std::thread::hardware_concurrency())));
  ex::train(model, train, a.epochs, 1e-3, 0, ex::progress_bar("training small ResNet"));
  std::vector<pare::Batch> batches;
  pare::InputBatches calibration;
  for (int64_t i = 0; i < train.size(); i += 64) {
    const auto b = train.slice(i, std::min(train.size(), i + 64));
    batches.emplace_back(b.images, b.labels);
    if (calibration.size() < 16) calibration.push_back({b.images});
  }
  const std::vector<int64_t> shape{1, 1, 28, 28};
  const auto base = pare::PruneChannelsOptions(0).scope(a.scope).round_to(a.round_to).input_shape(shape);
  auto distill = [&](const std::string& label) {
    return pare::Distill(pare::DistillOptions(model, batches).epochs(a.recovery).progress(
        ex::progress_bar("recovery " + label)));
  };
  std::vector<Variant> variants{finish("fp32", pare::Pipeline(), model, test, shape)};
  std::map<double, double> amounts;
  torch::jit::Module recovered;
  for (double factor : {2.0, 4.0}) {
    amounts[factor] = amount_for(model, factor, base);
    const std::string name = "channels " + std::to_string(int(factor)) + "x";
    const auto options = with_amount(base, amounts[factor]);
    std::printf("%s:%s\n", name.c_str(), kept_widths(model, options).c_str());
    variants.push_back(finish(name, pare::Pipeline().add(pare::PruneChannels(options)).add(distill(name)), model, test,
                              shape, &recovered));
  }
  pare::set_quantized_engine(a.engine);  // the folded convolutions run only under the engine they were packed for
  variants.push_back(finish("4x + int8",
                            pare::Pipeline().add(pare::QuantizeInt8(
                                pare::QuantizeInt8Options(calibration).engine(a.engine).fold_residual_adds(true))),
                            recovered, test, shape));
  // bench_channels_allocations.py: at 2x fewer MACs, narrowing the first two
  // stages and keeping the last one whole (widths that are multiples of 16)
  // runs faster per MAC than the same cut everywhere.
  const auto early = pare::PruneChannelsOptions(base).exclude({"layers.4.*", "layers.5.*"});
  const double early_amount = amount_for(model, 2.0, early);
  const auto early_options = with_amount(early, early_amount);
  std::printf("2x, stage 3 whole:%s\n", kept_widths(model, early_options).c_str());
  variants.push_back(finish("2x, stage 3 whole",
                            pare::Pipeline().add(pare::PruneChannels(early_options)).add(distill("2x, stage 3 whole")),
                            model, test, shape));
  std::printf("\nsmall ResNet on Fashion-MNIST: trained %d epochs on %lld images, recovery %d epochs of Distill, "
              "test %lld images; channel amounts: 2x %.3f, 4x %.3f, 2x with stage 3 whole %.3f (%s, round_to %lld); int8 engine %s\n",
              a.epochs, (long long)train.size(), a.recovery, (long long)test.size(), amounts[2.0], amounts[4.0], early_amount,
              pare::to_string(a.scope).c_str(), (long long)a.round_to, a.engine.c_str());
  print_variants(variants);
  at::set_num_threads(1);
  std::printf("\nlatency, 1 intra-op thread, medians (ratios against fp32):\n");
  const auto plain = print_latency(variants, shape, {1, 64}, a.seconds);
  std::printf("\nthe same exported with channels_last (NHWC weights), ratios against fp32 NHWC:\n");
  print_layout_gain(plain, print_latency(nhwc_variants(variants), shape, {1, 64}, a.seconds), 2);
}

void resnet18(const Args& a, const fs::path& dir) {
  const auto model = torch::jit::load((dir / "resnet18.pt").string());
  const std::vector<int64_t> shape{1, 3, 64, 64};
  const ex::Dataset none{torch::zeros({0, 3, 64, 64}), torch::zeros({0}, torch::kLong)};
  std::vector<Variant> variants{finish("resnet18", pare::Pipeline(), model, none, shape)};
  variants.push_back(finish("resnet18 50%", pare::Pipeline().add(pare::PruneChannels(pare::PruneChannelsOptions(0.5).input_shape(shape))),
                            model, none, shape));
  std::printf("\ntorchvision resnet18 (random weights), 3x64x64, 50%% of every group's channels removed:\n");
  print_variants(variants);
  at::set_num_threads(1);
  std::printf("\nlatency at batch 8, 1 intra-op thread, medians:\n");
  const auto plain = print_latency(variants, {8, 3, 64, 64}, {8}, a.seconds);
  std::printf("\nthe same exported with channels_last (NHWC weights), ratios against resnet18 NHWC:\n");
  print_layout_gain(plain, print_latency(nhwc_variants(variants), {8, 3, 64, 64}, {8}, a.seconds), 1);
}

// The channels-last export on the unpruned torchvision architectures (residual
// adds, depthwise convolutions, concatenation): each model plain, then NHWC.
void layouts(const Args& a, const fs::path& dir) {
  const std::vector<int64_t> shape{1, 3, 64, 64};
  const ex::Dataset none{torch::zeros({0, 3, 64, 64}), torch::zeros({0}, torch::kLong)};
  std::printf("\ntorchvision models (random weights), 3x64x64, exported plain and with channels_last, 1 thread:\n");
  for (const std::string name : {"resnet18", "mobilenet_v2", "densenet121"}) {
    const auto v = finish(name, pare::Pipeline(), torch::jit::load((dir / (name + ".pt")).string()), none, shape);
    if (!v.nhwc) std::printf("%s: the channels-last export kept the plain order (see its report)\n", name.c_str());
    else print_latency({v, Variant{name + " NHWC", *v.nhwc, std::nullopt}}, shape, {1, 8}, a.seconds);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // tables appear as they are measured
  const auto args = parse(argc, argv);
  const auto part = [&](const char* name) { return args.only.empty() || args.only == name; };
  const auto dir = write_models();
  if (part("resnet18")) resnet18(args, dir);
  if (part("small_resnet")) small_resnet(args, dir);
  if (part("layouts")) layouts(args, dir);
  if (part("widths")) print_width_efficiency();
}
