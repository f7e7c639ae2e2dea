// `pare distill`: knowledge distillation from the command line, in one process
// or as N local processes (--nproc N starts them: copies of this command line
// with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, as torchrun does).

#include "tools/cli_distill.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <thread>

#include <torch/script.h>

#include "pare/convert/export.hpp"
#include "pare/distill/distill.hpp"
#include "pare/quantize/quantize.hpp"
#include "core/atomic_file.hpp"

extern char** environ;

namespace pare {

std::vector<Batch> load_labelled_batches(const std::string& path, int64_t batch, const std::string& flag) {
  std::vector<Batch> out;
  for (const auto& item : load_calibration_file(path, batch)) {
    require(item.size() == 2 && item[0].isTensor() && item[1].isTensor(),
            flag + " '" + path + "': expected torch.save((inputs, targets)) or a list of (input, target) tuples");
    const auto inputs = item[0].toTensor(), targets = item[1].toTensor().to(torch::kLong);
    require(inputs.dim() > 0 && targets.dim() == 1 && inputs.size(0) == targets.size(0),
            flag + " '" + path + "': inputs and targets must have one row per sample");
    const auto in = inputs.split(batch), tg = targets.split(batch);
    for (size_t i = 0; i < in.size(); ++i) out.emplace_back(in[i], tg[i]);
  }
  return out;
}

namespace {

// Every weight that is exactly zero in the student stays zero (a pruned model stays pruned).
class KeepZeros : public Pass {
 public:
  std::string name() const override { return "keep_zeros"; }
  void run(Result& state, PassReport& entry) const override {
    int64_t kept = 0;
    for (const auto& p : state.module.named_parameters()) {
      if (p.value.dim() < 2 || !p.value.is_floating_point()) continue;
      const auto mask = p.value.ne(0);
      const int64_t zeros = mask.numel() - mask.sum().item<int64_t>();
      if (zeros == 0) continue;
      state.masks[p.name] = mask;
      kept += zeros;
    }
    entry.metrics["zeros_kept"] = double(kept);
  }
};

std::vector<std::string> own_command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string raw((std::istreambuf_iterator<char>(in)), {});
  std::vector<std::string> args;
  for (size_t at = 0; at < raw.size();) {
    const size_t end = raw.find('\0', at);
    args.push_back(raw.substr(at, end - at));
    at = end == std::string::npos ? raw.size() : end + 1;
  }
  return args;
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  require(fd >= 0, "distill --nproc: no socket to find a free port", Error::Kind::Runtime);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  ::close(fd);
  require(ok, "distill --nproc: could not find a free TCP port on 127.0.0.1", Error::Kind::Runtime);
  return ntohs(address.sin_port);
}

// Environment of rank `rank`: this process's, with the launcher's variables set.
std::vector<std::string> rank_environment(int rank, int nproc, int port) {
  std::map<std::string, std::string> vars{
      {"RANK", std::to_string(rank)},        {"LOCAL_RANK", std::to_string(rank)},
      {"WORLD_SIZE", std::to_string(nproc)}, {"LOCAL_WORLD_SIZE", std::to_string(nproc)},
      {"MASTER_ADDR", "127.0.0.1"},          {"MASTER_PORT", std::to_string(port)}};
  if (!std::getenv("OMP_NUM_THREADS"))  // the cores shared out, as torchrun does (it gives each 1)
    vars["OMP_NUM_THREADS"] = std::to_string(std::max(1u, std::thread::hardware_concurrency() / unsigned(nproc)));
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry(*e);
    if (!vars.count(entry.substr(0, entry.find('=')))) env.push_back(entry);
  }
  for (const auto& [k, v] : vars) env.push_back(k + "=" + v);
  return env;
}

// Starts `nproc` copies of this command line as ranks 0..nproc-1 and waits for
// them all; returns the first failing rank's exit code (0 if none failed).
int launch(int nproc, int port, std::ostream& err) {
  const auto args = own_command_line();
  require(!args.empty(), "distill --nproc: cannot read this process's command line", Error::Kind::Runtime);
  std::vector<pid_t> pids;
  for (int rank = 0; rank < nproc; ++rank) {
    auto env = rank_environment(rank, nproc, port);
    std::vector<char*> argv, envp;
    auto copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    pid_t pid = 0;
    const int failed = ::posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), envp.data());
    require(failed == 0, "distill --nproc: could not start rank " + std::to_string(rank), Error::Kind::Runtime);
    pids.push_back(pid);
  }
  int code = 0;
  for (size_t rank = 0; rank < pids.size(); ++rank) {
    int status = 0;
    ::waitpid(pids[rank], &status, 0);
    const int rank_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (rank_code != 0) err << "pare: distill rank " << rank << " exited with code " << rank_code << "\n";
    if (code == 0) code = rank_code;
  }
  return code;
}

