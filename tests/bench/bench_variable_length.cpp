// Serving text requests of every length: a BERT-style encoder (forward(ids,
// mask), tests/support/text_models.py) behind the Runner, 8 closed-loop
// clients, each request of a length drawn from 16-128. Side by side, one run:
//   plain        each client calls the model itself at its request's length;
//   one length   the Runner as without padding: only requests of equal length share a batch;
//   pad to max   the Runner, each client padding its request to the longest length itself;
//   buckets      the Runner with PaddingOptions: padded to the smallest of a few lengths.
// Every answer is checked against the model run on the unpadded request (max abs difference).
//
//   bench_variable_length [--seconds 2] [--clients 8] [--rounds 3] [--hidden 256] [--layers 4] [--threads CORES]
//                         [--device cpu|cuda]
//
// On a GPU (--device cuda) the model, every Runner and the clients' own calls run
// there, and the reference answers are the model's on that device.

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>

#include <pare/core/metrics.hpp>
#include <pare/serve/padding.hpp>
#include <pare/serve/runner.hpp>
#include <ATen/Parallel.h>

using Clock = std::chrono::steady_clock;

namespace {

struct Config {
  double seconds = 2;
  int clients = 8, rounds = 3, hidden = 256, layers = 4;
  int threads = int(std::max(1u, std::thread::hardware_concurrency()));  // passes at once: one per core
  int64_t min_length = 16, max_length = 128;
  c10::Device device = c10::kCPU;
};

// Tensors moved to `device`; other values as they are.
std::vector<c10::IValue> on(const std::vector<c10::IValue>& values, c10::Device device) {
  std::vector<c10::IValue> out;
  for (const auto& v : values) out.push_back(v.isTensor() ? c10::IValue(v.toTensor().to(device)) : v);
  return out;
}

struct Request {
  std::vector<c10::IValue> inputs;  // ids, mask: (1, length)
  at::Tensor hidden, logits;        // the model's answer to the unpadded request
};

torch::jit::Module encoder(const Config& config) {
  const auto path =
      std::filesystem::temp_directory_path() / ("bench_variable_length_" + std::to_string(getpid()) + ".pt");
  const std::string command = std::string(PARE_PYTHON) + " " + PARE_SUPPORT_DIR + "/text_models.py " + path.string() +
                              " --hidden " + std::to_string(config.hidden) + " --layers " +
                              std::to_string(config.layers) + " --ffn " + std::to_string(4 * config.hidden) +
                              " --max-length " + std::to_string(config.max_length);
  if (std::system(command.c_str()) != 0) throw std::runtime_error("failed: " + command);
  auto module = torch::jit::load(path.string());
  std::filesystem::remove(path);
  module.eval();
  module.to(config.device);
  return module;
}

std::vector<Request> requests(torch::jit::Module& model, const Config& config) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int64_t> length(config.min_length, config.max_length);
  std::vector<Request> out;
  torch::NoGradGuard no_grad;
  for (int i = 0; i < 128; ++i) {
    const int64_t t = length(rng);
    Request r;
    r.inputs = {torch::randint(1, 1000, {1, t}, torch::kLong), torch::ones({1, t}, torch::kLong)};
    const auto answer = model.forward(on(r.inputs, config.device)).toTuple();
    r.hidden = answer->elements()[0].toTensor().cpu();
    r.logits = answer->elements()[1].toTensor().cpu();
    out.push_back(std::move(r));
  }
  return out;
}

struct Loop {
  double throughput = 0, p99_ms = 0, max_error = 0;
};

// `clients` threads, each sending its next request as soon as the last answer
// came; every answer compared with the unpadded reference.
template <class Call>
Loop closed_loop(const std::vector<Request>& reqs, const Config& config, Call&& call) {
  std::atomic<bool> stop{false};
  std::vector<std::vector<double>> latencies(size_t(config.clients));
  std::vector<double> errors(size_t(config.clients), 0.0);
  std::vector<std::thread> threads;
  for (int c = 0; c < config.clients; ++c)
    threads.emplace_back([&, c] {
      for (size_t i = size_t(c) * 17; !stop; ++i) {
        const auto& r = reqs[i % reqs.size()];
        const auto start = Clock::now();
        const c10::intrusive_ptr<c10::ivalue::Tuple> answer = call(r).toTuple();
        latencies[size_t(c)].push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
        const at::Tensor hidden = answer->elements()[0].toTensor();
        const at::Tensor logits = answer->elements()[1].toTensor();
        double error = 1e30;  // a wrong shape counts as an unbounded error
        if (hidden.sizes() == r.hidden.sizes())
          error =
              std::max((hidden - r.hidden).abs().max().item<double>(), (logits - r.logits).abs().max().item<double>());
        errors[size_t(c)] = std::max(errors[size_t(c)], error);
      }
    });
  const auto start = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(config.seconds));
  stop = true;
  for (auto& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> all;
  for (const auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  return {double(all.size()) / elapsed, pare::nearest_rank(all, 0.99), *std::max_element(errors.begin(), errors.end())};
}

// The request padded to `length` by the client, and its answer cut back.
c10::IValue padded_by_client(pare::Runner& runner, const Request& r, int64_t length) {
  const int64_t t = r.inputs[0].toTensor().size(1);
  auto pad = [&](const c10::IValue& v) { return torch::constant_pad_nd(v.toTensor(), {0, length - t}, 0); };
  const auto answer = runner.run({pad(r.inputs[0]), pad(r.inputs[1])}).toTuple();
  return c10::ivalue::Tuple::create({answer->elements()[0].toTensor().narrow(1, 0, t), answer->elements()[1]});
}

Loop median(std::vector<Loop> loops) {
  auto field = [&](double Loop::*f) {
    std::vector<double> v;
    for (const auto& l : loops) v.push_back(l.*f);
    std::sort(v.begin(), v.end());
    return pare::nearest_rank(v, 0.5);
  };
  double worst = 0;
  for (const auto& l : loops) worst = std::max(worst, l.max_error);
  return {field(&Loop::throughput), field(&Loop::p99_ms), worst};
}

}  // namespace

