#pragma once
// A latency target from Python keywords, shared by PruneChannels/prune_channels
// (target_speedup=...) and CompressTo: Python floats in seconds, as everywhere in pare.

#include <optional>
#include <string>

#include "bindings.hpp"
#include "pare/prune/latency.hpp"

namespace pare::python {

/// Latency::speedup(speedup) or Latency::at_most(seconds, batch) with the measuring settings;
/// std::nullopt when neither is given (`required`: pare.InvalidArgument instead). Both: pare.InvalidArgument.
inline std::optional<Latency> to_latency(std::optional<double> speedup, std::optional<double> seconds, int64_t batch,
                                         int threads, int repeats, const std::string& cache_dir, const std::string& who,
                                         bool required = false) {
  require(!(speedup && seconds), who + ": give target_speedup or target_seconds, not both");
  require(!required || speedup || seconds, who + ": needs target_speedup=FACTOR or target_seconds=SECONDS");
  if (!speedup && !seconds) return std::nullopt;
  try {
    auto latency =
        speedup ? Latency::speedup(*speedup)
                : Latency::at_most(
                      from_seconds<std::chrono::microseconds>(*seconds, who + ": target_seconds", 3600, false), batch);
    return latency.batch(batch).threads(threads).repeats(repeats).cache_dir(cache_dir);
  } catch (const Error& e) {
    throw Error(who + ": " + e.what(), e.kind());
  }
}

}  // namespace pare::python
