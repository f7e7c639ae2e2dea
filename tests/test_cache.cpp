// pare::InferenceCache: exactness, LRU order, byte capacity, TTL, copies,
// single-flight under threads, exception propagation, statistics.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#undef CHECK  // glog's CHECK (via LibTorch) must not replace Catch's
#include <catch2/catch.hpp>

#include <atomic>
#include <thread>

#include "pare/cache.hpp"

using namespace std::chrono_literals;
using pare::CacheOptions;
using pare::InferenceCache;

namespace {

struct SingleThreadedTorch {  // OpenMP inside LibTorch confuses ThreadSanitizer
  SingleThreadedTorch() { at::set_num_threads(1); }
} single_threaded_torch;

at::Tensor input(int64_t seed, std::vector<int64_t> shape = {1, 3, 8, 8}) {
  at::manual_seed(static_cast<uint64_t>(seed));
  return at::randn(shape);
}

// A "model" whose output identifies its input, counting its calls.
struct Model {
  std::atomic<int> calls{0};
  InferenceCache::Compute on(const at::Tensor& x) {
    return [this, x] {
      ++calls;
      return c10::IValue(x.sum().reshape({1}) * 2);
    };
  }
};

bool equal(const c10::IValue& a, const at::Tensor& b) { return a.toTensor().equal(b); }

}  // namespace

TEST_CASE("a repeated input is computed once and returned from the cache") {
  InferenceCache cache;
  Model model;
  const auto x = input(1);
  const auto first = cache.get_or_compute({x}, model.on(x));
  const auto second = cache.get_or_compute({x.clone()}, model.on(x));
  CHECK(model.calls == 1);
  CHECK(equal(second, first.toTensor()));
  const auto stats = cache.stats();
  CHECK(stats.hits == 1);
  CHECK(stats.misses == 1);
  CHECK(stats.entries == 1);
  CHECK(stats.bytes > size_t(x.numel() * 4));
  CHECK(stats.hit_ratio() == Approx(0.5));
  CHECK(stats.seconds_saved >= 0);
}

TEST_CASE("same bytes with another shape or dtype is another entry") {
  InferenceCache cache;
  const auto x = at::arange(6, at::kFloat);
  const auto as_int = x.view(at::kInt);  // identical bytes, other dtype
  const auto reshaped = x.reshape({2, 3});
  cache.put({x}, at::full({1}, 1.0));
  CHECK(cache.key_of({x}) != cache.key_of({as_int}));
  CHECK(cache.key_of({x}) != cache.key_of({reshaped}));
  CHECK_FALSE(cache.get({as_int}).has_value());
  CHECK_FALSE(cache.get({reshaped}).has_value());
  CHECK_FALSE(cache.get({x, x}).has_value());  // more inputs
  CHECK(cache.get({x}).has_value());
}

TEST_CASE("non-contiguous inputs are keyed by their values") {
  InferenceCache cache;
  const auto x = input(2, {4, 5});
  const auto transposed = x.t();
  REQUIRE_FALSE(transposed.is_contiguous());
  CHECK(cache.key_of({transposed}) == cache.key_of({transposed.contiguous()}));
  cache.put({transposed}, at::ones({1}));
  CHECK(cache.get({transposed.contiguous()}).has_value());
  CHECK_FALSE(cache.get({x}).has_value());
}

TEST_CASE("forced hash collisions never return another input's result") {
  auto options = CacheOptions().key_bits(0).shards(1);  // every key is 0: everything collides
  InferenceCache cache(options);
  Model model;
  const auto a = input(3), b = input(4);
  REQUIRE(cache.key_of({a}) == cache.key_of({b}));
  const auto ra = cache.get_or_compute({a}, model.on(a));
  const auto rb = cache.get_or_compute({b}, model.on(b));
  CHECK(model.calls == 2);
  CHECK(equal(rb, b.sum().reshape({1}) * 2));
  CHECK_FALSE(equal(rb, ra.toTensor()));
  CHECK(cache.stats().collisions >= 1);
  CHECK(equal(cache.get_or_compute({b}, model.on(b)), rb.toTensor()));  // b now holds the slot
  CHECK_FALSE(cache.erase({a}));  // the slot holds b, not a

  SECTION("with verify off the hook does produce wrong answers (what verify prevents)") {
    InferenceCache unverified(CacheOptions(options).verify(false));
    unverified.get_or_compute({a}, model.on(a));
    CHECK(equal(unverified.get_or_compute({b}, model.on(b)), a.sum().reshape({1}) * 2));
  }
}

