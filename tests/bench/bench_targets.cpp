// Latency targets for channel removal: a sweep of speedup targets, each met by
// PruneChannelsOptions::target (the latency-aware allocation) and compared with
// the L1 allocation (every group loses the same share, round_to 8) measured to
// run as fast (a bisection on its amount); both measured against the unpruned
// model in one interleaved run (1 intra-op thread, medians), with the model's
// prediction error for each.
//  1. bench_channels' small ResNet, trained on Fashion-MNIST (--epochs), batch 64;
//     each pruned model recovered with --recovery epochs of Distill (top-1).
//  2. torchvision resnet18 and mobilenet_v2 (random weights, 3x64x64), at --batches.
//
//   bench_targets [--targets 1.1,1.5,2,2.5,3,4] [--train N] [--test N] [--epochs 1] [--recovery 1]
//                 [--batches 8,1] [--repeats 9] [--clock cpu|wall] [--only small_resnet|resnet18|mobilenet_v2]
//
// --clock cpu (the default) times the calling thread's CPU time (1 thread):
// on a shared machine other processes' load then neither inflates nor
// scatters the figures; --clock wall times wall-clock latency (idle hosts).

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <ATen/Parallel.h>
#include <pare/pare.hpp>

#include "fashion_mnist.hpp"

namespace ex = pare::examples;
namespace fs = std::filesystem;

namespace {

struct Args {
  std::vector<double> targets{1.1, 1.5, 2.0, 2.5, 3.0, 4.0};
  std::vector<int64_t> batches{8, 1};
  int64_t train = 60000, test = 10000;
  int epochs = 1, recovery = 1, repeats = 9;
  bool wall = false;  // wall-clock latency instead of the calling thread's CPU time
  std::string only;
};

template <class T>
std::vector<T> list_of(const std::string& text) {
  std::vector<T> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) out.push_back(T(std::stod(item)));
  return out;
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--targets") a.targets = list_of<double>(value);
    else if (flag == "--batches") a.batches = list_of<int64_t>(value);
    else if (flag == "--train") a.train = std::stoll(value);
    else if (flag == "--test") a.test = std::stoll(value);
    else if (flag == "--epochs") a.epochs = std::stoi(value);
    else if (flag == "--recovery") a.recovery = std::stoi(value);
    else if (flag == "--repeats") a.repeats = std::stoi(value);
    else if (flag == "--only") a.only = value;
    else if (flag == "--clock") a.wall = value == "wall";
    else throw std::runtime_error("unknown flag " + flag);
  }
  return a;
}

fs::path write_models() {
  const auto dir = fs::temp_directory_path() / "pare_bench_targets";
  const std::string command = PARE_PYTHON " " PARE_BENCH_SOURCE_DIR "/bench_channels_models.py " + dir.string();
  if (std::system(command.c_str()) != 0) throw std::runtime_error("failed: " + command);
  return dir;
}

std::vector<int64_t> widths_of(const pare::ChannelPruneResult& stats) {
  std::vector<int64_t> widths;
  for (const auto& g : stats.groups) widths.push_back(g.channels_after);
  return widths;
}

// The L1 (local, round_to 8) allocation that runs as fast as `speedup`, as
// measured here against the unpruned model: the goal's "at equal latency".
pare::PrunedChannels l1_at(const torch::jit::Module& model, const std::vector<int64_t>& shape,
                           const pare::Latency& settings, double speedup) {
  double low = 0.0, high = 0.95;
  auto prune = [&](double amount) {
    return pare::prune_channels(model, pare::PruneChannelsOptions(amount).round_to(8).input_shape(shape));
  };
  for (int i = 0; i < 8; ++i) {
    const double mid = 0.5 * (low + high);
    const auto t = pare::measure_seconds({model, prune(mid).module}, shape, settings);
    (t[0] / t[1] < speedup ? low : high) = mid;
  }
  return prune(high);
}

struct Recovery {
  const ex::Dataset* test = nullptr;
  std::vector<pare::Batch> batches;
  int epochs = 0;
};

double recovered_accuracy(const torch::jit::Module& teacher, const torch::jit::Module& pruned, const Recovery& r) {
  at::set_num_threads(std::max(1, int(std::thread::hardware_concurrency())));
  auto out = pare::Pipeline()
                 .add(pare::Distill(pare::DistillOptions(teacher, r.batches).epochs(r.epochs)))
                 .run(pruned)
                 .module;
  return ex::accuracy(out, *r.test);
}

std::string text(const char* format, double value) {
  char buffer[48];
  std::snprintf(buffer, sizeof buffer, format, value);
  return buffer;
}

