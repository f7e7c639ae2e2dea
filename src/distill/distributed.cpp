// pare::detail::join_group — a process's membership in a data-parallel job on
// LibTorch's c10d: a TCPStore (or FileStore) rendezvous, a Gloo (CPU) or NCCL
// (CUDA) process group, and a heartbeat each rank writes into the store, so a
// collective that fails or times out names the rank that was lost.
//
// PARE_WITH_GLOO / PARE_WITH_NCCL come from the build when the headers were found.
#if defined(PARE_WITH_GLOO) && !defined(USE_C10D_GLOO)
#define USE_C10D_GLOO
#endif
#if defined(PARE_WITH_NCCL) && !defined(USE_C10D_NCCL)
#define USE_C10D_NCCL
#endif

#include "distill/distributed.hpp"

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef PARE_WITH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef PARE_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "core/torch_errors.hpp"

namespace pare::detail {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::chrono::milliseconds kBeat{200};

std::string key(const std::string& name, int64_t rank) { return "pare/" + name + "/" + std::to_string(rank); }

std::vector<uint8_t> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::string first_line(const std::string& message) { return message.substr(0, message.find('\n')); }

// Rank `rank`'s heartbeat: every kBeat it writes "<beats> <collectives entered>" under pare/beat/<rank>.
class Heartbeat {
 public:
  Heartbeat(c10::intrusive_ptr<c10d::Store> store, int64_t rank) : store_(std::move(store)), rank_(rank) {
    beat();
    thread_ = std::thread([this] { run(); });
  }
  ~Heartbeat() { stop(); }
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  std::atomic<int64_t> collectives{0};

 private:
  void beat() {
    store_->set(key("beat", rank_), bytes_of(std::to_string(beats_++) + " " + std::to_string(collectives.load())));
  }
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!wake_.wait_for(lock, kBeat, [this] { return stopping_; })) {
      try {
        beat();
      } catch (const std::exception&) {  // the store is gone (rank 0 ended): the next collective says so
        return;
      }
    }
  }
  c10::intrusive_ptr<c10d::Store> store_;
  int64_t rank_, beats_ = 0;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

// A rank's last heartbeat: beats written and collectives entered; nullopt if none.
std::optional<std::pair<int64_t, int64_t>> read_beat(c10d::Store& store, int64_t rank) {
  if (!store.check({key("beat", rank)})) return std::nullopt;
  const auto raw = store.get(key("beat", rank));
  std::istringstream in(std::string(raw.begin(), raw.end()));
  std::pair<int64_t, int64_t> beat{-1, -1};
  in >> beat.first >> beat.second;
  return beat;
}

// c10d's group types differ between LibTorch lines (ProcessGroupGloo is a
// ProcessGroup in 1.x, a Backend in 2.x); their collectives are spelled alike.
template <class PG>
class C10dGroup : public Group {
 public:
  C10dGroup(c10::intrusive_ptr<PG> group, c10::intrusive_ptr<c10d::Store> store, const DistributedOptions& options)
      : group_(std::move(group)), store_(std::move(store)), options_(options) {
    if (store_) heartbeat_ = std::make_unique<Heartbeat>(store_, rank());
  }
  ~C10dGroup() override { heartbeat_.reset(); }
  int64_t rank() const override { return group_->getRank(); }
  int64_t size() const override { return group_->getSize(); }

  void all_reduce_sum(std::vector<torch::Tensor>& tensors, const std::string& what) override {
    run(what, [&] {
      std::vector<c10::intrusive_ptr<c10d::Work>> works;
      for (auto& t : tensors) {
        std::vector<at::Tensor> one{t};
        works.push_back(group_->allreduce(one));
      }
      for (auto& w : works) w->wait(options_.timeout());
    });
  }
  void broadcast(std::vector<torch::Tensor>& tensors, const std::string& what) override {
    run(what, [&] {
      std::vector<c10::intrusive_ptr<c10d::Work>> works;
      for (auto& t : tensors) {
        std::vector<at::Tensor> one{t};
        works.push_back(group_->broadcast(one));
      }
      for (auto& w : works) w->wait(options_.timeout());
    });
  }
  void finish() override {
    auto done = torch::ones({1});
    std::vector<torch::Tensor> one{done};
    all_reduce_sum(one, "the end-of-training barrier");
    heartbeat_.reset();
  }

