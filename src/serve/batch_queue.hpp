#pragma once
// The runner's request queue and its batching rule (internal to pare).
//
// A batch goes out when the first of these holds:
//   1. full: the queued rows reach max_batch (or the largest preferred size);
//   2. the oldest request has waited max_delay;
//   3. waiting can't help: every request the runner has lately held at once is
//      here (queued or running: in a closed loop, all the callers are waiting),
//      or no request arrived for the gap while this worker sat idle. The gap is
//      4x the recent spacing of arrivals that found company (a burst's own
//      rhythm), at most batch_gap and at least batch_gap / 8.
// Requests past their deadline are taken out and answered with Timeout; they never run.
//
// With a limit on concurrent forward passes (BatchRule::slots), a worker's
// batch also needs a free pass, and a blocking caller that finds one free takes
// it (admit): it then runs the queue's front batches itself, its own request
// among them, with no hand-off to a worker (Runner: "a request queues only when
// queueing helps"). The queue, the passes and rule 3's count share one mutex,
// and batches always leave from the front, so no request runs ahead of one
// that queued before it.

#include <functional>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include <torch/script.h>

#include "pare/serve/runner.hpp"

namespace pare::detail {

using Clock = std::chrono::steady_clock;
using Inputs = std::vector<c10::IValue>;

/// The model requests run on, with the cache namespace that goes with it.
/// swap() replaces both together, so a request never pairs one with the other's.
struct ServedModel {
  torch::jit::Module module;
  std::string cache_namespace;
  /// The module each batch size runs on (Runner: RunnerOptions::model_copies).
  std::shared_mutex copies_mutex;
  std::map<int64_t, torch::jit::Module> copies;
};

class BatchQueue;

struct Request {
  uint64_t id = 0;  // what cancel() looks for (an address could be reused by a later request)
  Inputs inputs;
  int64_t rows = 0;  // 0: not batchable (non-tensor inputs), runs alone
  std::shared_ptr<ServedModel> model;
  Clock::time_point arrival;
  Clock::time_point deadline = Clock::time_point::max();
  Runner::Done done;
  bool answered = false;
  BatchQueue* running_in = nullptr;  // set while a worker of this queue has it

  void answer(RunOutcome outcome);
};
using RequestPtr = std::unique_ptr<Request>;

struct BatchRule {
  int64_t max_batch = 1;
  Clock::duration max_delay{}, gap{};
  std::vector<int64_t> preferred;  // ascending
  size_t max_queue = 0;            // 0: unbounded
  size_t slots = 0;                // forward passes at once, batches and callers' own; 0: unbounded
};

/// Thread-safe. Workers block in next_batch(); callers push() and may cancel().
class BatchQueue {
 public:
  explicit BatchQueue(BatchRule rule) : rule_(std::move(rule)) {}

  /// Queues `request` (taking it) unless max_queue requests already wait; false then.
  bool push(RequestPtr& request);
  /// Takes the request `id` back if it is still queued (nullptr if a worker has it).
  RequestPtr cancel(uint64_t id);
  /// Blocks until a batch is due; empty once closed and drained. Requests found
  /// past their deadline are moved to `expired` (possibly with an empty batch).
  std::vector<RequestPtr> next_batch(std::vector<RequestPtr>& expired);
  /// Wakes every worker; queued requests are still handed out, then next_batch returns empty.
  void close();
  size_t depth() const;
  /// A request next_batch() handed out was answered (Request::answer calls it).
  void finished();
  /// Queues `request` like push(); with a limit on passes and one free, also
  /// claims it for the caller (Run): the caller then runs take_now() batches
  /// and gives the pass back with release_pass().
  enum class Admission { Run, Queued, Full };
  Admission admit(RequestPtr& request);
  /// Claims a free pass when nothing is queued, for a request that then runs
  /// alone on its caller's thread without entering the queue; give it back
  /// with release_pass(). False without a limit on passes.
  bool try_run_now();
  /// With a pass claimed: the front batch at once, without waiting for company
  /// (empty when nothing is queued). Expired requests go to `expired`.
  std::vector<RequestPtr> take_now(std::vector<RequestPtr>& expired);
  /// Gives back a pass claimed by admit() or held by a batch of next_batch().
  void release_pass();

 private:
  Clock::time_point due_at() const;  // when the front batch goes out by delay or gap
  Clock::duration gap() const;
  int64_t rows_queued() const;
  int64_t full_rows() const;
  std::vector<RequestPtr> take(Clock::time_point now, std::vector<RequestPtr>& expired);
  int64_t cut_to_preferred(int64_t rows) const;
  bool everyone_here() const;
  bool slot_free() const { return rule_.slots == 0 || busy_slots_.load() < rule_.slots; }
  /// Takes a free pass (lock-free: the fast path of try_run_now needs no lock).
  bool claim_pass();
  /// Mirrors queue_.size() for readers without the lock; called after each change.
  void sync_size() { queued_.store(queue_.size()); }
  bool enqueue(RequestPtr& request);
  std::vector<RequestPtr> hand_out(std::vector<RequestPtr>& expired);

  const BatchRule rule_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<RequestPtr> queue_;
  Clock::time_point last_arrival_{};
  Clock::duration spacing_{0};  // moving average of arrival spacing within bursts; 0: none seen yet
  // Rule 3's concurrency: the most requests held at once (queued + running)
  // in this window of kWindow batches and in the last one, so that it follows
  // the callers when they become fewer.
  static constexpr uint64_t kWindow = 64;
  size_t running_ = 0;
  size_t peak_ = 0, previous_peak_ = 0;
  uint64_t batches_ = 0;
  std::atomic<size_t> busy_slots_{0};  // passes running, on workers and callers
  std::atomic<size_t> queued_{0};      // queue_.size()
  bool closed_ = false;
  bool wake_pending_ = false;  // push() woke a worker that has not looked at the queue yet
};

/// Rows along dim 0 shared by every input, or 0 when the request can't merge.
int64_t batch_rows(const Inputs& inputs);
/// Same model, same dtypes, same shapes after dim 0.
bool compatible(const Request& a, const Request& b);
/// The batch's inputs concatenated along dim 0.
/// Joins the parts of one input along dim 0 (at::cat, or a copy to the model's device).
using Stack = std::function<at::Tensor(const std::vector<at::Tensor>&)>;
Inputs merge_inputs(const std::vector<RequestPtr>& batch, const Stack& stack);
/// The rows [begin, begin + rows) of a batched output (a tensor, or a tuple/list of tensors).
c10::IValue split_rows(const c10::IValue& output, int64_t begin, int64_t rows, int64_t total);

}  // namespace pare::detail
