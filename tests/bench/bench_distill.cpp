// Distillation on Fashion-MNIST (full training split, test split for accuracy):
//  1. the example CNN trained `--epochs`, pruned to 90% global L1 sparsity, then
//     no recovery vs 1 epoch of cross-entropy vs 1 epoch of distillation, masks kept;
//  2. a quarter-size student trained from scratch for `--epochs` with cross-entropy
//     only vs distillation, over `--seeds` seeds: mean and spread of each.
// Cross-entropy runs through the same Distill pass with alpha = 0, so the two
// arms differ only in the loss (same optimizer, batches, order and masks).
//
//   bench_distill [--epochs 3] [--seeds 3] [--lr 1e-3] [--temperature 4] [--alpha 0.7]
//                 [--student-lr 1e-3] [--student-temperature 4] [--student-alpha 0.7]
//                 [--limit N] [--teacher FILE] [--only pruned|student|sweep] [--sweep T:alpha:lr,...]
// --sweep adds one distillation row per setting to the first table (for tuning).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <pare/pare.hpp>
#include <ATen/Parallel.h>

#include "fashion_mnist.hpp"

namespace ex = pare::examples;

namespace {

struct Args {
  int epochs = 3, seeds = 3;
  int64_t limit = -1;
  double lr = 1e-3, temperature = 4, alpha = 0.7;
  double student_lr = 1e-3, student_temperature = 4, student_alpha = 0.7;
  std::string teacher_file, only, sweep;
};

Args parse(int argc, char** argv) {
  Args a;
  std::map<std::string, double*> reals{{"--lr", &a.lr}, {"--temperature", &a.temperature}, {"--alpha", &a.alpha},
                                       {"--student-lr", &a.student_lr},
                                       {"--student-temperature", &a.student_temperature},
                                       {"--student-alpha", &a.student_alpha}};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (reals.count(flag)) *reals[flag] = std::stod(value);
    else if (flag == "--epochs") a.epochs = std::stoi(value);
    else if (flag == "--seeds") a.seeds = std::stoi(value);
    else if (flag == "--limit") a.limit = std::stoll(value);
    else if (flag == "--teacher") a.teacher_file = value;
    else if (flag == "--only") a.only = value;
    else if (flag == "--sweep") a.sweep = value;
    else throw std::runtime_error("unknown flag " + flag);
  }
  return a;
}

