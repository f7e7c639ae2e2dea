#include "pare/tools/cli.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include <CLI/CLI.hpp>
#include <torch/script.h>
#include <torch/serialize.h>

#include "pare/tools/bench.hpp"
#include "tools/cli_compress_to.hpp"
#include "tools/cli_distill.hpp"
#include "pare/convert/export.hpp"
#include "pare/prune/prune.hpp"
#include "pare/prune/prune_channels.hpp"
#include "pare/quantize/quantize.hpp"
#include "core/atomic_file.hpp"
#include "core/torch_errors.hpp"
#include "pare/serve/runner.hpp"
#include "core/text.hpp"

namespace pare {
namespace {

using detail::join;

torch::jit::Module load_model(const std::string& path) {
  struct stat info {};
  require(::stat(path.c_str(), &info) == 0, "no such file: '" + path + "'");
  try {
    return torch::jit::load(path);
  } catch (const c10::Error& e) {
    throw Error("'" + path + "' is not a TorchScript file (expected the output of torch.jit.save or pare compress)");
  }
}

void progress_bar(std::ostream& err, const std::string& label, int64_t done, int64_t total) {
  if (total <= 0) return;
  const int width = 30, filled = int(width * done / total);
  err << "\r" << label << " [" << std::string(filled, '#') << std::string(width - filled, ' ') << "] " << done << "/"
      << total << (done == total ? "\n" : "") << std::flush;
}

// Errors print as one line: multi-line messages (TorchScript tracebacks) keep their first and last lines.
std::string one_line(const std::string& message) {
  std::vector<std::string> lines;
  std::istringstream in(message);
  for (std::string line; std::getline(in, line);)
    if (line.find_first_not_of(" \t") != std::string::npos) lines.push_back(line);
  if (lines.size() <= 1) return lines.empty() ? message : lines.front();
  return lines.front() + " ... " + lines.back();
}

struct CompressArgs {
  std::string in, out, scope = to_string(L1PruneOptions(0.5).scope()), calib, observer, report;
  double prune = -1;
  bool structured = false, int8 = false, dynamic = false, per_tensor = false, channels_last = false;
  bool never_slower = QuantizeInt8Options(InputBatches{}).never_slower();
  double channels = -1;        // --channels: fraction of channels to remove
  std::string channels_input;  // --input: example input shape for --channels and --channels-last
  CompressToArgs target;       // --target-speedup and its data: CompressTo instead of the passes above
};

// --target-speedup: the search decides what to apply; the flags that name passes would contradict it.
int compress_to_target(const CompressArgs& a, std::ostream& out, std::ostream& err) {
  require(a.prune < 0 && a.channels < 0 && !a.dynamic && !a.structured && !a.channels_last && a.calib.empty() &&
              a.observer.empty() && !a.per_tensor,
          "compress: --target-speedup searches the passes itself; it takes --int8 (allowed or not) but not "
          "--prune, --channels, --dynamic, --calib (int8 calibrates on --train) or their options");
  return compress_to_command(a.target, a.in, a.out, a.int8, a.report, out, err);
}

int compress(const CompressArgs& a, std::ostream& out, std::ostream& err) {
  if (a.target.requested()) return compress_to_target(a, out, err);
  require(a.prune >= 0 || a.int8 || a.dynamic || a.channels >= 0,
          "nothing to do: give --channels, --prune, --int8 and/or --dynamic");
  require(a.channels >= 0 || a.channels_last || a.channels_input.empty(), "--input needs --channels AMOUNT or --channels-last");
  require(!a.channels_last || (!a.int8 && !a.dynamic),
          "--channels-last applies to float exports; int8 convolutions choose their own memory order");
  require(!a.channels_last || !a.channels_input.empty(),
          "--channels-last needs --input SHAPE: the converted model is checked on a random batch of that shape");
  require(a.prune >= 0 || !a.structured, "--structured needs --prune AMOUNT");
  require(!(a.int8 && a.dynamic), "--int8 and --dynamic contradict each other: static int8 calibrates, dynamic does not");
  require(a.int8 || (a.calib.empty() && a.observer.empty() && !a.per_tensor && a.never_slower),
          "--calib, --observer, --per-tensor and --never-slower need --int8");
  require(!a.int8 || !a.calib.empty(), "--int8 needs --calib CALIB.pt (torch.save([batch, ...], \"calib.pt\"))");
  auto model = load_model(a.in);
  Pipeline pipeline;
  if (a.channels >= 0) {
    auto options = PruneChannelsOptions(a.channels).scope(parse_scope(a.scope));
    if (!a.channels_input.empty()) options.input_shape(parse_shape(a.channels_input));
    pipeline.add(PruneChannels(options));
  }
  if (a.prune >= 0) {
    auto options = L1PruneOptions(a.prune).scope(parse_scope(a.scope));
    if (a.structured) options.structured(0);
    pipeline.add(L1Prune(options));
  }
  if (a.int8) {
    auto options =
        QuantizeInt8Options(load_calibration_file(a.calib)).per_channel(!a.per_tensor).never_slower(a.never_slower);
    if (!a.observer.empty()) options.observer(ObserverOptions(parse_observer_kind(a.observer)));
    options.progress([&err](int64_t done, int64_t total) { progress_bar(err, "calibrating", done, total); });
    pipeline.add(QuantizeInt8(options));
  }
  if (a.dynamic) pipeline.add(QuantizeInt8Dynamic());
  auto export_options = ExportTorchScriptOptions(a.out).freeze(!a.int8 && !a.dynamic);
  if (a.channels_last)
    export_options.channels_last(true).verify_with({{torch::randn(parse_shape(a.channels_input))}});
  pipeline.add(ExportTorchScript(export_options));
  const auto result = pipeline.run(model);
  out << result.report.to_string();
  if (!a.report.empty()) detail::write_file_atomically(a.report, result.report.to_json(), "--report");
  return 0;
}

struct BenchArgs {
  std::vector<std::string> models, inputs{"1x1x28x28"};
  std::vector<int64_t> batches{1};
  std::vector<int64_t> threads{1};
  double seconds = 1.0;
  int64_t rounds = BenchOptions().rounds();
  bool json = false;
  std::string html;
  double rate = 0;  // > 0: open loop through a Runner
  int64_t max_batch = 1;
  size_t max_queue = 0;
  double timeout = 0;
};

// The CLI speaks seconds, as Python does; the library takes std::chrono durations.
std::chrono::milliseconds milliseconds_of(double seconds, const char* flag) {
  require(std::isfinite(seconds) && seconds >= 0 && seconds <= 3600,
          std::string("bench: ") + flag + " must be in [0, 3600] seconds, got " + std::to_string(seconds));
  return std::chrono::milliseconds(std::llround(seconds * 1000));
}

// Open loop: each model behind a Runner, sent single requests at a.rate per second.
int bench_open_loop(const BenchArgs& a, const std::vector<std::vector<int64_t>>& shapes, std::ostream& out) {
  std::vector<std::vector<c10::IValue>> inputs(64);
  for (auto& list : inputs)
    for (const auto& shape : shapes) list.emplace_back(torch::randn(shape));
  std::vector<std::pair<std::string, OpenLoopResult>> rows;
  for (const auto& path : a.models) {
    Runner runner(load_model(path), RunnerOptions().max_batch(a.max_batch).max_queue(a.max_queue).warmup(10)
                                        .example_inputs(inputs.front()).timeout(milliseconds_of(a.timeout, "--timeout")));
    rows.emplace_back(path.substr(path.find_last_of('/') + 1),
                      run_open_loop(runner, OpenLoopOptions(a.rate).duration(milliseconds_of(a.seconds, "--seconds")).inputs(inputs)));
  }
  out << (a.json ? open_loop_json(rows) + "\n" : open_loop_table(rows));
  return 0;
}

int bench(const BenchArgs& a, std::ostream& out) {
  std::vector<std::vector<int64_t>> shapes;
  for (const auto& s : a.inputs) shapes.push_back(parse_shape(s));
  if (a.rate > 0) return bench_open_loop(a, shapes, out);
  std::vector<std::pair<std::string, torch::jit::Module>> models;
  for (const auto& path : a.models) models.emplace_back(path.substr(path.find_last_of('/') + 1), load_model(path));
  const auto rows = benchmark_models(std::move(models),
                                     BenchOptions()
                                         .inputs(shapes)
                                         .batches(a.batches)
                                         .threads(a.threads)
                                         .duration(milliseconds_of(a.seconds, "--seconds"))
                                         .rounds(a.rounds));
  out << (a.json ? bench_json(rows) + "\n" : bench_table(rows));
  if (!a.html.empty()) detail::write_file_atomically(a.html, bench_html(rows), "--html");
  return 0;
}

std::string describe_model(const std::string& path) {
  torch::jit::ExtraFilesMap extras{{kReportExtraFile, ""}, {kQuantizationExtraFile, ""}};
  auto model = torch::jit::load(path, c10::nullopt, extras);
  struct stat info {};
  ::stat(path.c_str(), &info);
  std::ostringstream out;
  out << "file: " << path << " (" << info.st_size << " bytes)\n";
  out << "type: " << model.type()->name()->qualifiedName() << "\n";

  const auto layers = weight_table(model);
  if (!layers.empty()) {
    PassReport entry;
    entry.pass = "layers (parameters)";
    entry.layers = layers;
    Report report;
    report.passes.push_back(entry);
    out << report.to_string();
  }
  // A frozen model keeps its weights as graph constants and its layers as operators.
  std::map<std::string, int> operators;
  int64_t constant_elements = 0, constant_nonzeros = 0;
  for (const auto* node : model.get_method("forward").graph()->nodes()) {
    const std::string kind = node->kind().toQualString();
    if (kind.rfind("quantized::", 0) == 0 || kind == "aten::linear" || kind.rfind("aten::conv", 0) == 0 ||
        kind == "aten::quantize_per_tensor" || kind == "aten::dequantize" || kind == "prim::CallMethod")
      ++operators[kind];
    if (node->kind() == c10::prim::Constant && node->output()->type()->kind() == c10::TypeKind::TensorType) {
      const auto t = node->t(c10::attr::value);
      if (t.dim() >= 2 && t.is_floating_point()) {
        constant_elements += t.numel();
        constant_nonzeros += t.count_nonzero().item<int64_t>();
      }
    }
  }
  if (constant_elements > 0)
    out << "frozen float weights: " << constant_elements << " elements, " << constant_nonzeros << " non-zero ("
        << 100.0 * (1.0 - double(constant_nonzeros) / double(constant_elements)) << "% sparse)\n";
  out << "operators in forward:";
  for (const auto& [kind, count] : operators) out << " " << kind << " x" << count;
  out << (operators.count("quantized::linear") || operators.count("quantized::conv2d") ||
                  operators.count("quantized::linear_relu") || operators.count("quantized::conv2d_relu") ||
                  operators.count("quantized::linear_dynamic")
              ? "\nquantized: yes (int8)\n"
              : "\nquantized: no\n");
  if (!extras[kQuantizationExtraFile].empty()) out << "pare quantization metadata: " << extras[kQuantizationExtraFile] << "\n";
  if (extras[kReportExtraFile].empty()) {
    out << "pare report: none (not written by pare)\n";
  } else {
    out << "pare report (embedded):\n" << Report::from_json(extras[kReportExtraFile]).to_string();
  }
  return out.str();
}

}  // namespace

Report inspect_report(const std::string& path) {
  load_model(path);  // clear errors for a missing or foreign file
  return detail::translate_torch_errors("inspect: '" + path + "'", [&] {
    torch::jit::ExtraFilesMap extras{{kReportExtraFile, ""}};
    auto model = torch::jit::load(path, c10::nullopt, extras);
    Report report;
    if (!extras[kReportExtraFile].empty()) report = Report::from_json(extras[kReportExtraFile]);
    auto& entry = report.add("inspect");
    entry.layers = weight_table(model);
    struct stat info {};
    ::stat(path.c_str(), &info);
    entry.metrics["file_bytes"] = double(info.st_size);
    entry.labels["path"] = path;
    return report;
  });
}

std::string inspect_model(const std::string& path) {
  load_model(path);  // clear errors for a missing or foreign file
  return detail::translate_torch_errors("inspect: '" + path + "'", [&] { return describe_model(path); });
}

namespace {

// The table of commands: each command's flags and where they are stored.
CLI::App* add_compress_command(CLI::App& app, CompressArgs& c) {
  auto* compress_cmd = app.add_subcommand("compress", "prune and/or quantize a model and export it");
  compress_cmd->add_option("model", c.in, "input TorchScript file")->required();
  compress_cmd->add_option("-o,--output", c.out, "output TorchScript file")->required();
  compress_cmd->add_option("--prune", c.prune, "fraction of weights to prune, in [0, 1]");
  compress_cmd->add_option("--scope", c.scope, "pruning scope: " + join(scope_names(), " or "))
      ->check(CLI::IsMember(scope_names()))
      ->capture_default_str();
  compress_cmd->add_flag("--structured", c.structured, "prune whole output channels");
  compress_cmd->add_option("--channels", c.channels, "fraction of channels to remove (the model gets smaller), in [0, 1]");
  compress_cmd->add_option("--input", c.channels_input, "example input shape for --channels and --channels-last, e.g. 1x3x224x224");
  compress_cmd->add_flag("--channels-last", c.channels_last,
                         "store convolution weights in NHWC order (float exports; needs --input)");
  compress_cmd->add_flag("--int8", c.int8, "static int8 quantization (needs --calib)");
  compress_cmd->add_flag("--dynamic", c.dynamic, "dynamic int8 quantization of Linear layers");
  compress_cmd->add_option("--calib", c.calib, "calibration batches: torch.save([batch, ...], \"calib.pt\")");
  compress_cmd->add_option("--observer", c.observer,
                           "activation observer: " + join(observer_kind_names(), ", ") + " (default " +
                               to_string(ObserverOptions().kind()) + ")")
      ->check(CLI::IsMember(observer_kind_names()));
  compress_cmd->add_flag("--per-tensor", c.per_tensor, "per-tensor instead of per-channel weight scales");
  compress_cmd->add_option("--never-slower", c.never_slower,
                           "time each int8 island against float on the last calibration batch and keep float where "
                           "int8 is slower (false: keep every island int8, the same graph on every run)")
      ->capture_default_str();
  compress_cmd->add_option("--report", c.report, "write the report as JSON here");
  add_compress_to_options(*compress_cmd, c.target);
  return compress_cmd;
}

CLI::App* add_bench_command(CLI::App& app, BenchArgs& b) {
  auto* bench_cmd = app.add_subcommand("bench", "latency and throughput, side by side with ratios to the first model");
  bench_cmd->add_option("models", b.models, "TorchScript files")->required();
  bench_cmd->add_option("--input", b.inputs, "input shape(s), batch first, e.g. 1x1x28x28");
  bench_cmd->add_option("--batch", b.batches, "batch sizes, e.g. 1,8,64")->delimiter(',');
  bench_cmd->add_option("--threads", b.threads, "client thread counts, e.g. 1,2")->delimiter(',');
  bench_cmd->add_option("--seconds", b.seconds, "measuring time per cell");
  bench_cmd->add_option("--rounds", b.rounds, "split each cell's time into this many slices, run in turn across models")
      ->capture_default_str();
  bench_cmd->add_flag("--json", b.json, "print JSON instead of a table");
  bench_cmd->add_option("--html", b.html, "also write latency and throughput charts as an HTML page here");
  bench_cmd->add_option("--rate", b.rate, "open loop: requests per second offered (Poisson arrivals) through a Runner");
  bench_cmd->add_option("--max-batch", b.max_batch, "open loop: the Runner's max_batch");
  bench_cmd->add_option("--max-queue", b.max_queue, "open loop: the Runner's max_queue (0: unbounded)");
  bench_cmd->add_option("--timeout", b.timeout, "open loop: each request's deadline in seconds (0: none)");
  return bench_cmd;
}

}  // namespace

int cli_main(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  CLI::App app{"pare: compress, benchmark and inspect TorchScript models", "pare"};
  app.require_subcommand(1);
  CompressArgs c;
  auto* compress_cmd = add_compress_command(app, c);
  BenchArgs b;
  auto* bench_cmd = add_bench_command(app, b);
  std::string inspect_path, inspect_html;
  auto* inspect_cmd = app.add_subcommand("inspect", "layers, sparsity, quantization and pare's report of a model");
  inspect_cmd->add_option("model", inspect_path, "TorchScript file")->required();
  inspect_cmd->add_option("--html", inspect_html, "also write the report as a self-contained HTML page here");

  DistillArgs d;
  add_distill_command(app, d);

  const std::vector<std::string> commands{"compress", "bench", "inspect", "distill"};
  if (args.size() > 1 && args[1].rfind('-', 0) != 0 &&
      std::find(commands.begin(), commands.end(), args[1]) == commands.end()) {
    err << "pare: unknown command '" << args[1]
        << "'; expected compress, bench, inspect or distill (see pare --help)\n";
    return 2;
  }
  std::vector<std::string> reversed(args.rbegin(), args.rend() - (args.empty() ? 0 : 1));
  try {
    app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    out << app.help();
    return 0;
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) { out << app.help(); return 0; }
    err << "pare: " << one_line(e.what()) << " (see pare --help)\n";
    return 2;
  }
  try {
    if (compress_cmd->parsed()) return compress(c, out, err);
    if (bench_cmd->parsed()) return bench(b, out);
    if (d.command->parsed()) return distill_command(d, out, err);
    out << inspect_model(inspect_path);
    if (!inspect_html.empty())
      detail::write_file_atomically(inspect_html, inspect_report(inspect_path).to_html("pare inspect: " + inspect_path), "--html");
    return 0;
  } catch (const Error& e) {
    err << "pare: " << one_line(e.what()) << "\n";
    return e.kind() == Error::Kind::InvalidArgument ? 2 : 1;
  } catch (const std::exception& e) {
    err << "pare: " << detail::torch_message(e) << "\n";
    return 1;
  }
}

}  // namespace pare
