#pragma once
// `pare compress --target-speedup` (internal to the command line): CompressTo
// from a shell, its flags on the compress command and the run.

#include <cstdint>
#include <iosfwd>
#include <string>

#include <CLI/CLI.hpp>

namespace pare {

struct CompressToArgs {
  double target_speedup = 0, max_drop = -1;
  std::string train, eval;
  int64_t batch = 0, epochs = -1, max_candidates = 0;
  /// True when any of the flags was given: the compress command then runs CompressTo.
  bool requested() const;
};

/// Declares --target-speedup, --max-drop, --train, --eval, --batch, --epochs and --max-candidates on `compress`.
void add_compress_to_options(CLI::App& compress, CompressToArgs& args);

/// Runs CompressTo on the model at `in`, writes the chosen model to `out_path` (and the report as JSON
/// to `report` unless empty); `int8`: int8 allowed. Throws pare::Error.
int compress_to_command(const CompressToArgs& args, const std::string& in, const std::string& out_path, bool int8,
                        const std::string& report, std::ostream& out, std::ostream& err);

}  // namespace pare