void sweep(const std::string& name, const torch::jit::Module& model, const std::vector<int64_t>& shape, int64_t batch,
           const Args& a, const Recovery* recovery) {
  const auto cache = (fs::temp_directory_path() / "pare_bench_targets_cache").string();
  const auto settings = [&](double factor) {
    return pare::Latency::speedup(factor).batch(batch).repeats(a.repeats).cpu_time(!a.wall).cache_dir(cache);
  };
  const auto table = pare::measure_latency_table(model, shape, settings(2.0));
  const pare::LatencyModel latency(table);
  std::printf("\n%s, batch %lld, 1 thread: latency table of %zu layers, %zu groups, %s (%.1f s); unpruned %.3f ms\n",
              name.c_str(), (long long)batch, table.layers.size(), table.groups.size(),
              table.from_cache ? "from the cache" : "measured", table.measure_seconds, table.network_seconds * 1e3);
  double base_accuracy = 0;
  if (recovery) {
    auto unpruned = model;
    base_accuracy = ex::accuracy(unpruned, *recovery->test);
  }
  if (recovery) std::printf("unpruned top-1 %.2f%%\n", base_accuracy);
  std::printf("%7s | %8s %8s %8s %4s | %6s %8s %8s | %9s %9s\n", "target", "aware", "(pass)", "pred err", "try",
              "L1 amt", "L1", "pred err", "aware top1", "L1 top1");
  for (double target : a.targets) {
    std::optional<pare::PrunedChannels> aware;
    try {
      aware = pare::prune_channels(model, pare::PruneChannelsOptions(0).input_shape(shape).target(settings(target)));
    } catch (const pare::Error& e) {
      std::printf("%6.2fx | refused: %s\n", target, e.what());
      continue;
    }
    const auto& r = *aware->stats.latency;
    const double aware_predicted = latency.predict(widths_of(aware->stats));
    const auto first = pare::measure_seconds({model, aware->module}, shape, settings(2.0));
    const auto l1 = l1_at(model, shape, settings(2.0), first[0] / first[1]);
    const double l1_predicted = latency.predict(widths_of(l1.stats));
    const auto t = pare::measure_seconds({model, aware->module, l1.module}, shape, settings(2.0));
    std::string accuracy = "-", l1_accuracy = "-";
    if (recovery) {
      accuracy = text("%.2f%%", recovered_accuracy(model, aware->module, *recovery));
      l1_accuracy = text("%.2f%%", recovered_accuracy(model, l1.module, *recovery));
    }
    const double l1_amount = 1.0 - double(l1.stats.params_after) / double(l1.stats.params_before);
    std::printf("%6.2fx | %7.2fx %7.2fx %+7.1f%% %4zu | %5.0f%% %7.2fx %+7.1f%% | %9s %9s\n", target, t[0] / t[1],
                r.speedup(), (aware_predicted / t[1] - 1) * 100, r.attempts.size(), l1_amount * 100, t[0] / t[2],
                (l1_predicted / t[2] - 1) * 100, accuracy.c_str(), l1_accuracy.c_str());
    std::printf("        widths aware:");
    for (size_t g = 0; g < aware->stats.groups.size(); ++g)
      if (aware->stats.groups[g].channels_after != aware->stats.groups[g].channels_before)
        std::printf(" %s %lld->%lld", aware->stats.groups[g].name.c_str(), (long long)aware->stats.groups[g].channels_before,
                    (long long)aware->stats.groups[g].channels_after);
    std::printf("\n");
  }
}

void small_resnet(const Args& a, const fs::path& dir) {
  const auto train = ex::load_fashion_mnist(true, a.train), test = ex::load_fashion_mnist(false, a.test);
  auto model = torch::jit::load((dir / "small_resnet.pt").string());
  at::set_num_threads(std::max(1, int(std::thread::hardware_concurrency())));
  ex::train(model, train, a.epochs, 1e-3, 0, ex::progress_bar("training small ResNet"));
  model.eval();
  Recovery recovery{&test, {}, a.recovery};
  for (int64_t i = 0; i < train.size(); i += 64) {
    const auto b = train.slice(i, std::min(train.size(), i + 64));
    recovery.batches.emplace_back(b.images, b.labels);
  }
  std::printf("\nsmall ResNet: trained %d epochs on %lld images; recovery: %d epochs of Distill; test %lld images\n",
              a.epochs, (long long)train.size(), a.recovery, (long long)test.size());
  sweep("small ResNet", model, {1, 1, 28, 28}, 64, a, a.recovery > 0 ? &recovery : nullptr);
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const auto args = parse(argc, argv);
  const auto part = [&](const char* name) { return args.only.empty() || args.only == name; };
  const auto dir = write_models();
  std::printf(
      "speedup = median(unpruned) / median(pruned), interleaved in one run; 'aware' is the latency target's "
      "model, '(pass)' the speedup the pass measured itself; 'pred err' = LatencyModel / measured - 1; "
      "L1: the local L1 allocation measured as fast; clock: %s.\n",
      args.wall ? "wall" : "thread CPU time");
  if (part("small_resnet")) small_resnet(args, dir);
  for (const std::string name : {"resnet18", "mobilenet_v2"}) {
    if (!part(name.c_str())) continue;
    const auto model = torch::jit::load((dir / (name + ".pt")).string());
    for (auto batch : args.batches) sweep(name, model, {1, 3, 64, 64}, batch, args, nullptr);
  }
}
