// The `pare` command line and what it shares with the library: observer and
// scope names, calibration files written by stock PyTorch, `pare bench`.

#include "support/testing.hpp"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "pare/tools/bench.hpp"
#include "pare/tools/cli.hpp"
#include "pare/prune/prune.hpp"
#include "pare/quantize/quantize.hpp"

namespace fs = std::filesystem;

namespace {

// Model and calibration files written by stock PyTorch (Debian's python3-torch)
// at test time, once per run: the files users bring, not pare's own output.
constexpr const char* kWriteFiles = R"(
import sys, torch
d = sys.argv[1]
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(4 * 26 * 26, 10)).eval()
torch.jit.script(model).save(d + "/model.pt")
batch = lambda: torch.rand(8, 1, 28, 28)
torch.save([batch()], d + "/one.pt")
torch.save([batch(), batch()], d + "/two.pt")
torch.save([batch() for _ in range(9)], d + "/many.pt")
torch.save(torch.rand(70, 1, 28, 28), d + "/bare.pt")
torch.save([(batch(),)], d + "/one_tuple.pt")
torch.save((batch(),), d + "/tuple.pt")
torch.save([], d + "/empty.pt")
torch.save({"x": batch()}, d + "/dict.pt")
torch.save([1, 2], d + "/numbers.pt")
)";

struct StockFiles {
  fs::path dir = fs::temp_directory_path() / ("pare_cli_" + std::to_string(::getpid()));
  StockFiles() {
    fs::create_directories(dir);
    const fs::path script = dir / "write_files.py";
    std::ofstream(script) << kWriteFiles;
    const std::string command = std::string(PARE_PYTHON) + " " + script.string() + " " +
                                dir.string();
    INFO("stock PyTorch writes the test files: " << command << " (needs python3-torch; configure with -DPARE_PYTHON=...)");
    REQUIRE(std::system(command.c_str()) == 0);
  }
  ~StockFiles() { remove_tree(dir.string()); }
  std::string operator()(const std::string& name) const { return (dir / name).string(); }
};

const StockFiles& stock() {
  static StockFiles files;
  return files;
}

struct CliRun {
  int code;
  std::string out, err;
};

CliRun cli(std::vector<std::string> args) {
  args.insert(args.begin(), "pare");
  std::ostringstream out, err;
  const int code = pare::cli_main(args, out, err);
  return {code, out.str(), err.str()};
}

int64_t rows(const pare::InputBatches& batches) {
  int64_t n = 0;
  for (const auto& batch : batches) n += batch.at(0).toTensor().size(0);
  return n;
}

}  // namespace

TEST_CASE("calibration files of 1, 2 and many batches and a bare tensor from torch.save load") {
  const auto& files = stock();
  const auto one = pare::load_calibration_file(files("one.pt"));  // Python pickles a 1-list with APPEND
  CHECK(one.size() == 1);
  CHECK(one[0].at(0).toTensor().sizes() == c10::IntArrayRef{8, 1, 28, 28});
  CHECK(pare::load_calibration_file(files("two.pt")).size() == 2);
  const auto many = pare::load_calibration_file(files("many.pt"));
  CHECK(many.size() == 9);
  CHECK(rows(many) == 72);
  const auto bare = pare::load_calibration_file(files("bare.pt"));
  CHECK(bare.size() == 3);  // 70 rows in batches of 32: 32, 32, 6
  CHECK(rows(bare) == 70);
  CHECK(pare::load_calibration_file(files("bare.pt"), 10).size() == 7);
  CHECK(pare::load_calibration_file(files("one_tuple.pt")).size() == 1);
  CHECK(pare::load_calibration_file(files("tuple.pt")).at(0).size() == 1);
  // The values are the ones Python wrote: the two loads of one file agree, and differ between files.
  CHECK(torch::equal(one[0][0].toTensor(), pare::load_calibration_file(files("one.pt"))[0][0].toTensor()));
  CHECK(!torch::equal(one[0][0].toTensor(), many[0][0].toTensor()));
}

TEST_CASE("bad calibration files are refused with pare::Error") {
  const auto& files = stock();
  CHECK_THROWS_WITH(pare::load_calibration_file(files("missing.pt")), Catch::Contains("no such calibration file"));
  CHECK_THROWS_WITH(pare::load_calibration_file(files("empty.pt")), Catch::Contains("holds no batches"));
  CHECK_THROWS_WITH(pare::load_calibration_file(files("numbers.pt")), Catch::Contains("expected tensors or tuples"));
  // LibTorch 1.13 cannot unpickle a dict written by Python; 2.x reads it and pare refuses the dict.
  CHECK_THROWS_WITH(pare::load_calibration_file(files("dict.pt")),
                    Catch::Contains("dict.pt") && (Catch::Contains("not a torch.save file of tensors") ||
                                                   Catch::Contains("holds a GenericDict; expected tensors")));
  CHECK_THROWS_WITH(pare::load_calibration_file(files("model.pt")), Catch::Contains("is a TorchScript model"));
  CHECK_THROWS_WITH(pare::load_calibration_file(files("two.pt"), 0), Catch::Contains("batch_size must be positive"));
  std::ifstream whole(files("many.pt"), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(whole)), {});
  for (const size_t keep : {size_t(0), size_t(3), bytes.size() / 2, bytes.size() - 30}) {
    const auto truncated = files("truncated.pt");
    std::ofstream(truncated, std::ios::binary) << bytes.substr(0, keep);
    CHECK_THROWS_AS(pare::load_calibration_file(truncated), pare::Error);
  }
}

