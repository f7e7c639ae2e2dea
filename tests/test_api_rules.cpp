// The API rules of docs/design.md, checked for every pass, options class and
// stats type: most at compile time (static_assert), the rest on the headers.
//   - a pass (or component) X takes XOptions and exposes `const XOptions& options()`;
//   - every option is declared by PARE_ARG: setter `XOptions& name(T)` and
//     getter `const T& name() const` share a name;
//   - one-argument constructors are explicit; where an options class has one
//     required argument, the pass takes that argument alone too (short form);
//   - every stats type has to_prometheus(labels).
#include "support/testing.hpp"

#include <ftw.h>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "pare/pare.hpp"
#include "pare/tools/bench.hpp"
#if __has_include("pare/distill/distributed.hpp")
#include "pare/distill/distributed.hpp"
#define PARE_HAS_DISTRIBUTED 1
#endif

// A named namespace: the using-directive must not reach the files that share
// this file's unity batch.
namespace pare_api_rules {

using namespace pare;

namespace {

// Option `name` of `X` was declared by PARE_ARG: its marker type T exists, the
// setter takes T and returns X& (chainable), the getter of the same name returns const T&.
#define PARE_CHECK_OPTION(X, name)                                                                                  \
  static_assert(std::is_same_v<decltype(std::declval<X&>().name(std::declval<typename X::name##_arg_type>())), X&>, \
                #X "::" #name "(value) must return " #X "&");                                                       \
  static_assert(std::is_same_v<decltype(std::declval<const X&>().name()), const typename X::name##_arg_type&>,      \
                #X "::" #name "() must return const T&");

#define PARE_CHECK_EACH(X, ...) PARE_CHECK_EACH_(X, __VA_ARGS__)
// One static_assert pair per option (up to 20 options a class).
#define PARE_CHECK_EACH_(X, ...) PARE_FOR_EACH(PARE_CHECK_OPTION, X, __VA_ARGS__)
#define PARE_FOR_EACH(M, X, ...)                                                                                      \
  PARE_FE_PICK(__VA_ARGS__, PARE_FE20, PARE_FE19, PARE_FE18, PARE_FE17, PARE_FE16, PARE_FE15, PARE_FE14, PARE_FE13,   \
               PARE_FE12, PARE_FE11, PARE_FE10, PARE_FE9, PARE_FE8, PARE_FE7, PARE_FE6, PARE_FE5, PARE_FE4, PARE_FE3, \
               PARE_FE2, PARE_FE1)                                                                                    \
  (M, X, __VA_ARGS__)
#define PARE_FE_PICK(_1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13, _14, _15, _16, _17, _18, _19, _20, N, \
                     ...)                                                                                          \
  N
#define PARE_FE1(M, X, a) M(X, a)
#define PARE_FE2(M, X, a, ...) M(X, a) PARE_FE1(M, X, __VA_ARGS__)
#define PARE_FE3(M, X, a, ...) M(X, a) PARE_FE2(M, X, __VA_ARGS__)
#define PARE_FE4(M, X, a, ...) M(X, a) PARE_FE3(M, X, __VA_ARGS__)
#define PARE_FE5(M, X, a, ...) M(X, a) PARE_FE4(M, X, __VA_ARGS__)
#define PARE_FE6(M, X, a, ...) M(X, a) PARE_FE5(M, X, __VA_ARGS__)
#define PARE_FE7(M, X, a, ...) M(X, a) PARE_FE6(M, X, __VA_ARGS__)
#define PARE_FE8(M, X, a, ...) M(X, a) PARE_FE7(M, X, __VA_ARGS__)
#define PARE_FE9(M, X, a, ...) M(X, a) PARE_FE8(M, X, __VA_ARGS__)
#define PARE_FE10(M, X, a, ...) M(X, a) PARE_FE9(M, X, __VA_ARGS__)
#define PARE_FE11(M, X, a, ...) M(X, a) PARE_FE10(M, X, __VA_ARGS__)
#define PARE_FE12(M, X, a, ...) M(X, a) PARE_FE11(M, X, __VA_ARGS__)
#define PARE_FE13(M, X, a, ...) M(X, a) PARE_FE12(M, X, __VA_ARGS__)
#define PARE_FE14(M, X, a, ...) M(X, a) PARE_FE13(M, X, __VA_ARGS__)
#define PARE_FE15(M, X, a, ...) M(X, a) PARE_FE14(M, X, __VA_ARGS__)
#define PARE_FE16(M, X, a, ...) M(X, a) PARE_FE15(M, X, __VA_ARGS__)
#define PARE_FE17(M, X, a, ...) M(X, a) PARE_FE16(M, X, __VA_ARGS__)
#define PARE_FE18(M, X, a, ...) M(X, a) PARE_FE17(M, X, __VA_ARGS__)
#define PARE_FE19(M, X, a, ...) M(X, a) PARE_FE18(M, X, __VA_ARGS__)
#define PARE_FE20(M, X, a, ...) M(X, a) PARE_FE19(M, X, __VA_ARGS__)

// Every options class and its options. The header scan below checks that no
// options class declares a setter by hand and that this list names every class.
PARE_CHECK_EACH(L1PruneOptions, amount, scope, structured, include, exclude)
PARE_CHECK_EACH(PruneChannelsOptions, amount, scope, norm, min_channels, round_to, include, exclude, input_shape,
                example_inputs, heads, heads_scope)
PARE_CHECK_EACH(RecalibrateBatchNormOptions, batches, max_batches)
PARE_CHECK_EACH(ObserverOptions, kind, percentile, averaging_constant, bins)
PARE_CHECK_EACH(QuantizeInt8Options, calibration, observer, per_channel, skip, engine, progress, never_slower,
                try_dynamic, fold_residual_adds)
PARE_CHECK_EACH(QuantizeInt8DynamicOptions, per_channel, skip, engine)
PARE_CHECK_EACH(ExportTorchScriptOptions, path, freeze, verify_with, tolerance, channels_last)
PARE_CHECK_EACH(ConvertPrecisionOptions, dtype, keep_fp32, channels_last)
PARE_CHECK_EACH(TraceOptions, training, check_inputs, tolerance, dynamic_batch)
PARE_CHECK_EACH(DistillLossOptions, temperature, alpha)
PARE_CHECK_EACH(DistillOptions, teacher, data, epochs, optimizer, optimizer_factory, lr, momentum, weight_decay,
                temperature, alpha, evaluate_on, shuffle, seed, progress, device, match)
PARE_CHECK_EACH(DistillMatch, teacher, student, loss, weight)
PARE_CHECK_EACH(InferenceCacheOptions, capacity_bytes, max_entries, ttl, shards, key_namespace, verify, remote,
                key_bits)
PARE_CHECK_EACH(RedisTierOptions, host, port, key_prefix, timeout, ttl, retry_after, max_idle_connections, password,
                user)
PARE_CHECK_EACH(TensorPoolOptions, max_bytes, size_classes, poison, small_bytes, memory, device_index)
PARE_CHECK_EACH(RunnerOptions, cache, cache_namespace, pool, warmup, example_inputs, max_batch, max_delay, batch_gap,
                preferred_batch_sizes, max_queue, timeout, threads, concurrency, hint, padding, device,
                outputs_on_device, model_copies)
PARE_CHECK_EACH(PaddingOptions, buckets, dim, pad_values, mask_input, mask_dtype, output_dim)
PARE_CHECK_EACH(BenchOptions, inputs, batches, threads, duration, warmup, rounds)
PARE_CHECK_EACH(OpenLoopOptions, rate, duration, seed, inputs)
PARE_CHECK_EACH(CompressToOptions, target, max_drop, train, eval, int8, epochs, max_candidates, calibration_batches, lr,
                engine)
#ifdef PARE_HAS_DISTRIBUTED
PARE_CHECK_EACH(DistributedOptions, rank, world_size, master_addr, master_port, store_file, timeout, backend, bucket_mb)
#endif

const std::set<std::string> kCheckedOptionClasses = {
    "L1PruneOptions",
    "PruneChannelsOptions",
    "RecalibrateBatchNormOptions",
    "ObserverOptions",
    "QuantizeInt8Options",
    "QuantizeInt8DynamicOptions",
    "ExportTorchScriptOptions",
    "ConvertPrecisionOptions",
    "TraceOptions",
    "DistillLossOptions",
    "DistillOptions",
    "InferenceCacheOptions",
    "RedisTierOptions",
    "TensorPoolOptions",
    "RunnerOptions",
    "PaddingOptions",
    "BenchOptions",
    "OpenLoopOptions",
    "CompressToOptions",
#ifdef PARE_HAS_DISTRIBUTED
    "DistributedOptions",
#endif
};

// X takes XOptions (explicitly) and exposes it as `const XOptions& options() const`.
template <class X, class Options>
constexpr bool takes_options() {
  return std::is_constructible_v<X, Options> && !std::is_convertible_v<Options, X> &&
         std::is_same_v<decltype(std::declval<const X&>().options()), const Options&>;
}
static_assert(takes_options<L1Prune, L1PruneOptions>());
static_assert(takes_options<PruneChannels, PruneChannelsOptions>());
static_assert(takes_options<RecalibrateBatchNorm, RecalibrateBatchNormOptions>());
static_assert(takes_options<QuantizeInt8, QuantizeInt8Options>());
static_assert(takes_options<QuantizeInt8Dynamic, QuantizeInt8DynamicOptions>());
static_assert(takes_options<ExportTorchScript, ExportTorchScriptOptions>());
static_assert(takes_options<ConvertPrecision, ConvertPrecisionOptions>());
static_assert(takes_options<Distill, DistillOptions>());
static_assert(takes_options<InferenceCache, InferenceCacheOptions>());
static_assert(takes_options<TensorPool, TensorPoolOptions>());
static_assert(takes_options<RedisTier, RedisTierOptions>());
static_assert(takes_options<CompressTo, CompressToOptions>());
static_assert(std::is_same_v<decltype(std::declval<const Runner&>().options()), const RunnerOptions&>);

// The one required argument: explicit in the options, and the short form of the pass.
template <class X, class Options, class Argument>
constexpr bool short_form() {
  return std::is_constructible_v<Options, Argument> && !std::is_convertible_v<Argument, Options> &&
         std::is_constructible_v<X, Argument> && !std::is_convertible_v<Argument, X>;
}
static_assert(short_form<L1Prune, L1PruneOptions, double>());
static_assert(short_form<PruneChannels, PruneChannelsOptions, double>());
static_assert(short_form<RecalibrateBatchNorm, RecalibrateBatchNormOptions, std::vector<std::vector<c10::IValue>>>());
static_assert(short_form<QuantizeInt8, QuantizeInt8Options, CalibrationData>());
static_assert(short_form<QuantizeInt8, QuantizeInt8Options, InputBatches>());
static_assert(short_form<ExportTorchScript, ExportTorchScriptOptions, std::string>());
static_assert(short_form<ExportTorchScript, ExportTorchScriptOptions, const char*>());
static_assert(short_form<ConvertPrecision, ConvertPrecisionOptions, c10::ScalarType>());
static_assert(std::is_constructible_v<OpenLoopOptions, double> && !std::is_convertible_v<double, OpenLoopOptions>);

// Other one-argument constructors are explicit too. ObserverOptions(ObserverKind)
// is the one conversion kept on purpose: `.observer(ObserverKind::MinMax)`.
static_assert(!std::is_convertible_v<torch::jit::Module, Runner>);
static_assert(!std::is_convertible_v<QuantizeInt8DynamicOptions, QuantizeInt8Dynamic>);
static_assert(std::is_convertible_v<ObserverKind, ObserverOptions>);

// Every stats type renders itself as Prometheus text, with and without labels.
template <class Stats>
constexpr bool has_prometheus() {
  return std::is_same_v<decltype(std::declval<const Stats&>().to_prometheus()), std::string> &&
         std::is_same_v<decltype(std::declval<const Stats&>().to_prometheus(prometheus::Labels{})), std::string>;
}
static_assert(has_prometheus<CacheStats>());
static_assert(has_prometheus<PoolStats>());
static_assert(has_prometheus<RunnerStats>());
static_assert(has_prometheus<RedisTierStats>());
static_assert(std::is_same_v<decltype(std::declval<const Runner&>().to_prometheus(prometheus::Labels{})), std::string>);

// Every public header under include/pare.
std::vector<std::string>* g_api_headers = nullptr;
int collect_api_header(const char* path, const struct stat*, int type, struct FTW*) {
  const std::string p = path;
  if (type == FTW_F && p.size() > 4 && p.substr(p.size() - 4) == ".hpp") g_api_headers->push_back(p);
  return 0;
}
std::vector<std::string> api_public_headers() {
  std::vector<std::string> headers;
  g_api_headers = &headers;
  nftw(PARE_SOURCE_DIR "/include/pare", collect_api_header, 16, FTW_PHYS);
  g_api_headers = nullptr;
  return headers;
}

std::string api_header_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// name -> body of every `class XOptions {` ... `};` (the class closes at column 0).
std::map<std::string, std::string> api_options_classes(const std::string& text) {
  std::map<std::string, std::string> classes;
  static const std::regex head(R"(\nclass (\w+Options) \{)");
  for (std::sregex_iterator it(text.begin(), text.end(), head), end; it != end; ++it) {
    const auto start = size_t(it->position(0));
    const auto stop = text.find("\n};", start);
    classes[(*it)[1]] = text.substr(start, stop - start);
  }
  return classes;
}

}  // namespace

TEST_CASE("every options class declares its options with PARE_ARG, and the static checks cover it") {
  const auto headers = api_public_headers();
  REQUIRE(headers.size() > 10);
  std::set<std::string> found;
  static const std::regex hand_setter(R"(^\s*(\w+Options)&\s+(\w+)\()");
  for (const auto& path : headers) {
    for (const auto& [name, body] : api_options_classes(api_header_text(path))) {
      found.insert(name);
      std::istringstream lines(body);
      for (std::string line; std::getline(lines, line);) {
        std::smatch m;
        if (!std::regex_search(line, m, hand_setter) || m[1] != name) continue;
        // A setter written by hand (a type PARE_ARG can't store as is) still
        // needs its getter of the same name; deprecated ones are exempt.
        INFO(path << ": " << line);
        CHECK((line.find("[[deprecated") != std::string::npos ||
               body.find(" " + m[2].str() + "() const") != std::string::npos));
      }
      CHECK(body.find("PARE_ARG") != std::string::npos);
    }
  }
  for (const auto& name : found) {
    INFO(name << " is an options class the static checks of this file do not list");
    CHECK(kCheckedOptionClasses.count(name) == 1);
  }
  CHECK(found.size() == kCheckedOptionClasses.size());
}

TEST_CASE("setters chain and getters of the same name read back") {
  const auto options = PruneChannelsOptions(0.25).round_to(8).min_channels(2).norm(Norm::L2).include({"layer1.*"});
  CHECK(options.amount() == 0.25);
  CHECK(options.round_to() == 8);
  CHECK(options.min_channels() == 2);
  CHECK(options.norm() == Norm::L2);
  CHECK(options.include() == std::vector<std::string>{"layer1.*"});
  CHECK(options.scope() == Scope::Local);  // the default declared beside the option
  CHECK(L1PruneOptions(0.5).structured(0).structured() == std::optional<int64_t>(0));
  CHECK_FALSE(L1PruneOptions(0.5).structured().has_value());
  const auto runner = RunnerOptions().max_batch(8).max_queue(100);
  CHECK(runner.explicitly_set(RunnerSetting::MaxBatch));
  CHECK_FALSE(runner.explicitly_set(RunnerSetting::Threads));
  CHECK(runner.max_queue() == 100);
}

TEST_CASE("a pass with one required argument takes it alone") {
  CHECK(ExportTorchScript("m.pt").options().path() == "m.pt");
  CHECK(PruneChannels(0.5).options().amount() == 0.5);
  CHECK(L1Prune(0.75).options().amount() == 0.75);
  CHECK(ConvertPrecision(torch::kBFloat16).options().dtype() == torch::kBFloat16);
  CHECK_THROWS_AS(L1Prune(1.5), Error);  // the pass validates its options, whichever form built them
}

TEST_CASE("every stats type renders Prometheus text with the labels given") {
  const prometheus::Labels labels{{"model", "cnn"}};
  RunnerStats runner;
  runner.requests = 3;
  const auto runner_text = runner.to_prometheus(labels);
  CHECK(runner_text.find("pare_runner_requests_total{model=\"cnn\"} 3\n") != std::string::npos);
  CHECK(runner_text.find("pare_runner_batch_size_bucket{model=\"cnn\",le=\"+Inf\"} 0\n") != std::string::npos);
  PoolStats pool;
  pool.hits = 2;
  CHECK(pool.to_prometheus(labels).find("pare_pool_hits_total{model=\"cnn\"} 2\n") != std::string::npos);
  CacheStats cache;
  cache.misses = 4;
  CHECK(cache.to_prometheus(labels).find("pare_cache_misses_total{model=\"cnn\"} 4\n") != std::string::npos);
#ifdef PARE_WITH_REDIS
  RedisTierStats tier;
  tier.errors = 1;
  CHECK(tier.to_prometheus(labels).find("pare_redis_tier_errors_total{model=\"cnn\"} 1\n") != std::string::npos);
#endif
}

namespace {
// Every name parses back to the value it names, and an unknown name is a pare::Error.
template <class Enum, class ToString, class Parse>
void check_name_table(const std::vector<std::string>& names, ToString to_name, Parse parse) {
  REQUIRE(!names.empty());
  for (const auto& name : names) CHECK(to_name(parse(name)) == name);
  CHECK_THROWS_AS(parse("no such name"), Error);
  CHECK(std::set<std::string>(names.begin(), names.end()).size() == names.size());
}
}  // namespace

TEST_CASE("every user-facing enum has one name table") {
  check_name_table<Norm>(
      norm_names(), [](Norm v) { return to_string(v); }, parse_norm);
  check_name_table<Scope>(
      scope_names(), [](Scope v) { return to_string(v); }, parse_scope);
  check_name_table<OptimizerKind>(
      optimizer_kind_names(), [](OptimizerKind v) { return to_string(v); }, parse_optimizer_kind);
  check_name_table<PoolMemory>(
      pool_memory_names(), [](PoolMemory v) { return to_string(v); }, parse_pool_memory);
  check_name_table<RunnerHint>(
      runner_hint_names(), [](RunnerHint v) { return to_string(v); }, parse_runner_hint);
  check_name_table<ObserverKind>(
      observer_kind_names(), [](ObserverKind v) { return to_string(v); }, parse_observer_kind);
  CHECK(norm_names() == std::vector<std::string>{"l1", "l2"});
  CHECK_THROWS_WITH(parse_norm("l3"), Catch::Contains("l1") && Catch::Contains("l2"));
}

}  // namespace pare_api_rules