TEST_CASE("namespaces keep two models apart") {
  InferenceCache cnn(CacheOptions().key_namespace("cnn@1"));
  InferenceCache mlp(CacheOptions().key_namespace("mlp@1"));
  const auto x = input(5);
  CHECK(cnn.key_of({x}) != mlp.key_of({x}));
}

TEST_CASE("the least recently used entry is evicted first") {
  InferenceCache cache(CacheOptions().shards(1).max_entries(3));
  std::vector<at::Tensor> xs;
  for (int i = 0; i < 4; ++i) xs.push_back(input(10 + i));
  for (int i = 0; i < 3; ++i) cache.put({xs[i]}, at::full({1}, double(i)));
  REQUIRE(cache.get({xs[0]}).has_value());  // 0 becomes most recent; 1 is now the oldest
  cache.put({xs[3]}, at::full({1}, 3.0));
  CHECK(cache.get({xs[0]}).has_value());
  CHECK_FALSE(cache.get({xs[1]}).has_value());
  CHECK(cache.get({xs[2]}).has_value());
  CHECK(cache.get({xs[3]}).has_value());
  CHECK(cache.stats().evictions == 1);
  CHECK(cache.stats().entries == 3);
}

TEST_CASE("capacity counts the bytes of everything held") {
  const size_t per_entry = 1 * 3 * 8 * 8 * 4 + 4;  // input copy + one-float output
  const size_t capacity = 10 * per_entry;
  InferenceCache cache(CacheOptions().shards(2).capacity_bytes(capacity));
  for (int i = 0; i < 40; ++i) {
    cache.put({input(100 + i)}, at::full({1}, double(i)));
    REQUIRE(cache.stats().bytes <= capacity);
  }
  const auto stats = cache.stats();
  CHECK(stats.entries < 10);  // bookkeeping counts too
  CHECK(stats.entries >= 4);
  CHECK(stats.evictions == 40 - stats.entries);
  CHECK(cache.get({input(139)}).has_value());  // the newest survive

  SECTION("an entry larger than a shard is not stored") {
    cache.put({at::zeros({int64_t(capacity)})}, at::ones({1}));
    CHECK_FALSE(cache.get({at::zeros({int64_t(capacity)})}).has_value());
  }
}

TEST_CASE("entries expire after the TTL") {
  InferenceCache cache(CacheOptions().ttl(50ms));
  const auto x = input(6);
  cache.put({x}, at::ones({1}));
  CHECK(cache.get({x}).has_value());
  std::this_thread::sleep_for(80ms);
  CHECK_FALSE(cache.get({x}).has_value());
  CHECK(cache.stats().expirations == 1);
  CHECK(cache.stats().entries == 0);
}

TEST_CASE("callers can't corrupt what the cache holds") {
  InferenceCache cache;
  auto x = input(7);
  const auto pristine = x.clone();
  auto out = cache.get_or_compute({x}, [] { return c10::IValue(at::zeros({3})); });
  out.toTensor().fill_(42);           // the caller's own result
  x.add_(1);                          // the caller reuses its input buffer
  CHECK_FALSE(cache.get({x}).has_value());
  auto hit = cache.get({pristine});
  REQUIRE(hit.has_value());
  CHECK(hit->toTensor().equal(at::zeros({3})));
  hit->toTensor().fill_(7);           // writing into a hit
  CHECK(cache.get({pristine})->toTensor().equal(at::zeros({3})));
}

