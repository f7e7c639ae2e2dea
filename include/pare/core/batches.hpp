#pragma once
// pare::BatchSource — how every pass reads data in batches: QuantizeInt8 its
// calibration inputs (pare::CalibrationData), Distill its training pairs
// (pare::TrainingData). Header-only; needs no LibTorch.
//
//   pare::CalibrationData in_memory(batches);                  // a list, read in order
//   pare::TrainingData streamed([&](int64_t epoch) {           // produced on demand
//     return pare::TrainingData::Reader([&, i = 0]() mutable -> std::optional<pare::Batch> {
//       if (i == n) return std::nullopt;
//       return load(i++);
//     });
//   }, /*batches_per_epoch=*/n);
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

namespace pare {

/// Batches of T a pass reads once per epoch, each epoch from the start: a list
/// held in memory, or batches produced on demand by a function of the epoch.
/// QuantizeInt8 reads one epoch; Distill reads epochs() of them.
template <class T>
class BatchSource {
 public:
  /// The next batch of the epoch, or std::nullopt at its end.
  using Reader = std::function<std::optional<T>()>;
  /// Starts epoch `epoch` (0-based) and returns its reader.
  using Opener = std::function<Reader(int64_t epoch)>;

  /// Batches held in memory, read in order (Distill shuffles them unless told not to).
  BatchSource(std::vector<T> batches) : batches_(std::move(batches)), size_(int64_t(batches_.size())) {}
  /// Batches produced on demand, `open(epoch)` at the start of each epoch.
  /// `batches_per_epoch` sizes progress reports: -1 if unknown.
  BatchSource(Opener open, int64_t batches_per_epoch = -1) : open_(std::move(open)), size_(batches_per_epoch) {}

  /// A reader that can be read through once (a generator, a file being read):
  /// enough for calibration; a pass that needs a second epoch finds it empty
  /// and says so.
  static BatchSource once(Reader reader, int64_t batches = -1) {
    auto shared = std::make_shared<Reader>(std::move(reader));
    return BatchSource(
        [shared](int64_t epoch) -> Reader {
          if (epoch == 0) return *shared;
          return [] { return std::optional<T>(); };
        },
        batches);
  }

  /// True for a list held in memory (batches() holds it).
  bool in_memory() const { return !open_; }
  /// The list; empty for batches produced on demand.
  const std::vector<T>& batches() const { return batches_; }
  /// Batches per epoch; -1 if unknown.
  int64_t size() const { return size_; }
  /// The reader of epoch `epoch`: over batches() in order, or open(epoch).
  /// A reader over the list refers to this source: read it while the source lives.
  Reader open(int64_t epoch) const {
    if (open_) return open_(epoch);
    return [this, next = size_t(0)]() mutable -> std::optional<T> {
      if (next >= batches_.size()) return std::nullopt;
      return batches_[next++];
    };
  }

 private:
  std::vector<T> batches_;
  Opener open_;
  int64_t size_ = 0;
};

}  // namespace pare