TEST_CASE("the CLI accepts every observer name the library knows, and only those") {
  const auto& files = stock();
  const auto names = pare::observer_kind_names();
  REQUIRE(names.size() == 5);
  const auto help = cli({"compress", "--help"}).out;
  for (const auto& name : names) {
    CHECK(pare::to_string(pare::parse_observer_kind(name)) == name);
    CHECK_THAT(help, Catch::Contains(name));
    const auto run = cli({"compress", files("model.pt"), "-o", files("int8.pt"), "--int8", "--calib", files("two.pt"),
                          "--observer", name});
    INFO(name << ": " << run.err);
    CHECK(run.code == 0);
  }
  const auto wrong = cli({"compress", files("model.pt"), "-o", files("int8.pt"), "--int8", "--calib",
                          files("one.pt"), "--observer", "moving_average"});
  CHECK(wrong.code == 2);
  CHECK_THAT(wrong.err, Catch::Contains("moving_average_minmax"));
}

TEST_CASE("the CLI's pruning scope defaults to the library's and names come from one table") {
  const auto& files = stock();
  for (const auto& name : pare::scope_names()) CHECK(pare::to_string(pare::parse_scope(name)) == name);
  CHECK_THROWS_WITH(pare::parse_scope("globl"), Catch::Contains("expected one of local, global"));
  const auto run = cli({"compress", files("model.pt"), "-o", files("pruned.pt"), "--prune", "0.5", "--report",
                        files("report.json")});
  REQUIRE(run.code == 0);
  std::ifstream report(files("report.json"));
  const std::string json((std::istreambuf_iterator<char>(report)), {});
  CHECK(pare::Report::from_json(json).at("l1_prune").labels.at("scope") ==
        pare::to_string(pare::L1PruneOptions(0.5).scope()));
}

TEST_CASE("pare compress quantizes with a one-batch calibration file from stock PyTorch") {
  const auto& files = stock();
  const auto run = cli({"compress", files("model.pt"), "-o", files("one_batch_int8.pt"), "--int8", "--calib",
                        files("one.pt")});
  INFO(run.err);
  REQUIRE(run.code == 0);
  CHECK(pare::read_quantization_info(files("one_batch_int8.pt")).has_value());
}

TEST_CASE("a benchmark client thread whose model throws is reported, not std::terminate") {
  torch::jit::Module failing("__torch__.Failing");
  failing.define("def forward(self, x):\n  return x.view(3, 7)\n");
  const auto options = pare::BenchOptions().inputs({{1, 1, 28, 28}}).threads({2}).duration(std::chrono::milliseconds(50)).warmup(0);
  CHECK_THROWS_WITH(pare::benchmark_models({{"failing", failing}}, options),
                    Catch::Contains("2 of 2 client threads failed") && Catch::Contains("model 'failing'") &&
                        Catch::Contains("view"));
  // One client runs on the calling thread: its failure is a pare::Error too, not LibTorch's c10::Error.
  CHECK_THROWS_AS(pare::benchmark_models({{"failing", failing}}, pare::BenchOptions().threads({1}).warmup(0)),
                  pare::Error);
}

TEST_CASE("benchmark rounds: every cell is measured in each round, and bad counts are refused") {
  torch::jit::Module doubling("__torch__.Doubling");
  doubling.define("def forward(self, x):\n  return x * 2\n");
  torch::jit::Module summing("__torch__.Summing");
  summing.define("def forward(self, x):\n  return x.sum(1)\n");
  // Each round's slice of a cell ends after at least one timed call, so 4 rounds give at least 4 calls.
  const auto options =
      pare::BenchOptions().batches({1, 4}).duration(std::chrono::milliseconds(8)).rounds(4).warmup(0);
  const auto rows = pare::benchmark_models({{"doubling", doubling}, {"summing", summing}}, options);
  REQUIRE(rows.size() == 4);
  for (const auto& row : rows) {
    INFO(row.model << " batch " << row.batch);
    CHECK(row.calls >= 4);
    CHECK(row.p50_ms > 0);
    CHECK(row.p50_ms <= row.p99_ms);
    CHECK(row.samples_per_second > 0);
  }
  CHECK(rows[0].model == "doubling");
  CHECK(rows[3].model == "summing");
  CHECK(rows[3].batch == 4);
  CHECK(rows[3].p50_ratio == Approx(rows[3].p50_ms / rows[1].p50_ms));
  CHECK(pare::BenchOptions().rounds() == 10);
  for (int bad : {0, -1, 101})
    CHECK_THROWS_WITH(pare::benchmark_models({{"doubling", doubling}}, pare::BenchOptions().rounds(bad)),
                      Catch::Contains("rounds must be in [1, 100], got " + std::to_string(bad)));
}
