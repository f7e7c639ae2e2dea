#include "pare/tools/bench.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/html_chart.hpp"
#include "core/eval_module.hpp"
#include "core/torch_errors.hpp"
#include "pare/core/metrics.hpp"

namespace pare {
namespace {

using Clock = std::chrono::steady_clock;

std::vector<c10::IValue> make_inputs(const BenchOptions& options, int64_t batch) {
  std::vector<c10::IValue> inputs;
  for (auto shape : options.inputs()) {
    shape[0] = batch;
    inputs.emplace_back(torch::randn(shape));
  }
  return inputs;
}

void forward(torch::jit::Module& module, const std::vector<c10::IValue>& inputs, const std::string& name) {
  try {
    module.forward(inputs);
  } catch (const std::exception& e) {
    throw Error("model '" + name + "' rejected its input: " + detail::torch_message(e) +
                "; check the input shapes (batch first: BenchOptions::inputs, pare bench --input)");
  }
}

// One (model, batch, threads) cell: its own copy of the model, its inputs, and
// the latencies and measuring time of every round so far.
struct BenchCell {
  std::string name;
  torch::jit::Module module;
  int64_t batch = 0;
  int64_t threads = 1;
  std::vector<c10::IValue> inputs;
  std::vector<double> latencies;
  double seconds = 0;
};

// Calls the cell's model from cell.threads clients for `slice`, adding the latencies.
void measure_slice(BenchCell& cell, std::chrono::milliseconds slice) {
  std::vector<std::string> failures;  // messages, not exception objects: nothing crosses threads
  std::mutex merge;
  const auto start = Clock::now();
  const auto deadline = start + slice;
  auto client = [&] {
    torch::NoGradGuard no_grad;
    std::vector<double> mine;
    try {
      do {
        const auto begin = Clock::now();
        forward(cell.module, cell.inputs, cell.name);
        mine.push_back(std::chrono::duration<double, std::milli>(Clock::now() - begin).count());
      } while (Clock::now() < deadline);
    } catch (const std::exception& e) {  // forward() throws pare::Error only
      std::lock_guard<std::mutex> lock(merge);
      failures.push_back(e.what());
      return;
    } catch (...) {
      std::lock_guard<std::mutex> lock(merge);
      failures.push_back("model '" + cell.name + "' threw an exception that is not a std::exception");
      return;
    }
    std::lock_guard<std::mutex> lock(merge);
    cell.latencies.insert(cell.latencies.end(), mine.begin(), mine.end());
  };
  // One client runs on the calling thread, where the warm-up ran: LibTorch's
  // OpenMP team belongs to the thread that starts it, and a second team on a
  // new thread competes with the first one's spinning workers.
  if (cell.threads == 1) {
    client();
  } else {
    std::vector<std::thread> clients;
    for (int64_t t = 0; t < cell.threads; ++t) clients.emplace_back(client);
    for (auto& c : clients) c.join();
  }
  require(failures.empty(), "bench: " + std::to_string(failures.size()) + " of " + std::to_string(cell.threads) +
                                " client threads failed (batch " + std::to_string(cell.batch) + "); the first: " +
                                (failures.empty() ? "" : failures.front()));
  cell.seconds += std::chrono::duration<double>(Clock::now() - start).count();
}

BenchRow row_of(BenchCell& cell) {
  std::sort(cell.latencies.begin(), cell.latencies.end());
  BenchRow row{cell.name, cell.batch, cell.threads, int64_t(cell.latencies.size())};
  row.p50_ms = nearest_rank(cell.latencies, 0.50);
  row.p95_ms = nearest_rank(cell.latencies, 0.95);
  row.p99_ms = nearest_rank(cell.latencies, 0.99);
  row.samples_per_second = double(cell.latencies.size()) * double(cell.batch) / cell.seconds;
  return row;
}

void validate_bench(const std::vector<std::pair<std::string, torch::jit::Module>>& models, const BenchOptions& options) {
  require(!models.empty(), "bench: no models given; expected at least one TorchScript file");
  require(!options.inputs().empty(), "bench: no input shape given; expected e.g. 1x1x28x28");
  require(!options.batches().empty() && !options.threads().empty(), "bench: expected batch sizes and thread counts");
  for (auto b : options.batches()) require(b > 0, "bench: batch sizes must be positive, got " + std::to_string(b));
  for (auto t : options.threads()) require(t > 0 && t <= 256, "bench: thread counts must be in [1, 256]");
  require(options.duration() > std::chrono::milliseconds(0) && options.duration() <= std::chrono::hours(1),
          "bench: the duration per cell must be in (0, 1 h], got " + std::to_string(options.duration().count()) + " ms");
  require(options.rounds() >= 1 && options.rounds() <= 100,
          "bench: rounds must be in [1, 100], got " + std::to_string(options.rounds()));
}

}  // namespace

std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> shape;
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t end = std::min(text.find('x', pos), text.size());
    const std::string part = text.substr(pos, end - pos);
    require(!part.empty() && part.find_first_not_of("0123456789") == std::string::npos && part.size() < 10,
            "input shape '" + text + "' is not valid; expected positive sizes joined by 'x', e.g. 1x1x28x28");
    shape.push_back(std::stoll(part));
    require(shape.back() > 0, "input shape '" + text + "' has a zero size; expected positive sizes");
    pos = end + 1;
  }
  return shape;
}

