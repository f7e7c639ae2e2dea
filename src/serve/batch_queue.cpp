#include "serve/batch_queue.hpp"

#include <algorithm>
#include <iterator>
#include <utility>

#include "core/ivalue_walk.hpp"

namespace pare::detail {

void Request::answer(RunOutcome outcome) {
  answered = true;
  // Before the caller sees its answer: a caller that sends its next request at
  // once must not be counted twice (rule 3 would wait for one too many).
  if (running_in) std::exchange(running_in, nullptr)->finished();
  done(std::move(outcome));
}

// One wake-up in flight at a time: a sender of asynchronous requests at
// hundreds of thousands a second spent most of its time waking workers that
// the first wake-up's worker would have served anyway.
bool BatchQueue::push(RequestPtr& request) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!enqueue(request)) return false;
    wake = !wake_pending_;
    wake_pending_ = true;
  }
  if (wake) wake_.notify_one();
  return true;
}

BatchQueue::Admission BatchQueue::admit(RequestPtr& request) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!enqueue(request)) return Admission::Full;
    if (rule_.slots > 0 && !closed_) {
      if (claim_pass()) return Admission::Run;
      // Every pass is busy: the first one given back wakes a worker
      // (release_pass sees this request queued), so no wake-up is spent now.
      return Admission::Queued;
    }
  }
  wake_.notify_one();
  return Admission::Queued;
}

// Under the lock: `request` at the back unless max_queue requests already wait.
bool BatchQueue::enqueue(RequestPtr& request) {
  if (rule_.max_queue > 0 && queue_.size() >= rule_.max_queue) return false;
  const auto now = Clock::now();
  if (!queue_.empty()) {  // an arrival that found company: part of a burst
    const auto spacing = now - last_arrival_;
    spacing_ = spacing_.count() == 0 ? spacing : (7 * spacing_ + spacing) / 8;
  }
  last_arrival_ = now;
  queue_.push_back(std::move(request));
  sync_size();
  peak_ = std::max(peak_, queue_.size() + running_);
  return true;
}

bool BatchQueue::claim_pass() {
  size_t busy = busy_slots_.load();
  while (busy < rule_.slots)
    if (busy_slots_.compare_exchange_weak(busy, busy + 1)) return true;
  return false;
}

RequestPtr BatchQueue::cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = std::find_if(queue_.begin(), queue_.end(), [&](const RequestPtr& r) { return r->id == id; });
  if (it == queue_.end()) return nullptr;
  RequestPtr taken = std::move(*it);
  queue_.erase(it);
  sync_size();
  return taken;
}

void BatchQueue::close() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
  }
  wake_.notify_all();
}

void BatchQueue::finished() {
  std::lock_guard<std::mutex> lock(mutex_);
  --running_;
}

// Lock-free unless requests wait: then a worker waiting for a pass is woken.
// The lock, taken and dropped, orders this with a worker between its check of
// the passes and its wait (it can't miss the wake-up).
void BatchQueue::release_pass() {
  if (rule_.slots == 0) return;
  busy_slots_.fetch_sub(1);
  if (queued_.load() == 0) return;
  { std::lock_guard<std::mutex> lock(mutex_); }
  wake_.notify_one();
}

// Lock-free: a request arriving at the same moment may queue meanwhile, which
// only reorders two concurrent arrivals.
bool BatchQueue::try_run_now() {
  return rule_.slots > 0 && queued_.load() == 0 && claim_pass();
}

std::vector<RequestPtr> BatchQueue::take_now(std::vector<RequestPtr>& expired) {
  std::lock_guard<std::mutex> lock(mutex_);
  return hand_out(expired);
}

size_t BatchQueue::depth() const { return queued_.load(); }

std::vector<RequestPtr> BatchQueue::next_batch(std::vector<RequestPtr>& expired) {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    wake_pending_ = false;  // this worker looks at the queue now
    while (!((closed_ || !queue_.empty()) && (slot_free() || queue_.empty()))) {
      wake_.wait(lock);
      wake_pending_ = false;
    }
    if (queue_.empty()) return {};  // closed and drained
    // This worker is idle: wait while more company may come (each push wakes it).
    while (!closed_ && !queue_.empty() && rows_queued() < full_rows() && !everyone_here()) {
      const auto at = due_at();
      if (Clock::now() >= at) break;
      wake_.wait_until(lock, at);
      wake_pending_ = false;
    }
    if (queue_.empty() || (rule_.slots > 0 && !claim_pass())) continue;  // taken meanwhile: the requests, or the pass
    auto batch = hand_out(expired);
    if (batch.empty() && rule_.slots > 0) busy_slots_.fetch_sub(1);  // only expired ones: the pass goes back
    if (!queue_.empty()) wake_.notify_one();  // leftovers: another idle worker may start on them
    if (!batch.empty() || !expired.empty()) return batch;
  }
}

// Under the lock: the front batch, marked as running here.
std::vector<RequestPtr> BatchQueue::hand_out(std::vector<RequestPtr>& expired) {
  auto batch = take(Clock::now(), expired);
  sync_size();
  for (auto& r : batch) r->running_in = this;
  running_ += batch.size();
  if (++batches_ % kWindow == 0) previous_peak_ = std::exchange(peak_, queue_.size() + running_);
  return batch;
}

