// Data-parallel Distill across processes (Gloo on 127.0.0.1): the test binary
// starts copies of itself as ranks, each running the hidden case "distill
// rank" with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set, and reads
// back what each rank wrote (parameter hashes per step, accuracy, errors).
#include "support/testing.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>
#include <ATen/Parallel.h>

#include "support/fashion_testing.hpp"
#include "pare/distill/distill.hpp"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
constexpr int64_t kTimeoutSeconds = 10;  // PARE_DIST_TIMEOUT of the failure cases

std::string env_or(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value ? value : fallback;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream out;
  out << in.rdbuf();
  return out.str();
}

// The first word of a file (a rank's accuracy in its result file); empty if there is none.
std::string first_word(const std::string& path) {
  std::istringstream in(read_text(path));
  std::string word;
  in >> word;
  return word;
}

// FNV-1a over the bytes of every parameter, in order.
uint64_t hash_of(const torch::jit::Module& module) {
  uint64_t h = 1469598103934665603ULL;
  for (const auto& p : module.parameters()) {
    const auto t = p.detach().contiguous();
    const auto* bytes = static_cast<const unsigned char*>(t.data_ptr());
    for (size_t i = 0; i < size_t(t.nbytes()); ++i) h = (h ^ bytes[i]) * 1099511628211ULL;
  }
  return h;
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
  socklen_t length = sizeof address;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

struct Exit {
  int status = -1;
  double seconds = 0;  // from the start of the job
};

// Starts `world` copies of this binary as ranks of one job; waits (at most 120 s) for every one.
std::vector<Exit> run_ranks(const std::string& dir, const std::map<std::string, std::string>& settings, int world = 2) {
  const int port = free_port();
  std::vector<pid_t> pids;
  const auto started = Clock::now();
  for (int rank = 0; rank < world; ++rank) {
    std::map<std::string, std::string> vars = settings;
    vars["RANK"] = std::to_string(rank);
    vars["WORLD_SIZE"] = std::to_string(world);
    vars["MASTER_ADDR"] = "127.0.0.1";
    vars["MASTER_PORT"] = std::to_string(port);
    vars["PARE_WORKER_DIR"] = dir;
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) {
      const std::string entry(*e);
      if (!vars.count(entry.substr(0, entry.find('=')))) env.push_back(entry);
    }
    for (const auto& [k, v] : vars) env.push_back(k + "=" + v);
    std::vector<char*> envp;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    const std::string log = dir + "/log." + std::to_string(rank), exe = "/proc/self/exe", name = "distill rank";
    char* argv[] = {const_cast<char*>(exe.c_str()), const_cast<char*>(name.c_str()), nullptr};
    const pid_t pid = ::fork();
    if (pid == 0) {  // only async-signal-safe calls until exec
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::execve(exe.c_str(), argv, envp.data());
      ::_exit(127);
    }
    pids.push_back(pid);
  }
  std::vector<Exit> exits(world);
  for (int left = world; left > 0;) {
    for (int r = 0; r < world; ++r) {
      if (pids[r] == 0) continue;
      int status = 0;
      if (::waitpid(pids[r], &status, WNOHANG) != pids[r]) continue;
      exits[r] = {status, std::chrono::duration<double>(Clock::now() - started).count()};
      pids[r] = 0;
      --left;
    }
    if (std::chrono::duration<double>(Clock::now() - started).count() > 120)
      for (const pid_t pid : pids)
        if (pid != 0) ::kill(pid, SIGKILL);  // never hang the suite: the checks below then fail
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return exits;
}

// The teacher, the student's starting point and a scratch folder, made once per process.
const std::string& job_dir() {
  static const std::string dir = [] {
    char name[] = "/tmp/pare-distributed-XXXXXX";
    REQUIRE(::mkdtemp(name) != nullptr);
    auto teacher = ex::make_fashion_cnn({8, 16, 32}, 1);
    ex::train(teacher, train_subset(), 1);
    teacher.save(std::string(name) + "/teacher.pt");
    ex::make_fashion_cnn({4, 8, 16}, 7).save(std::string(name) + "/student.pt");
    return std::string(name);
  }();
  static const struct Cleanup {
    ~Cleanup() { remove_tree(dir); }
  } cleanup;
  return dir;
}

std::vector<std::string> lines_of(const std::string& path) {
  std::vector<std::string> lines;
  std::istringstream in(read_text(path));
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

void clear(const std::string& dir, const std::string& tag) {
  for (const auto* kind : {"hashes", "result", "error", "log"})
    for (int r = 0; r < 2; ++r) std::remove((dir + "/" + tag + "." + kind + "." + std::to_string(r)).c_str());
}

}  // namespace

// One rank of a job the cases below start (hidden: runs only when named).
TEST_CASE("distill rank", "[.]") {
  const std::string dir = env_or("PARE_WORKER_DIR", ""), tag = env_or("PARE_WORKER_TAG", "run");
  REQUIRE_FALSE(dir.empty());
  torch::set_num_threads(1);  // one core per rank
  const auto distributed = pare::DistributedOptions::from_env();
  const auto rank = std::to_string(distributed.rank());
  auto teacher = torch::jit::load(dir + "/teacher.pt"), student = torch::jit::load(dir + "/student.pt");
  const auto kill = env_or("PARE_WORKER_KILL", "");  // "rank:step": that rank dies after that step
  std::ofstream hashes(dir + "/" + tag + ".hashes." + rank);
  auto options = pare::DistillOptions(teacher, train_subset().batches(64))
                     .epochs(2)
                     .lr(5e-3)
                     .shuffle(false)
                     .distributed(distributed)
                     .progress([&](int64_t step, int64_t, double) {
                       hashes << step << " " << hash_of(student) << std::endl;
                       if (kill == rank + ":" + std::to_string(step)) ::raise(SIGKILL);
                     });
  if (env_or("PARE_WORKER_CHECKPOINT", "") == "1") options.checkpoint(dir + "/checkpoint.pt");
  try {
    const auto result = pare::distill(student, options);
    std::ofstream(dir + "/" + tag + ".result." + rank)
        << ex::accuracy(student, test_subset()) << " " << result.samples_per_second << " " << result.steps << "\n";
  } catch (const pare::Error& e) {
    std::ofstream(dir + "/" + tag + ".error." + rank) << e.what() << "\n";
  }
}

TEST_CASE("2-process Distill keeps parameters identical on both ranks and matches 1 process at the same global batch") {
  if (!pare::distributed_gloo_available()) {  // pip's LibTorch 2.x ships no Gloo headers
    WARN("this build has no Gloo: nothing to run");
    return;
  }
  const auto& dir = job_dir();
  clear(dir, "run");
  const auto exits = run_ranks(dir, {{"PARE_WORKER_TAG", "run"}});
  for (const auto& e : exits) CHECK(e.status == 0);
  const auto rank0 = lines_of(dir + "/run.hashes.0"), rank1 = lines_of(dir + "/run.hashes.1");
  CHECK(rank0.size() == 32);  // 2048 images, 2 ranks x 64 a step, 2 epochs
  CHECK(rank0 == rank1);      // every step's parameters, bit for bit
  std::istringstream result(read_text(dir + "/run.result.0"));
  double accuracy2 = -1, samples_per_second2 = 0;
  result >> accuracy2 >> samples_per_second2;
  INFO(read_text(dir + "/log.0") + read_text(dir + "/log.1"));
  CHECK(first_word(dir + "/run.result.0") == first_word(dir + "/run.result.1"));  // one model, one accuracy

  // One process over batches of 128: batch k holds the images of the two ranks' step k.
  auto student = torch::jit::load(dir + "/student.pt");
  const auto one =
      pare::distill(student, pare::DistillOptions(torch::jit::load(dir + "/teacher.pt"), train_subset().batches(128))
                                 .epochs(2)
                                 .lr(5e-3)
                                 .shuffle(false));
  const double accuracy1 = ex::accuracy(student, test_subset());
  WARN("1 process: " << accuracy1 << "% at " << one.samples_per_second << " samples/s; 2 processes: " << accuracy2
                     << "% at " << samples_per_second2 << " samples/s");
  CHECK(one.steps == 32);
  CHECK(std::abs(accuracy2 - accuracy1) <= 0.3);
  auto untrained = torch::jit::load(dir + "/student.pt");
  CHECK(accuracy2 > ex::accuracy(untrained, test_subset()) + 20);  // it did learn
}

TEST_CASE("a rank killed mid-epoch ends the other with a pare::Error naming it within the timeout") {
  if (!pare::distributed_gloo_available()) {  // pip's LibTorch 2.x ships no Gloo headers
    WARN("this build has no Gloo: nothing to run");
    return;
  }
  const auto& dir = job_dir();
  for (const int lost : {1, 0}) {  // rank 0 also serves the rendezvous store
    const std::string tag = "kill" + std::to_string(lost);
    clear(dir, tag);
    const auto exits = run_ranks(dir, {{"PARE_WORKER_TAG", tag},
                                       {"PARE_WORKER_KILL", std::to_string(lost) + ":5"},
                                       {"PARE_DIST_TIMEOUT", std::to_string(kTimeoutSeconds)}});
    const int other = 1 - lost;
    CHECK(WIFSIGNALED(exits[lost].status));
    CHECK(exits[other].status == 0);
    const auto error = read_text(dir + "/" + tag + ".error." + std::to_string(other));
    INFO(error << read_text(dir + "/log." + std::to_string(other)));
    CHECK_THAT(error, Catch::Contains("rank " + std::to_string(lost)) && Catch::Contains("lost"));
    CHECK(lines_of(dir + "/" + tag + ".hashes." + std::to_string(other)).size() <= 6);  // it stopped there
    WARN("rank " << lost << " killed: rank " << other << " ended " << exits[other].seconds - exits[lost].seconds
                 << " s later: " << error);
    CHECK(exits[other].seconds - exits[lost].seconds < double(kTimeoutSeconds));
  }
}

TEST_CASE("a job killed in its second epoch resumes from the checkpoint and ends as an uninterrupted run") {
  if (!pare::distributed_gloo_available()) {  // pip's LibTorch 2.x ships no Gloo headers
    WARN("this build has no Gloo: nothing to run");
    return;
  }
  const auto& dir = job_dir();
  std::remove((dir + "/checkpoint.pt").c_str());
  clear(dir, "whole");
  run_ranks(dir, {{"PARE_WORKER_TAG", "whole"}});
  clear(dir, "crash");
  clear(dir, "resume");
  const auto crashed = run_ranks(dir, {{"PARE_WORKER_TAG", "crash"},
                                       {"PARE_WORKER_CHECKPOINT", "1"},
                                       {"PARE_WORKER_KILL", "1:20"},
                                       {"PARE_DIST_TIMEOUT", std::to_string(kTimeoutSeconds)}});
  {
    INFO("rank 0 exit status " << crashed[0].status << "; its log:\n" << read_text(dir + "/log.0"));
    CHECK(crashed[0].status == 0);  // it ended with a pare::Error, not a signal
    CHECK(read_text(dir + "/crash.error.0").find("rank 1") != std::string::npos);
  }
  const auto exits = run_ranks(dir, {{"PARE_WORKER_TAG", "resume"}, {"PARE_WORKER_CHECKPOINT", "1"}});
  for (const auto& e : exits) CHECK(e.status == 0);
  const auto whole = lines_of(dir + "/whole.hashes.0"), resumed = lines_of(dir + "/resume.hashes.0");
  REQUIRE(whole.size() == 32);
  INFO(read_text(dir + "/log.0"));
  REQUIRE(resumed.size() == 16);  // the second epoch only: steps 17..32
  CHECK(std::vector<std::string>(whole.begin() + 16, whole.end()) == resumed);
  CHECK(lines_of(dir + "/resume.hashes.1") == resumed);
  CHECK(first_word(dir + "/resume.result.0") == first_word(dir + "/whole.result.0"));  // the same accuracy
}