 private:
  void run(const std::string& what, const std::function<void()>& body) {
    if (heartbeat_) ++heartbeat_->collectives;
    const auto started = Clock::now();
    try {
      body();
    } catch (const std::exception& e) {
      fail(what, first_line(torch_message(e)), seconds_since(started));
    }
  }
  [[noreturn]] void fail(const std::string& what, const std::string& cause, double waited) const;

  c10::intrusive_ptr<PG> group_;
  c10::intrusive_ptr<c10d::Store> store_;
  DistributedOptions options_;
  std::unique_ptr<Heartbeat> heartbeat_;
};

// Which ranks the failure comes from: those whose heartbeat stopped (lost),
// else those alive but behind in collectives (hung or slow).
std::string diagnose(c10d::Store& store, int64_t me, int64_t size, int64_t my_collectives) {
  std::vector<std::optional<std::pair<int64_t, int64_t>>> before(size), after(size);
  try {
    for (int64_t r = 0; r < size; ++r) before[r] = r == me ? std::nullopt : read_beat(store, r);
    std::this_thread::sleep_for(kBeat * 3);
    for (int64_t r = 0; r < size; ++r) after[r] = r == me ? std::nullopt : read_beat(store, r);
  } catch (const std::exception&) {
    return me == 0
               ? "the rendezvous store stopped answering"
               : "rank 0 lost (its rendezvous store no longer answers: the process ended or its host is unreachable)";
  }
  std::vector<std::string> lost, behind;
  for (int64_t r = 0; r < size; ++r) {
    if (r == me) continue;
    if (!after[r] || (before[r] && before[r]->first == after[r]->first)) lost.push_back(std::to_string(r));
    else if (after[r]->second < my_collectives) behind.push_back(std::to_string(r));
  }
  auto list = [](const std::vector<std::string>& ranks) {
    std::string out;
    for (const auto& r : ranks) out += (out.empty() ? "" : ", ") + r;
    return out;
  };
  if (!lost.empty())
    return std::string(lost.size() == 1 ? "rank " : "ranks ") + list(lost) +
           " lost (heartbeat stopped: the process ended or hangs whole)";
  if (!behind.empty())
    return std::string(behind.size() == 1 ? "rank " : "ranks ") + list(behind) +
           " alive but never reached this collective (hung or too slow for the timeout)";
  return "every other rank is alive and reached this collective";
}

template <class PG>
void C10dGroup<PG>::fail(const std::string& what, const std::string& cause, double waited) const {
  std::ostringstream out;
  out << "Distill: rank " << rank() << " of " << size() << ": ";
  if (store_) out << diagnose(*store_, rank(), size(), heartbeat_ ? heartbeat_->collectives.load() : 0) << "; ";
  out.precision(3);
  out << what << " failed after " << waited << " s (timeout " << options_.timeout().count() / 1000.0
      << " s): " << cause;
  throw Error(out.str(), Error::Kind::Runtime);
}

c10::intrusive_ptr<c10d::Store> make_store(const DistributedOptions& o) {
  if (!o.store_file().empty()) {
    auto store = c10::make_intrusive<c10d::FileStore>(o.store_file(), int(o.world_size()));
    store->setTimeout(o.timeout());
    return store;
  }
  c10d::TCPStoreOptions tcp;
  tcp.port = static_cast<std::uint16_t>(o.master_port());
  tcp.isServer = o.rank() == 0;
  tcp.numWorkers = static_cast<std::size_t>(o.world_size());
  tcp.waitWorkers = false;  // join_group waits itself and names who is missing
  tcp.timeout = o.timeout();
  try {
    return c10::make_intrusive<c10d::TCPStore>(o.master_addr(), tcp);
  } catch (const std::exception& e) {
    throw Error("Distill: rank " + std::to_string(o.rank()) + " could not " + (o.rank() == 0 ? "serve" : "reach") +
                    " the rendezvous store at " + o.master_addr() + ":" + std::to_string(o.master_port()) + " (" +
                    first_line(torch_message(e)) +
                    "); expected rank 0 to listen there (MASTER_ADDR, MASTER_PORT), within the timeout",
                Error::Kind::Runtime);
  }
}