// Batches of 64 in a fresh order every epoch, streamed: nothing is materialised up front.
pare::TrainingData shuffled_batches(const ex::Dataset& data, uint64_t seed) {
  const auto open = [&data, seed](int64_t epoch) -> pare::TrainingData::Reader {
    torch::manual_seed(seed * 1000 + uint64_t(epoch));
    return [&data, order = torch::randperm(data.size(), torch::kLong), begin = int64_t(0)]() mutable
           -> std::optional<pare::Batch> {
      if (begin >= data.size()) return std::nullopt;
      const auto index = order.slice(0, begin, std::min(data.size(), begin + 64));
      begin += 64;
      return pare::Batch{data.images.index_select(0, index), data.labels.index_select(0, index)};
    };
  };
  return pare::TrainingData(open, (data.size() + 63) / 64);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

torch::jit::Module trained_teacher(const Args& args, const ex::Dataset& train) {
  if (!args.teacher_file.empty() && std::ifstream(args.teacher_file).good()) return torch::jit::load(args.teacher_file);
  auto model = ex::make_fashion_cnn();
  ex::train(model, train, args.epochs, 1e-3, 0, ex::progress_bar("teacher (" + std::to_string(args.epochs) + " epochs)"));
  if (!args.teacher_file.empty()) pare::save_atomically(model, args.teacher_file);
  return model;
}

struct Run {
  double accuracy = 0, seconds = 0;
  int64_t nonzeros = 0, parameters = 0;
};

Run recover(const torch::jit::Module& teacher, const ex::Dataset& train, const ex::Dataset& test, double alpha,
            const Args& args, const std::string& label) {
  pare::Pipeline pipeline;
  pipeline.add(pare::L1Prune(pare::L1PruneOptions(0.9).scope(pare::Scope::Global)));
  if (alpha >= 0)
    pipeline.add(pare::Distill(pare::DistillOptions(teacher, shuffled_batches(train, 7))
                                   .epochs(1)
                                   .lr(args.lr)
                                   .temperature(args.temperature)
                                   .alpha(alpha)
                                   .progress(ex::progress_bar(label))));
  const auto start = std::chrono::steady_clock::now();
  auto result = pipeline.run(teacher);
  Run run;
  run.seconds = seconds_since(start);
  run.accuracy = ex::accuracy(result.module, test);
  const auto& last = result.report.passes.back();
  run.nonzeros = last.total_nonzeros();
  run.parameters = last.total_parameters();
  return run;
}

void pruned_table(const torch::jit::Module& teacher, const ex::Dataset& train, const ex::Dataset& test,
                  const Args& args) {
  auto dense = teacher.clone();
  const double teacher_accuracy = ex::accuracy(dense, test);
  const bool sweep_only = args.only == "sweep";  // tuning: only the --sweep rows
  const Run none = recover(teacher, train, test, -1, args, "");
  const Run ce = sweep_only ? Run{} : recover(teacher, train, test, 0.0, args, "90% + cross-entropy");
  const Run kd = sweep_only ? Run{} : recover(teacher, train, test, args.alpha, args, "90% + distillation");
  std::printf("\n90%% global L1 sparsity, 1 epoch of recovery with masks kept (Adam lr %g; distillation T=%g alpha=%g)\n",
              args.lr, args.temperature, args.alpha);
  std::printf("%-34s %9s %12s %10s %12s %14s\n", "variant", "top-1 %", "vs teacher", "sparsity", "recovery s",
              "time vs CE");
  std::printf("%-34s %9.2f %12s %9.1f%% %12s %14s\n", "dense teacher", teacher_accuracy, "-", 0.0, "-", "-");
  const auto row = [&](const char* name, const Run& r, bool timed) {
    char time[32] = "-", ratio[32] = "-";
    if (timed) {
      std::snprintf(time, sizeof time, "%.1f", r.seconds);
      std::snprintf(ratio, sizeof ratio, "%.2fx", r.seconds / ce.seconds);
    }
    std::printf("%-34s %9.2f %+12.2f %9.1f%% %12s %14s\n", name, r.accuracy, r.accuracy - teacher_accuracy,
                100.0 * (1.0 - double(r.nonzeros) / double(r.parameters)), time, ratio);
  };
  row("90% pruned, no recovery", none, false);
  if (!sweep_only) {
    row("90% pruned + 1 epoch cross-entropy", ce, true);
    row("90% pruned + 1 epoch distillation", kd, true);
  }
  std::stringstream settings(args.sweep);
  for (std::string setting; std::getline(settings, setting, ',');) {
    Args tuned = args;
    if (std::sscanf(setting.c_str(), "%lf:%lf:%lf", &tuned.temperature, &tuned.alpha, &tuned.lr) != 3)
      throw std::runtime_error("--sweep expects T:alpha:lr[,T:alpha:lr...], got " + setting);
    const Run r = recover(teacher, train, test, tuned.alpha, tuned, "sweep " + setting);
    row(("  distillation T=" + setting).c_str(), r, !sweep_only);
    std::fflush(stdout);
  }
}

struct Spread {
  double mean = 0, stddev = 0, min = 0, max = 0;
};

Spread spread(const std::vector<double>& v) {
  Spread s;
  for (double x : v) s.mean += x / double(v.size());
  for (double x : v) s.stddev += (x - s.mean) * (x - s.mean);
  s.stddev = v.size() > 1 ? std::sqrt(s.stddev / double(v.size() - 1)) : 0.0;
  s.min = *std::min_element(v.begin(), v.end());
  s.max = *std::max_element(v.begin(), v.end());
  return s;
}

int64_t parameter_count(const torch::jit::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

void student_table(const torch::jit::Module& teacher, const ex::Dataset& train, const ex::Dataset& test,
                   const Args& args) {
  const ex::CnnShape shape{16, 32, 64};
  std::vector<double> ce_acc, kd_acc, ce_time, kd_time;
  for (int seed = 0; seed < args.seeds; ++seed) {
    for (const double alpha : {0.0, args.student_alpha}) {
      auto student = ex::make_fashion_cnn(shape, 100 + uint64_t(seed));
      const std::string label = (alpha == 0 ? "student CE seed " : "student KD seed ") + std::to_string(seed);
      const auto start = std::chrono::steady_clock::now();
      pare::distill(student, pare::DistillOptions(teacher, shuffled_batches(train, 11 + uint64_t(seed)))
                                 .epochs(args.epochs)
                                 .lr(args.student_lr)
                                 .temperature(args.student_temperature)
                                 .alpha(alpha)
                                 .progress(ex::progress_bar(label)));
      (alpha == 0 ? ce_time : kd_time).push_back(seconds_since(start));
      (alpha == 0 ? ce_acc : kd_acc).push_back(ex::accuracy(student, test));
    }
  }
  auto dense = teacher.clone();
  const int64_t student_params = parameter_count(ex::make_fashion_cnn(shape));
  std::printf("\nStudent CNN %lld/%lld/%lld (%lld parameters, %.2fx the teacher's %lld), from scratch, %d epochs, "
              "Adam lr %g, %d seeds; teacher %.2f%%; distillation T=%g alpha=%g\n",
              (long long)shape.channels1, (long long)shape.channels2, (long long)shape.hidden,
              (long long)student_params, double(student_params) / double(parameter_count(teacher)),
              (long long)parameter_count(teacher), args.epochs, args.student_lr, args.seeds, ex::accuracy(dense, test),
              args.student_temperature, args.student_alpha);
  std::printf("%-26s %9s %9s %9s %9s   %-24s %12s\n", "training", "mean %", "stddev", "min", "max", "per seed",
              "median s");
  const auto row = [&](const char* name, const std::vector<double>& acc, std::vector<double> times) {
    const auto s = spread(acc);
    std::string seeds;
    for (double a : acc) seeds += (seeds.empty() ? "" : " ") + std::to_string(a).substr(0, 5);
    std::sort(times.begin(), times.end());
    std::printf("%-26s %9.2f %9.2f %9.2f %9.2f   %-24s %12.1f\n", name, s.mean, s.stddev, s.min, s.max,
                seeds.c_str(), times[times.size() / 2]);
  };
  row("cross-entropy only", ce_acc, ce_time);
  row("distillation", kd_acc, kd_time);
  std::vector<double> gain;
  for (size_t i = 0; i < ce_acc.size(); ++i) gain.push_back(kd_acc[i] - ce_acc[i]);
  const auto g = spread(gain);
  std::printf("distillation - cross-entropy, same seed: mean %+.2f points (min %+.2f, max %+.2f)\n", g.mean, g.min,
              g.max);
}

}  // namespace

int main(int argc, char** argv) try {
  const Args args = parse(argc, argv);
  const auto train = ex::load_fashion_mnist(true, args.limit), test = ex::load_fashion_mnist(false);
  std::printf("Fashion-MNIST: %lld training, %lld test images; %d threads\n", (long long)train.size(),
              (long long)test.size(), torch::get_num_threads());
  const auto teacher = trained_teacher(args, train);
  if (args.only.empty() || args.only == "pruned" || args.only == "sweep") pruned_table(teacher, train, test, args);
  if (args.only.empty() || args.only == "student") student_table(teacher, train, test, args);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
