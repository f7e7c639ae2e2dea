// pare::InferenceCache under threads: single-flight (each key computed once,
// however the callers interleave), exceptions reaching every waiting caller
// as its own copy, and consistency under concurrent reads, writes and erases.

#include "support/cache_testing.hpp"

#include <array>
#include <atomic>
#include <set>
#include <thread>

#include "pare/cache/cache.hpp"

using namespace std::chrono_literals;
using cache_testing::input;
using pare::InferenceCache;
using pare::InferenceCacheOptions;

namespace {

// Runs body(t) on `threads` threads released together.
template <class Body>
void run_together(int threads, Body body) {
  std::atomic<int> ready{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      ++ready;
      while (ready < threads) std::this_thread::yield();
      body(t);
    });
  for (auto& th : pool) th.join();
}

// A test-only exception type whose waiters should get it as its own type.
struct ModelDown : std::exception, pare::CopyableError {
  const char* what() const noexcept override { return "model down"; }
  [[noreturn]] void rethrow_copy() const override { throw ModelDown(*this); }
};

// Every thread asks for one input whose computation throws `Thrown`, and keeps
// what it caught alive, so that distinct objects have distinct addresses.
template <class Thrown, class Caught>
std::vector<std::exception_ptr> failures_seen_by(int threads, std::atomic<int>& calls) {
  InferenceCache cache;
  const auto x = input(12);
  std::vector<std::exception_ptr> caught(threads);
  std::vector<const void*> addresses(threads);
  run_together(threads, [&](int t) {
    try {
      cache.get_or_compute({x}, [&]() -> c10::IValue {
        ++calls;
        // Fails only once every other thread waits on this computation (a latch, not a sleep).
        while (cache.stats().coalesced < int64_t(threads - 1)) std::this_thread::yield();
        throw Thrown();
      });
    } catch (const Caught& e) {
      caught[t] = std::current_exception();
      addresses[t] = &e;
    }
  });
  REQUIRE(cache.stats().entries == 0);
  std::set<const void*> distinct(addresses.begin(), addresses.end());
  CHECK(distinct.count(nullptr) == 0);  // every thread caught the expected type
  CHECK(distinct.size() == size_t(threads));  // and its own object
  return caught;
}

struct PareFailure : pare::Error {
  PareFailure() : pare::Error("model failed", pare::Error::Kind::Runtime) {}
};

}  // namespace

TEST_CASE("single-flight: however callers interleave, each key is computed once") {
  // Many threads over few keys, released together, many rounds: a caller that
  // misses must find either the entry or the flight of the computation, never
  // neither (which would make it compute again).
  constexpr int kThreads = 8, kKeys = 3, kRounds = 300;
  std::vector<at::Tensor> xs;
  for (int k = 0; k < kKeys; ++k) xs.push_back(input(500 + k, {16}));
  int extra_computes = 0, wrong = 0;
  for (int round = 0; round < kRounds; ++round) {
    InferenceCache cache(InferenceCacheOptions().shards(2));
    std::array<std::atomic<int>, kKeys> computes{};
    std::atomic<int> wrong_in_round{0};
    run_together(kThreads, [&](int t) {
      for (int i = 0; i < kKeys * 2; ++i) {
        const int k = (t + i) % kKeys;
        const auto out = cache.get_or_compute({xs[k]}, [&, k] {
          ++computes[k];
          return c10::IValue(xs[k] + 1);
        });
        if (!out.toTensor().equal(xs[k] + 1)) ++wrong_in_round;
      }
    });
    for (auto& c : computes) extra_computes += c - 1;
    wrong += wrong_in_round;
  }
  CHECK(extra_computes == 0);
  CHECK(wrong == 0);
}

TEST_CASE("concurrent misses on one input compute once and all get the result") {
  InferenceCache cache;
  const auto x = input(11);
  std::atomic<int> calls{0};
  const int threads = 8;
  std::vector<c10::IValue> results(threads);
  run_together(threads, [&](int t) {
    results[t] = cache.get_or_compute({x}, [&] {
      ++calls;
      while (cache.stats().coalesced < int64_t(threads - 1)) std::this_thread::yield();  // every other caller waits
      return c10::IValue(x * 3);
    });
  });
  CHECK(calls == 1);
  for (const auto& r : results) CHECK(r.toTensor().equal(x * 3));
  const auto stats = cache.stats();
  CHECK(stats.misses == 1);
  CHECK(stats.hits == threads - 1);
}

TEST_CASE("an exception from fn reaches every caller, each as its own copy, and caches nothing") {
  const int threads = 6;
  std::atomic<int> calls{0};
  SECTION("pare::Error") {
    const auto caught = failures_seen_by<PareFailure, pare::Error>(threads, calls);
    for (const auto& e : caught) CHECK_THROWS_WITH(std::rethrow_exception(e), "model failed");
  }
  SECTION("c10::Error keeps its class and message") {
    struct Thrown : c10::Error {
      Thrown() : c10::Error(c10::SourceLocation{__func__, __FILE__, __LINE__}, "shape mismatch") {}
    };
    failures_seen_by<Thrown, c10::Error>(threads, calls);
  }
  SECTION("a standard exception keeps its class") {
    struct Thrown : std::invalid_argument {
      Thrown() : std::invalid_argument("bad row") {}
    };
    failures_seen_by<Thrown, std::invalid_argument>(threads, calls);
  }
  SECTION("a CopyableError keeps its own type") {
    failures_seen_by<ModelDown, ModelDown>(threads, calls);
  }
  CHECK(calls >= 1);
  CHECK(calls < threads);  // the waiters did not compute
}

TEST_CASE("after a failed computation the next caller computes again") {
  InferenceCache cache;
  const auto x = input(13);
  CHECK_THROWS_AS(cache.get_or_compute({x}, []() -> c10::IValue { throw std::runtime_error("down"); }),
                  std::runtime_error);
  CHECK(cache.get_or_compute({x}, [&] { return c10::IValue(x); }).toTensor().equal(x));
}

TEST_CASE("many threads over many keys keep the cache consistent") {
  InferenceCache cache(InferenceCacheOptions().capacity_bytes(64 << 10).shards(4));
  std::vector<at::Tensor> xs;
  for (int i = 0; i < 32; ++i) xs.push_back(input(200 + i, {64}));
  std::atomic<int> wrong{0};
  run_together(4, [&](int t) {
    for (int i = 0; i < 400; ++i) {
      const auto& x = xs[(i * 7 + t) % xs.size()];
      const std::string key_namespace = t % 2 ? "odd" : "even";
      const auto r = cache.get_or_compute({x}, [&] { return c10::IValue(x + 1); }, key_namespace);
      if (!r.toTensor().equal(x + 1)) ++wrong;
      if (i % 97 == 0) cache.erase({x}, key_namespace);
    }
  });
  CHECK(wrong == 0);
  CHECK(cache.stats().bytes <= int64_t(64 << 10));
}