TEST_CASE("tuples, lists and dicts are cached and copied") {
  InferenceCache cache;
  const auto x = input(8);
  c10::impl::GenericDict dict(c10::StringType::get(), c10::TensorType::get());
  dict.insert("logits", at::ones({2}));
  c10::List<at::Tensor> list({at::ones({1}), at::zeros({2})});
  const c10::IValue output = c10::ivalue::Tuple::create({dict, list, int64_t(3), 0.5, std::string("ok"), c10::IValue()});
  cache.put({x, int64_t(4), std::string("mode")}, output);
  const auto hit = cache.get({x, int64_t(4), std::string("mode")});
  REQUIRE(hit.has_value());
  CHECK(pare::same_content(*hit, output));
  CHECK_FALSE(cache.get({x, int64_t(5), std::string("mode")}).has_value());
  CHECK(hit->toTupleRef().elements()[1].isTensorList());
}

TEST_CASE("records round-trip and corruption is detected") {
  const auto x = input(9);
  const c10::IValue output = c10::ivalue::Tuple::create({at::arange(5, at::kLong), at::ones({2, 2}, at::kDouble)});
  const auto bytes = pare::serialize_cache_record({x}, output, 0.25);
  const auto record = pare::deserialize_cache_record(bytes);
  CHECK(record.compute_seconds == 0.25);
  REQUIRE(record.inputs.size() == 1);
  CHECK(record.inputs[0].toTensor().equal(x));
  CHECK(pare::same_content(record.output, output));

  for (size_t at : {size_t(0), size_t(10), bytes.size() / 2, bytes.size() - 1}) {
    auto corrupt = bytes;
    corrupt[at] = static_cast<char>(corrupt[at] ^ 0x5a);
    CHECK_THROWS_AS(pare::deserialize_cache_record(corrupt), pare::Error);
  }
  CHECK_THROWS_AS(pare::deserialize_cache_record(bytes.substr(0, bytes.size() - 3)), pare::Error);
  CHECK_THROWS_AS(pare::deserialize_cache_record("garbage"), pare::Error);
}

TEST_CASE("concurrent misses on one input compute once (single-flight)") {
  InferenceCache cache;
  const auto x = input(11);
  std::atomic<int> calls{0};
  std::atomic<int> ready{0};
  const int threads = 8;
  std::vector<c10::IValue> results(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      ++ready;
      while (ready < threads) std::this_thread::yield();
      results[t] = cache.get_or_compute({x}, [&] {
        ++calls;
        std::this_thread::sleep_for(100ms);  // long enough for every thread to arrive
        return c10::IValue(x * 3);
      });
    });
  for (auto& th : pool) th.join();
  CHECK(calls == 1);
  for (const auto& r : results) CHECK(r.toTensor().equal(x * 3));
  const auto stats = cache.stats();
  CHECK(stats.misses == 1);
  CHECK(stats.hits == threads - 1);
  CHECK(stats.coalesced + stats.hits >= threads - 1);
}

TEST_CASE("an exception from fn reaches every waiting caller and caches nothing") {
  InferenceCache cache;
  const auto x = input(12);
  std::atomic<int> calls{0}, failures{0}, ready{0};
  const int threads = 6;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      ++ready;
      while (ready < threads) std::this_thread::yield();
      try {
        cache.get_or_compute({x}, [&]() -> c10::IValue {
          ++calls;
          std::this_thread::sleep_for(100ms);
          throw std::runtime_error("model failed");
        });
      } catch (const std::runtime_error& e) {
        if (std::string(e.what()) == "model failed") ++failures;
      }
    });
  for (auto& th : pool) th.join();
  CHECK(failures == threads);
  CHECK(calls >= 1);
  CHECK(calls < threads);  // the waiters did not compute
  CHECK(cache.stats().entries == 0);
  CHECK(cache.get_or_compute({x}, [&] { return c10::IValue(x); }).toTensor().equal(x));
}