// Waiting longer than a few of a burst's own spacings between arrivals means
// the burst is over; batch_gap caps the wait when arrivals are sparse, and an
// eighth of it is the least wait (a setting of an hour still means "never early").
Clock::duration BatchQueue::gap() const {
  if (spacing_.count() == 0) return rule_.gap;
  return std::min(rule_.gap, std::max(rule_.gap / 8, 4 * spacing_));
}

// A gap of max_delay or more turns rule 3 off, this part of it too: only a full
// batch or max_delay sends one then.
bool BatchQueue::everyone_here() const {
  return rule_.gap < rule_.max_delay && queue_.size() + running_ >= std::max(peak_, previous_peak_);
}

Clock::time_point BatchQueue::due_at() const {
  return std::min(queue_.front()->arrival + rule_.max_delay, last_arrival_ + gap());
}

int64_t BatchQueue::rows_queued() const {
  int64_t rows = 0;
  for (const auto& r : queue_) rows += std::max<int64_t>(r->rows, 1);
  return rows;
}

int64_t BatchQueue::full_rows() const { return rule_.preferred.empty() ? rule_.max_batch : rule_.preferred.back(); }

int64_t BatchQueue::cut_to_preferred(int64_t rows) const {
  auto it = std::upper_bound(rule_.preferred.begin(), rule_.preferred.end(), rows);
  return it == rule_.preferred.begin() ? rows : *std::prev(it);
}

// The oldest live request and the compatible ones behind it, up to the batch's
// row limit; expired requests anywhere in the queue go to `expired`.
std::vector<RequestPtr> BatchQueue::take(Clock::time_point now, std::vector<RequestPtr>& expired) {
  for (auto it = queue_.begin(); it != queue_.end();) {
    if ((*it)->deadline > now) {
      ++it;
      continue;
    }
    expired.push_back(std::move(*it));
    it = queue_.erase(it);
  }
  std::vector<RequestPtr> batch;
  if (queue_.empty()) return batch;
  const Request& front = *queue_.front();
  auto fits = [&](const Request& r, int64_t rows, int64_t limit) {
    return &r == &front || (front.rows > 0 && compatible(front, r) && rows + r.rows <= limit);
  };
  int64_t available = 0;
  for (const auto& r : queue_)
    if (fits(*r, available, rule_.max_batch)) available += std::max<int64_t>(r->rows, 1);
  const int64_t limit = cut_to_preferred(available);
  int64_t rows = 0;
  for (auto it = queue_.begin(); it != queue_.end() && rows < limit;) {
    if (fits(**it, rows, limit)) {
      rows += std::max<int64_t>((*it)->rows, 1);
      batch.push_back(std::move(*it));
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
  return batch;
}

int64_t batch_rows(const Inputs& inputs) {
  int64_t rows = -1;
  for (const auto& input : inputs) {
    if (!input.isTensor() || input.toTensor().dim() == 0) return 0;
    const int64_t r = input.toTensor().size(0);
    if (rows >= 0 && r != rows) return 0;
    rows = r;
  }
  return std::max<int64_t>(rows, 0);
}

bool compatible(const Request& a, const Request& b) {
  if (a.model != b.model || a.rows == 0 || b.rows == 0 || a.inputs.size() != b.inputs.size()) return false;
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    const auto& x = a.inputs[i].toTensor();
    const auto& y = b.inputs[i].toTensor();
    if (x.scalar_type() != y.scalar_type() || x.sizes().slice(1) != y.sizes().slice(1)) return false;
  }
  return true;
}

Inputs merge_inputs(const std::vector<RequestPtr>& batch, const Stack& stack) {
  Inputs merged;
  for (size_t i = 0; i < batch.front()->inputs.size(); ++i) {
    std::vector<at::Tensor> parts;
    for (const auto& r : batch) parts.push_back(r->inputs[i].toTensor());
    merged.emplace_back(stack(parts));
  }
  return merged;
}

namespace {

// Walks a batched output before any of it is cut, in order: batching cuts only
// tensors with a row per merged input row, inside tuples or tensor lists.
struct SplittableRows {
  int64_t total;
  void enter(const c10::IValue& v, Container kind, size_t) {
    if (kind != Container::Tuple && !v.isTensorList()) refuse(v);
  }
  void leave(const c10::IValue&, Container) {}
  void leaf(const c10::IValue& v) {
    if (!v.isTensor()) refuse(v);
    const auto& t = v.toTensor();
    require(t.dim() > 0 && t.size(0) == total,
            "the model's batched output has " + std::string(t.dim() ? std::to_string(t.size(0)) : "no") +
                " rows for " + std::to_string(total) + " merged input rows; this model can't be batched along "
                "dim 0: use RunnerOptions().max_batch(1)",
            Error::Kind::Runtime);
  }
  [[noreturn]] static void refuse(const c10::IValue& v) {
    throw Error("the model returned a " + v.tagKind() +
                    "; batching splits tensors, tuples and lists of tensors: use RunnerOptions().max_batch(1)",
                Error::Kind::Runtime);
  }
};

}  // namespace

c10::IValue split_rows(const c10::IValue& output, int64_t begin, int64_t rows, int64_t total) {
  SplittableRows check{total};
  detail::visit(output, check, DictKeys::Skip);  // qualified: c10::visit (variants) is found by ADL
  return map_tensors(output, [&](const at::Tensor& t) { return t.narrow(0, begin, rows); });
}

}  // namespace pare::detail
