// `pare compress in.pt -o out.pt --target-speedup 3 --max-drop 1 --train T --eval E [--int8]`:
// the search of CompressTo from a shell; T and E are torch.save files of
// (inputs, labels) batches, read as `pare distill` reads --data.

#include "tools/cli_compress_to.hpp"

#include <iostream>

#include <torch/script.h>

#include "core/atomic_file.hpp"
#include "pare/compress/compress_to.hpp"
#include "pare/convert/export.hpp"
#include "tools/cli_distill.hpp"

namespace pare {
namespace {

constexpr int64_t kDataBatch = 64;  // rows per batch when a file holds one (inputs, labels) tuple

}  // namespace

bool CompressToArgs::requested() const {
  return target_speedup != 0 || max_drop >= 0 || !train.empty() || !eval.empty() || batch != 0 || epochs >= 0 ||
         max_candidates != 0;
}

void add_compress_to_options(CLI::App& cmd, CompressToArgs& a) {
  const CompressToOptions defaults(Latency::speedup(2), 0, {}, {});
  cmd.add_option("--target-speedup", a.target_speedup,
                 "search channel widths (and int8 with --int8, and Distill epochs) until the model runs this many "
                 "times faster than the input on this machine, measured as a file (needs --max-drop, --train, --eval)");
  cmd.add_option("--max-drop", a.max_drop, "with --target-speedup: points of top-1 accuracy (on --eval) it may lose");
  cmd.add_option("--train", a.train,
                 "with --target-speedup: training batches, torch.save([(inputs, labels), ...]) or "
                 "torch.save((inputs, labels)), for BatchNorm statistics, Distill and int8 calibration");
  cmd.add_option("--eval", a.eval, "with --target-speedup: evaluation batches, same format");
  cmd.add_option("--batch", a.batch,
                 "with --target-speedup: the batch size latency is measured at (default " +
                     std::to_string(defaults.target().batch()) + ")");
  cmd.add_option("--epochs", a.epochs,
                 "with --target-speedup: Distill epochs per candidate, at most (default " +
                     std::to_string(defaults.epochs()) + ")");
  cmd.add_option("--max-candidates", a.max_candidates,
                 "with --target-speedup: candidates measured before the best found is kept (default " +
                     std::to_string(defaults.max_candidates()) + ")");
}

int compress_to_command(const CompressToArgs& a, const std::string& in, const std::string& out_path, bool int8,
                        const std::string& report, std::ostream& out, std::ostream& err) {
  require(a.target_speedup > 1, "compress: --target-speedup must be above 1 (e.g. 3 for three times faster), got " +
                                    std::to_string(a.target_speedup));
  require(a.max_drop >= 0, "compress: --target-speedup needs --max-drop POINTS (e.g. 1)");
  require(!a.train.empty() && !a.eval.empty(),
          "compress: --target-speedup needs --train T.pt and --eval E.pt (torch.save([(inputs, labels), ...]))");
  require(a.batch >= 0 && a.epochs >= -1 && a.max_candidates >= 0,
          "compress: --batch, --epochs and --max-candidates must not be negative");
  auto target = Latency::speedup(a.target_speedup);
  if (a.batch > 0) target.batch(a.batch);
  auto options = CompressToOptions(target, a.max_drop, load_labelled_batches(a.train, kDataBatch, "--train"),
                                   load_labelled_batches(a.eval, kDataBatch, "--eval"))
                     .int8(int8);
  if (a.epochs >= 0) options.epochs(a.epochs);
  if (a.max_candidates > 0) options.max_candidates(a.max_candidates);
  torch::jit::Module model;
  try {
    model = torch::jit::load(in);
  } catch (const c10::Error&) {
    throw Error("'" + in + "' is not a TorchScript file (expected the output of torch.jit.save or pare compress)");
  }
  err << "compress: searching for " << a.target_speedup << "x within " << a.max_drop << " points...\n";
  const auto result = Pipeline()
                          .add(CompressTo(options))
                          .add(ExportTorchScript(ExportTorchScriptOptions(out_path).freeze(false)))
                          .run(model);
  out << result.report.to_string();
  out << result.report.at("compress_to").labels.at("message") << "\n";
  if (!report.empty()) detail::write_file_atomically(report, result.report.to_json(), "--report");
  return 0;
}

}  // namespace pare