std::vector<BenchRow> benchmark_models(std::vector<std::pair<std::string, torch::jit::Module>> models,
                                       const BenchOptions& options) {
  validate_bench(models, options);
  std::vector<BenchCell> table;
  for (auto& [name, module] : models) {
    module = detail::eval_module(module);  // the caller's module keeps its mode
    for (auto batch : options.batches())
      for (int64_t threads : options.threads()) {
        // A fresh copy per cell: TorchScript specialises a method to the input
        // shapes it runs first, and other shapes then take a slower fallback.
        BenchCell cell;
        cell.name = name;
        cell.module = detail::reloaded(module, "bench: model '" + name + "'");
        cell.batch = batch;
        cell.threads = threads;
        cell.inputs = make_inputs(options, batch);
        for (int i = 0; i < options.warmup(); ++i) forward(cell.module, cell.inputs, name);
        table.push_back(std::move(cell));
      }
  }
  // Rounds interleave the cells, so a slow spell of the machine is shared by
  // every model instead of landing on the one measured during it.
  const auto slice = std::max(std::chrono::milliseconds(1), options.duration() / options.rounds());
  for (int round = 0; round < options.rounds(); ++round)
    for (auto& cell : table) {
      if (round > 0) forward(cell.module, cell.inputs, cell.name);  // its caches refilled after the other cells ran
      measure_slice(cell, slice);
    }
  std::vector<BenchRow> rows;
  for (auto& cell : table) rows.push_back(row_of(cell));
  const size_t cells = options.batches().size() * options.threads().size();
  for (size_t i = cells; i < rows.size(); ++i) {
    const auto& base = rows[i % cells];
    rows[i].p50_ratio = rows[i].p50_ms / base.p50_ms;
    rows[i].throughput_ratio = rows[i].samples_per_second / base.samples_per_second;
  }
  return rows;
}

std::string bench_table(const std::vector<BenchRow>& rows) {
  std::string out;
  char line[320];
  std::snprintf(line, sizeof line, "%-28s %6s %7s %8s %10s %10s %10s %12s %10s %11s\n", "model", "batch", "threads",
                "calls", "p50 ms", "p95 ms", "p99 ms", "samples/s", "p50 ratio", "thr. ratio");
  out += line;
  for (const auto& r : rows) {
    std::snprintf(line, sizeof line, "%-28s %6lld %7lld %8lld %10.3f %10.3f %10.3f %12.0f %9.2fx %10.2fx\n",
                  r.model.c_str(), (long long)r.batch, (long long)r.threads, (long long)r.calls, r.p50_ms, r.p95_ms,
                  r.p99_ms, r.samples_per_second, r.p50_ratio, r.throughput_ratio);
    out += line;
  }
  return out;
}

std::string bench_json(const std::vector<BenchRow>& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : rows)
    out.push_back({{"model", r.model}, {"batch", r.batch}, {"threads", r.threads}, {"calls", r.calls},
                   {"p50_ms", r.p50_ms}, {"p95_ms", r.p95_ms}, {"p99_ms", r.p99_ms},
                   {"samples_per_second", r.samples_per_second}, {"p50_ratio", r.p50_ratio},
                   {"throughput_ratio", r.throughput_ratio}});
  return out.dump(2);
}

}  // namespace pare

namespace pare {

std::string bench_html(const std::vector<BenchRow>& rows, const std::string& title) {
  html::BarChart latency{"Latency per call (ms, lower is better)", " ms"};
  latency.series = {{"p50", {}}, {"p95", {}}, {"p99", {}}};
  html::BarChart throughput{"Throughput (samples/s, higher is better)", ""};
  throughput.series = {{"samples/s", {}}};
  latency.width = throughput.width = 540;  // side by side on a 1140-pixel page
  std::vector<std::vector<std::string>> table;
  for (const auto& r : rows) {
    const std::string cell = r.model + " b" + std::to_string(r.batch) + " t" + std::to_string(r.threads);
    latency.labels.push_back(cell);
    throughput.labels.push_back(cell);
    latency.series[0].values.push_back(r.p50_ms);
    latency.series[1].values.push_back(r.p95_ms);
    latency.series[2].values.push_back(r.p99_ms);
    throughput.series[0].values.push_back(r.samples_per_second);
    table.push_back({r.model, std::to_string(r.batch), std::to_string(r.threads), std::to_string(r.calls),
                     html::number(r.p50_ms), html::number(r.p95_ms), html::number(r.p99_ms),
                     html::number(r.samples_per_second, 6), html::number(r.p50_ratio, 3) + "x",
                     html::number(r.throughput_ratio, 3) + "x"});
  }
  const std::string body =
      "<div class=\"side-by-side\">\n" + html::figure(latency) + html::figure(throughput) + "</div>\n" +
      html::table({"model", "batch", "threads", "calls", "p50 ms", "p95 ms", "p99 ms", "samples/s", "p50 ratio",
                   "thr. ratio"},
                  table);
  return html::page(title, body);
}

}  // namespace pare