int main(int argc, char** argv) {
  Config config;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--seconds")) config.seconds = std::atof(argv[i + 1]);
    if (!std::strcmp(argv[i], "--clients")) config.clients = std::max(1, std::atoi(argv[i + 1]));
    if (!std::strcmp(argv[i], "--rounds")) config.rounds = std::max(1, std::atoi(argv[i + 1]));
    if (!std::strcmp(argv[i], "--hidden")) config.hidden = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--layers")) config.layers = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--threads")) config.threads = std::max(1, std::atoi(argv[i + 1]));
    if (!std::strcmp(argv[i], "--device")) config.device = c10::Device(argv[i + 1]);
  }
  at::set_num_threads(1);  // one LibTorch thread per pass, clients and workers alike
  auto model = encoder(config);
  const auto reqs = requests(model, config);
  const auto example = reqs.front().inputs;
  auto options = [&] {
    return pare::RunnerOptions()
        .max_batch(16)
        .threads(config.threads)
        .concurrency(config.threads)
        .max_delay(std::chrono::milliseconds(5))
        .warmup(3)
        .device(config.device)
        .example_inputs(example);
  };
  std::vector<int64_t> buckets;
  for (int64_t b = 32; b <= config.max_length; b += 32) buckets.push_back(b);
  pare::Runner one_length(model, options());
  pare::Runner pad_to_max(model, options().example_inputs({torch::ones({1, config.max_length}, torch::kLong),
                                                           torch::ones({1, config.max_length}, torch::kLong)}));
  pare::Runner bucketed(model, options().padding(pare::PaddingOptions(buckets)));
  std::vector<Loop> plain, one, max, bucket;
  for (int round = 0; round < config.rounds; ++round) {
    plain.push_back(closed_loop(reqs, config, [&](const Request& r) {
      torch::NoGradGuard no_grad;
      const auto answer = model.get_method("forward")(on(r.inputs, config.device)).toTuple();
      return c10::IValue(
          c10::ivalue::Tuple::create({answer->elements()[0].toTensor().cpu(), answer->elements()[1].toTensor().cpu()}));
    }));
    one.push_back(closed_loop(reqs, config, [&](const Request& r) { return one_length.run(r.inputs); }));
    max.push_back(closed_loop(reqs, config,
                              [&](const Request& r) { return padded_by_client(pad_to_max, r, config.max_length); }));
    bucket.push_back(closed_loop(reqs, config, [&](const Request& r) { return bucketed.run(r.inputs); }));
  }
  const Loop p = median(plain), o = median(one), m = median(max), b = median(bucket);
  std::printf(
      "BERT-style encoder, hidden %d, %d layers; %d clients, lengths %lld-%lld; buckets every 32; "
      "%d worker(s) x 1 LibTorch thread on %s; medians of %d rounds of %.1f s\n\n",
      config.hidden, config.layers, config.clients, (long long)config.min_length, (long long)config.max_length,
      config.threads, config.device.str().c_str(), config.rounds, config.seconds);
  std::printf(
      "| serving | req/s | p99 ms | max abs error vs unpadded | buckets / this |\n| --- | --- | --- | --- | --- |\n");
  for (const auto& [name, l] : {std::pair{"plain (no Runner)", p},
                                {"Runner, one length per batch", o},
                                {"Runner, clients pad to 128", m},
                                {"Runner, PaddingOptions buckets", b}})
    std::printf("| %s | %.1f | %.1f | %.2g | %.2fx |\n", name, l.throughput, l.p99_ms, l.max_error,
                b.throughput / l.throughput);
  const auto s = bucketed.stats();
  std::printf("\nbuckets runner: %.2f requests per batch\n", s.batches ? double(s.requests) / double(s.batches) : 0.0);
  return 0;
}
