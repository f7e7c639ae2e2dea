#include "testing.hpp"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "fashion_mnist.hpp"
#include "pare/export.hpp"
#include "pare/prune.hpp"

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
  const auto result = pare::Pipeline()
                          .add(pare::L1Prune(pare::L1PruneOptions().amount(0.5).scope(pare::Scope::Global)))
                          .add(pare::ExportTorchScript(path, pare::ExportOptions().freeze(true).verify_with(samples())))
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
  pare::Pipeline().add(pare::ExportTorchScript(path, pare::ExportOptions().verify_with(samples()))).run(model);
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
  CHECK_THROWS_WITH(pare::ExportTorchScript(""), Catch::Contains("path is empty"));
  CHECK_THROWS_AS(pare::ExportTorchScript("m.pt", pare::ExportOptions().tolerance(-1)), pare::Error);
  auto model = pare::examples::make_fashion_cnn({4, 8, 16}, 5);
  const auto bad_input = std::vector<std::vector<torch::jit::IValue>>{{torch::randn({1, 3, 5, 5})}};
  CHECK_THROWS_WITH(pare::Pipeline()
                        .add(pare::ExportTorchScript(dir.file("x.pt"), pare::ExportOptions().verify_with(bad_input)))
                        .run(model),
                    Catch::Contains("failed on sample input 0"));
  CHECK_THROWS_WITH(pare::Pipeline().add(pare::ExportTorchScript(dir.file("no/such/dir/x.pt"))).run(model),
                    Catch::Contains("could not write"));
  CHECK_THROWS_WITH(pare::read_embedded_report(dir.file("missing.pt")), Catch::Contains("not a loadable TorchScript"));
}