TEST_CASE("many threads over many keys keep the cache consistent") {
  InferenceCache cache(CacheOptions().capacity_bytes(64 << 10).shards(4));
  std::vector<at::Tensor> xs;
  for (int i = 0; i < 32; ++i) xs.push_back(input(200 + i, {64}));
  std::atomic<int> wrong{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < 4; ++t)
    pool.emplace_back([&, t] {
      for (int i = 0; i < 400; ++i) {
        const auto& x = xs[(i * 7 + t) % xs.size()];
        const auto r = cache.get_or_compute({x}, [&] { return c10::IValue(x + 1); });
        if (!r.toTensor().equal(x + 1)) ++wrong;
        if (i % 97 == 0) cache.erase({x});
      }
    });
  for (auto& th : pool) th.join();
  CHECK(wrong == 0);
  CHECK(cache.stats().bytes <= size_t(64 << 10));
}

TEST_CASE("erase and clear") {
  InferenceCache cache;
  const auto a = input(13), b = input(14);
  cache.put({a}, at::ones({1}));
  cache.put({b}, at::ones({1}));
  CHECK(cache.erase({a}));
  CHECK_FALSE(cache.erase({a}));
  CHECK(cache.stats().entries == 1);
  cache.clear();
  CHECK(cache.stats().entries == 0);
  CHECK(cache.stats().bytes == 0);
}

TEST_CASE("bad arguments and unsupported values are reported") {
  CHECK_THROWS_AS(InferenceCache(CacheOptions().shards(0)), pare::Error);
  CHECK_THROWS_AS(InferenceCache(CacheOptions().capacity_bytes(0)), pare::Error);
  CHECK_THROWS_AS(InferenceCache(CacheOptions().key_bits(129)), pare::Error);
  CHECK_THROWS_AS(InferenceCache(CacheOptions().ttl(-1ms)), pare::Error);
  InferenceCache cache;
  CHECK_THROWS_WITH(cache.get_or_compute({at::empty({2}, at::device(at::kMeta))}, [] { return c10::IValue(); }),
                    Catch::Contains("CPU"));
  CHECK_THROWS_AS(cache.get_or_compute({input(1)}, InferenceCache::Compute{}), pare::Error);
  CHECK_THROWS_AS(cache.put({input(1)}, at::ones({1}), -1.0), pare::Error);
  CHECK_THROWS_AS(cache.get({at::quantize_per_tensor(at::ones({2}), 0.1, 0, at::kQInt8)}), pare::Error);
}

TEST_CASE("statistics are exposed as Prometheus text") {
  InferenceCache cache;
  const auto x = input(15);
  cache.get_or_compute({x}, [&] { return c10::IValue(x); });
  cache.get_or_compute({x}, [&] { return c10::IValue(x); });
  const auto text = cache.to_prometheus({{"model", "cnn"}});
  CHECK_THAT(text, Catch::Contains("# TYPE pare_cache_hits_total counter"));
  CHECK_THAT(text, Catch::Contains("pare_cache_hits_total{model=\"cnn\"} 1\n"));
  CHECK_THAT(text, Catch::Contains("pare_cache_misses_total{model=\"cnn\"} 1\n"));
  CHECK_THAT(text, Catch::Contains("pare_cache_entries{model=\"cnn\"} 1\n"));
  CHECK_THAT(text, Catch::Contains("pare_cache_hit_ratio{model=\"cnn\"} 0.5\n"));
}

TEST_CASE("content_hash is XXH3-128 of the bytes") {
  const std::string a = "pare", b = "parf";
  CHECK(pare::content_hash(a.data(), a.size()) == pare::content_hash(a.data(), a.size()));
  CHECK(pare::content_hash(a.data(), a.size()) != pare::content_hash(b.data(), b.size()));
  CHECK(pare::content_hash(nullptr, 0).hex().size() == 32);
  CHECK_THROWS_AS(pare::content_hash(nullptr, 4), pare::Error);
}