// Every rank announces itself, then waits for the others; names those that never came.
void rendezvous(c10d::Store& store, const DistributedOptions& o) {
  store.set(key("joined", o.rank()), bytes_of("1"));
  const auto deadline = Clock::now() + o.timeout();
  std::vector<std::string> missing;
  do {
    missing.clear();
    for (int64_t r = 0; r < o.world_size(); ++r)
      if (!store.check({key("joined", r)})) missing.push_back(std::to_string(r));
    if (missing.empty()) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } while (Clock::now() < deadline);
  std::string names;
  for (const auto& r : missing) names += (names.empty() ? "" : ", ") + r;
  throw Error("Distill: rank " + std::to_string(o.rank()) + " of " + std::to_string(o.world_size()) + ": rank(s) " +
                  names + " did not join within " + std::to_string(o.timeout().count() / 1000.0) +
                  " s; expected every rank to start with the same WORLD_SIZE and rendezvous",
              Error::Kind::Runtime);
}

// Gloo writes to its peers with plain writev: once a peer has died, a write
// raises SIGPIPE, which ends a C++ host (Python ignores the signal, so Python
// users never see this). Threads inherit their creator's signal mask: the
// group's threads, started while this is in scope, get EPIPE instead, and the
// collective fails with a pare::Error that names the lost rank. The calling
// thread's own mask is restored.
class SigpipeBlockedInNewThreads {
 public:
  SigpipeBlockedInNewThreads() {
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, &saved_);
  }
  ~SigpipeBlockedInNewThreads() { pthread_sigmask(SIG_SETMASK, &saved_, nullptr); }
  SigpipeBlockedInNewThreads(const SigpipeBlockedInNewThreads&) = delete;
  SigpipeBlockedInNewThreads& operator=(const SigpipeBlockedInNewThreads&) = delete;

 private:
  sigset_t saved_{};
};

std::unique_ptr<Group> make_gloo(const c10::intrusive_ptr<c10d::Store>& store, const DistributedOptions& o) {
#ifdef PARE_WITH_GLOO
  auto gloo_options = c10d::ProcessGroupGloo::Options::create(o.timeout());
  const bool loopback = o.master_addr() == "localhost" || o.master_addr().rfind("127.", 0) == 0;
  if (const char* interface = std::getenv("GLOO_SOCKET_IFNAME"))
    gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
  else if (loopback && o.store_file().empty())
    gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  else gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, int(o.rank()), int(o.world_size()), gloo_options);
  return std::make_unique<C10dGroup<c10d::ProcessGroupGloo>>(group, store, o);
#else
  (void)store;
  (void)o;
  throw Error(
      "Distill: distributed training on CPU needs Gloo, and this build of pare has none (its LibTorch "
      "ships no Gloo headers); install libgloo-dev and rebuild, or train in one process",
      Error::Kind::Runtime);
#endif
}

std::unique_ptr<Group> make_nccl(const c10::intrusive_ptr<c10d::Store>& store, const DistributedOptions& o) {
#ifdef PARE_WITH_NCCL
  auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
  nccl_options->timeout = o.timeout();
  auto group = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, int(o.rank()), int(o.world_size()), nccl_options);
  return std::make_unique<C10dGroup<c10d::ProcessGroupNCCL>>(group, store, o);
#else
  (void)store;
  (void)o;
  throw Error(
      "Distill: the NCCL backend is not in this build (its LibTorch has no CUDA/NCCL); use "
      "CommBackend::Gloo or train in one process",
      Error::Kind::Runtime);
#endif
}

}  // namespace

std::unique_ptr<Group> join_group(const DistributedOptions& o, const c10::Device& device) {
  if (auto given = o.process_group()) {
    require(given->getRank() == o.rank() && given->getSize() == o.world_size(),
            "Distill: the process group is rank " + std::to_string(given->getRank()) + " of " +
                std::to_string(given->getSize()) + " but DistributedOptions says " + std::to_string(o.rank()) + " of " +
                std::to_string(o.world_size()));
    return std::make_unique<C10dGroup<c10d::ProcessGroup>>(given, c10::intrusive_ptr<c10d::Store>(), o);
  }
  auto store = make_store(o);
  rendezvous(*store, o);
  const bool nccl = o.backend() == CommBackend::NCCL || (o.backend() == CommBackend::Auto && device.is_cuda());
  const SigpipeBlockedInNewThreads sigpipe_blocked;  // for the group's threads and the heartbeat's
  try {
    return nccl ? make_nccl(store, o) : make_gloo(store, o);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error("Distill: rank " + std::to_string(o.rank()) + " could not set up the " + (nccl ? "NCCL" : "Gloo") +
                    " process group: " + first_line(torch_message(e)),
                Error::Kind::Runtime);
  }
}

}  // namespace pare::detail
