#pragma once
// `pare distill` (internal to the command line): its arguments, how they are
// declared on the CLI11 app, and the command.

#include <cstdint>
#include <iosfwd>
#include <string>

#include <CLI/CLI.hpp>

#include "pare/distill/distill.hpp"

namespace pare {

/// (input, target) batches from a torch.save file: a tuple (inputs, targets),
/// cut into batches of `batch`, or a list of (input, target) tuples (each cut
/// the same way). pare::Error naming `flag` for anything else.
std::vector<Batch> load_labelled_batches(const std::string& path, int64_t batch, const std::string& flag);

struct DistillArgs {
  std::string teacher, student, output, data, eval, optimizer = "adam", checkpoint, report;
  int64_t batch = 64, epochs = 1, nproc = 1, master_port = 0;
  double lr = 1e-3, temperature = 4.0, alpha = 0.7, timeout = 0;
  uint64_t seed = 0;
  bool no_shuffle = false;
  CLI::App* command = nullptr;  // set by add_distill_command: parsed() tells whether it ran
};

void add_distill_command(CLI::App& app, DistillArgs& args);

/// Runs `pare distill`: launches --nproc ranks, or trains as one (a rank when
/// the launcher's environment variables are set). Throws pare::Error.
int distill_command(const DistillArgs& args, std::ostream& out, std::ostream& err);

}  // namespace pare
