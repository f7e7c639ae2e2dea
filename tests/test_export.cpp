#include "support/testing.hpp"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>

#include "fashion_mnist.hpp"
#include "pare/convert/export.hpp"
#include "pare/prune/prune.hpp"

namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path = fs::temp_directory_path() / ("pare_export_" + std::to_string(::getpid()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() { remove_tree(path.string()); }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

std::vector<std::vector<torch::jit::IValue>> samples() {
  torch::manual_seed(1);
  return {{torch::randn({2, 1, 28, 28})}, {torch::randn({5, 1, 28, 28})}};
}

size_t files_in(const fs::path& dir) {
  return std::distance(fs::directory_iterator(dir), fs::directory_iterator());
}

}  // namespace

TEST_CASE("export writes a verified, frozen file with the report embedded") {
  TempDir dir;
  const auto model = pare::examples::make_fashion_cnn({4, 8, 16}, 1);
  const auto path = dir.file("m.pt");
  const auto result =
      pare::Pipeline()
          .add(pare::L1Prune(pare::L1PruneOptions(0.5).scope(pare::Scope::Global)))
          .add(pare::ExportTorchScript(pare::ExportTorchScriptOptions(path).freeze(true).verify_with(samples())))
          .run(model);
  const auto& entry = result.report.at("export_torchscript");
  CHECK(entry.metrics.at("file_bytes") == Approx(double(fs::file_size(path))));
  CHECK(entry.metrics.at("max_abs_diff") <= 1e-5);
  CHECK(entry.total_nonzeros() * 2 == entry.total_parameters());
  CHECK(files_in(dir.path) == 1);  // no temporary left behind

  auto reloaded = torch::jit::load(path);
  auto input = samples()[0][0].toTensor();
  auto original = model.clone();
  CHECK(reloaded.forward({input}).toTensor().sizes() == original.forward({input}).toTensor().sizes());
  CHECK(reloaded.parameters().size() == 0);  // frozen: weights are constants

  const auto embedded = pare::Report::from_json(pare::read_embedded_report(path));
  CHECK(embedded.has("l1_prune"));
  CHECK(embedded.has("export_torchscript"));
}

TEST_CASE("an unfrozen export keeps parameters and reproduces outputs") {
  TempDir dir;
  const auto model = pare::examples::make_fashion_cnn({4, 8, 16}, 2);
  const auto path = dir.file("plain.pt");
  pare::Pipeline().add(pare::ExportTorchScript(pare::ExportTorchScriptOptions(path).verify_with(samples()))).run(model);
  auto reloaded = torch::jit::load(path);
  CHECK(reloaded.parameters().size() == 8);
  auto input = samples()[1];
  auto copy = model.clone();
  CHECK(pare::max_abs_diff(reloaded.forward(input), copy.forward(input)) == 0.0);
  CHECK(pare::read_embedded_report(path).find("export_torchscript") != std::string::npos);
}

TEST_CASE("a failing check leaves neither the file nor a temporary") {
  TempDir dir;
  const auto path = dir.file("never.pt");
  auto model = pare::examples::make_fashion_cnn({4, 8, 16}, 3);
  CHECK_THROWS_WITH(pare::save_atomically(model, path, {}, [](const std::string&) { throw pare::Error("rejected"); }),
                    "rejected");
  CHECK(files_in(dir.path) == 0);
}

TEST_CASE("an existing file is replaced whole") {
  TempDir dir;
  const auto path = dir.file("m.pt");
  std::ofstream(path) << "old contents";
  pare::save_atomically(pare::examples::make_fashion_cnn({4, 8, 16}, 4), path);
  CHECK_NOTHROW(torch::jit::load(path));
  CHECK(files_in(dir.path) == 1);
}

TEST_CASE("max_abs_diff compares nested outputs") {
  using torch::jit::IValue;
  const auto a = torch::ones({2}), b = torch::full({2}, 1.5);
  CHECK(pare::max_abs_diff(IValue(a), IValue(b)) == 0.5);
  const auto ta = c10::ivalue::Tuple::create({IValue(a), IValue(a)});
  const auto tb = c10::ivalue::Tuple::create({IValue(a), IValue(b)});
  CHECK(pare::max_abs_diff(IValue(ta), IValue(tb)) == 0.5);
  CHECK_THROWS_AS(pare::max_abs_diff(IValue(a), IValue(torch::ones({3}))), pare::Error);
  CHECK_THROWS_AS(pare::max_abs_diff(IValue(ta), IValue(a)), pare::Error);
}

TEST_CASE("bad export arguments give pare::Error") {
  TempDir dir;
  CHECK_THROWS_WITH(pare::ExportTorchScript(pare::ExportTorchScriptOptions("")), Catch::Contains("path is empty"));
  CHECK_THROWS_AS(pare::ExportTorchScript(pare::ExportTorchScriptOptions("m.pt").tolerance(-1)), pare::Error);
  const std::vector<std::vector<torch::jit::IValue>> one_input{{torch::randn({1, 1, 28, 28})}};
  CHECK_THROWS_WITH(pare::ExportTorchScript(pare::ExportTorchScriptOptions("m.pt").channels_last(true).verify_with(one_input)),
                    Catch::Contains("channels_last needs freeze(true)"));
  CHECK_THROWS_WITH(pare::ExportTorchScript(pare::ExportTorchScriptOptions("m.pt").channels_last(true).freeze(true)),
                    Catch::Contains("verify_with"));
  auto model = pare::examples::make_fashion_cnn({4, 8, 16}, 5);
  const auto bad_input = std::vector<std::vector<torch::jit::IValue>>{{torch::randn({1, 3, 5, 5})}};
  CHECK_THROWS_WITH(pare::Pipeline()
                        .add(pare::ExportTorchScript(pare::ExportTorchScriptOptions(dir.file("x.pt")).verify_with(bad_input)))
                        .run(model),
                    Catch::Contains("failed on sample input 0"));
  CHECK_THROWS_WITH(pare::Pipeline().add(pare::ExportTorchScript(pare::ExportTorchScriptOptions(dir.file("no/such/dir/x.pt")))).run(model),
                    Catch::Contains("could not write"));
  CHECK_THROWS_WITH(pare::read_embedded_report(dir.file("missing.pt")), Catch::Contains("not a loadable TorchScript"));
}

TEST_CASE("max_abs_diff: NaN or Inf where the other side is finite is an infinite difference") {
  using torch::jit::IValue;
  const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
  const auto finite = torch::tensor({1.0, 2.0, 3.0});
  // Before: (x - y).abs().max() was NaN, which std::max(worst, NaN) then dropped: verification passed.
  CHECK(pare::max_abs_diff(IValue(finite), IValue(torch::tensor({1.0, nan, 3.0}))) == inf);
  CHECK(pare::max_abs_diff(IValue(torch::tensor({1.0, nan, 3.0})), IValue(finite)) == inf);
  CHECK(pare::max_abs_diff(IValue(finite), IValue(torch::tensor({1.0, 2.0, inf}))) == inf);
  CHECK(pare::max_abs_diff(IValue(torch::tensor({inf})), IValue(torch::tensor({-inf}))) == inf);
  CHECK(pare::max_abs_diff(IValue(torch::tensor({nan})), IValue(torch::tensor({inf}))) == inf);
  // The same non-finite value on both sides is no difference; the finite entries still count.
  CHECK(pare::max_abs_diff(IValue(torch::tensor({nan, 1.0, inf})), IValue(torch::tensor({nan, 1.25, inf}))) == 0.25);
}

TEST_CASE("export verification fails when the reloaded file's output is NaN where the module's is finite") {
  TempDir dir;
  // Finite on its first call (the in-memory reference), NaN on every later one:
  // the reloaded file starts from the saved counter, 1.
  torch::jit::Module model("__torch__.TurnsNaN");
  model.register_attribute("calls", c10::IntType::get(), int64_t(0));
  model.define(R"(
def forward(self, x):
  self.calls += 1
  if self.calls > 1:
    return x * float("nan")
  return x
)");
  const auto path = dir.file("nan.pt");
  const std::vector<std::vector<torch::jit::IValue>> inputs{{torch::ones({2, 3})}};
  CHECK_THROWS_WITH(pare::Pipeline().add(pare::ExportTorchScript(pare::ExportTorchScriptOptions(path).verify_with(inputs))).run(model),
                    Catch::Contains("NaN or Inf where the module's output is finite") && Catch::Contains("was not written"));
  CHECK(files_in(dir.path) == 0);
}

TEST_CASE("a missing directory is a pare::Error and leaves nothing behind") {
  TempDir dir;
  const auto model = pare::examples::make_fashion_cnn({4, 8, 16}, 6);
  CHECK_THROWS_AS(pare::save_atomically(model, dir.file("missing/m.pt")), pare::Error);
  CHECK_THROWS_AS(pare::save_atomically(model, ""), pare::Error);
  CHECK(files_in(dir.path) == 0);
}