int train(const DistillArgs& a, std::ostream& out, std::ostream& err) {
  std::optional<DistributedOptions> distributed;
  if (DistributedOptions::in_env()) {
    distributed = DistributedOptions::from_env();
    if (a.timeout > 0) distributed->timeout(std::chrono::milliseconds(std::llround(a.timeout * 1000)));
  }
  const bool main_rank = !distributed || distributed->rank() == 0;
  auto options = DistillOptions(torch::jit::load(a.teacher), load_labelled_batches(a.data, a.batch, "--data"))
                     .epochs(a.epochs)
                     .lr(a.lr)
                     .optimizer(a.optimizer == "sgd" ? OptimizerKind::SGD : OptimizerKind::Adam)
                     .temperature(a.temperature)
                     .alpha(a.alpha)
                     .seed(a.seed)
                     .shuffle(!a.no_shuffle)
                     .distributed(distributed)
                     .checkpoint(a.checkpoint);
  if (!a.eval.empty()) options.evaluate_on(load_labelled_batches(a.eval, 500, "--eval"));
  if (main_rank)
    options.progress([&err](int64_t step, int64_t steps, double loss) {
      if (steps > 0)
        err << "\rdistilling " << step << "/" << steps << " loss " << loss << (step == steps ? "\n" : "") << std::flush;
    });
  Pipeline pipeline;
  pipeline.add(KeepZeros()).add(Distill(options));
  if (main_rank) pipeline.add(ExportTorchScript(a.output));  // one writer: rank 0
  const auto result = pipeline.run(torch::jit::load(a.student));
  if (!main_rank) return 0;
  out << result.report.to_string();
  if (!a.report.empty()) detail::write_file_atomically(a.report, result.report.to_json(), "--report");
  return 0;
}

}  // namespace

void add_distill_command(CLI::App& app, DistillArgs& a) {
  auto* cmd = app.add_subcommand("distill",
                                 "fine-tune a student against a teacher (knowledge distillation), in one "
                                 "process or --nproc N data-parallel processes");
  cmd->add_option("teacher", a.teacher, "trained TorchScript teacher")->required();
  cmd->add_option("student", a.student, "TorchScript student to train (its zero weights stay zero)")->required();
  cmd->add_option("-o,--output", a.output, "where to write the trained student")->required();
  cmd->add_option("--data", a.data, "training data: torch.save((inputs, targets), \"train.pt\")")->required();
  cmd->add_option("--eval", a.eval, "evaluation data for top-1 accuracy before and after, same format");
  cmd->add_option("--batch", a.batch, "batch size per process (the global batch is nproc times this)")
      ->capture_default_str();
  cmd->add_option("--epochs", a.epochs, "passes over the data")->capture_default_str();
  cmd->add_option("--lr", a.lr, "learning rate")->capture_default_str();
  cmd->add_option("--optimizer", a.optimizer, "adam or sgd")
      ->check(CLI::IsMember({"adam", "sgd"}))
      ->capture_default_str();
  cmd->add_option("--temperature", a.temperature, "softmax temperature")->capture_default_str();
  cmd->add_option("--alpha", a.alpha, "weight of the distillation term")->capture_default_str();
  cmd->add_option("--seed", a.seed, "seed of the shuffle")->capture_default_str();
  cmd->add_flag("--no-shuffle", a.no_shuffle, "keep the data's order");
  cmd->add_option("--checkpoint", a.checkpoint, "save after every epoch here; a rerun resumes from it");
  cmd->add_option("--report", a.report, "write the report as JSON here");
  cmd->add_option("--nproc", a.nproc, "start this many local processes (Gloo over 127.0.0.1)")->capture_default_str();
  cmd->add_option("--master-port", a.master_port, "rendezvous port for --nproc (default: a free one)");
  cmd->add_option("--timeout", a.timeout, "seconds a rank waits for the others before failing (default 60)");
  a.command = cmd;
}

int distill_command(const DistillArgs& a, std::ostream& out, std::ostream& err) {
  require(a.nproc >= 1 && a.nproc <= 1024, "distill: --nproc must be in [1, 1024], got " + std::to_string(a.nproc));
  require(a.batch >= 1, "distill: --batch must be positive, got " + std::to_string(a.batch));
  require(a.timeout >= 0 && a.timeout <= 86400, "distill: --timeout must be in [0, 86400] seconds");
  if (a.nproc > 1 && !DistributedOptions::in_env()) {
    require(distributed_gloo_available(),
            "distill: --nproc needs Gloo, which this build lacks (install libgloo-dev and rebuild)",
            Error::Kind::Runtime);
    return launch(int(a.nproc), a.master_port > 0 ? int(a.master_port) : free_port(), err);
  }
  return train(a, out, err);
}

}  // namespace pare
