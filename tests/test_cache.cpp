// pare::InferenceCache: exactness, namespaces, LRU order, byte capacity, TTL,
// copies, records, statistics. Threads: test_cache_concurrency.cpp.

#include "support/cache_testing.hpp"

#include <atomic>
#include <fstream>
#include <iterator>
#include <thread>

#include "cache/cache_values.hpp"  // the record body decoder, as the fuzzer reaches it
#include "pare/cache/cache.hpp"

using namespace std::chrono_literals;
using cache_testing::input;
using pare::InferenceCache;
using pare::InferenceCacheOptions;

namespace {

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
  CHECK(stats.bytes > int64_t(x.numel() * 4));
  CHECK(stats.hit_ratio() == Approx(0.5));
}

TEST_CASE("each hit adds the compute time of the entry it hits to seconds_saved") {
  InferenceCache cache;
  const auto a = input(16), b = input(17);
  cache.put({a}, at::ones({1}), std::chrono::milliseconds(250));
  cache.put({b}, at::ones({1}), std::chrono::duration<double>(1.5));
  for (int i = 0; i < 3; ++i) REQUIRE(cache.get({a}).has_value());
  REQUIRE(cache.get({b}).has_value());
  CHECK(cache.stats().seconds_saved == Approx(3 * 0.25 + 1.5));
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

TEST_CASE("empty tensors are cached and compared") {
  // Found by fuzz_cache_record under UBSan: comparing empty tensors passed a null pointer to memcmp.
  InferenceCache cache;
  const auto empty = at::empty({0, 3});
  cache.put({empty}, at::ones({1}));
  CHECK(cache.get({at::empty({0, 3})}).has_value());
  CHECK_FALSE(cache.get({at::empty({3, 0})}).has_value());
  CHECK(pare::same_content(at::empty({0}), at::empty({0})));
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
  auto options = InferenceCacheOptions().key_bits(0).shards(1);  // every key is 0: everything collides
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
    InferenceCache unverified(InferenceCacheOptions(options).verify(false));
    unverified.get_or_compute({a}, model.on(a));
    CHECK(equal(unverified.get_or_compute({b}, model.on(b)), a.sum().reshape({1}) * 2));
  }
}

TEST_CASE("namespaces keep two models apart") {
  InferenceCache cnn(InferenceCacheOptions().key_namespace("cnn@1"));
  InferenceCache mlp(InferenceCacheOptions().key_namespace("mlp@1"));
  const auto x = input(5);
  CHECK(cnn.key_of({x}) != mlp.key_of({x}));
  CHECK(cnn.key_of({x}, "a") != cnn.key_of({x}, "b"));
  CHECK(InferenceCache(InferenceCacheOptions().key_namespace("ab")).key_of({x}) !=
        InferenceCache(InferenceCacheOptions().key_namespace("a")).key_of({x}, "b"));  // no two pairs give one scope

  SECTION("one cache, two namespaces, equal inputs: each gets its own result") {
    InferenceCache shared;
    const auto doubled = shared.get_or_compute({x}, [&] { return c10::IValue(x * 2); }, "model-a");
    const auto tripled = shared.get_or_compute({x}, [&] { return c10::IValue(x * 3); }, "model-b");
    CHECK(equal(doubled, x * 2));
    CHECK(equal(tripled, x * 3));
    CHECK(equal(*shared.get({x}, "model-a"), x * 2));
    CHECK(equal(*shared.get({x}, "model-b"), x * 3));
    CHECK_FALSE(shared.get({x}).has_value());
    CHECK(shared.stats().entries == 2);
    CHECK(shared.erase({x}, "model-a"));
    CHECK_FALSE(shared.erase({x}, "model-a"));
    CHECK(shared.get({x}, "model-b").has_value());
  }
  SECTION("even when their keys collide, the stored namespace is checked") {
    InferenceCache colliding(InferenceCacheOptions().key_bits(0).shards(1));
    REQUIRE(colliding.key_of({x}, "model-a") == colliding.key_of({x}, "model-b"));
    colliding.get_or_compute({x}, [&] { return c10::IValue(x * 2); }, "model-a");
    CHECK(equal(colliding.get_or_compute({x}, [&] { return c10::IValue(x * 3); }, "model-b"), x * 3));
    CHECK(colliding.stats().collisions >= 1);
  }
}

TEST_CASE("the least recently used entry is evicted first") {
  InferenceCache cache(InferenceCacheOptions().shards(1).max_entries(3));
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
  InferenceCache cache(InferenceCacheOptions().shards(2).capacity_bytes(capacity));
  for (int i = 0; i < 40; ++i) {
    cache.put({input(100 + i)}, at::full({1}, double(i)));
    REQUIRE(cache.stats().bytes <= int64_t(capacity));
  }
  const auto stats = cache.stats();
  CHECK(stats.entries < 10);  // bookkeeping counts too
  CHECK(stats.entries >= 4);
  CHECK(stats.evictions == 40 - stats.entries);
  CHECK(cache.get({input(139)}).has_value());  // the newest survive

  SECTION("an entry larger than a quarter of the capacity is rejected, and counted") {
    const auto big = at::zeros({int64_t(capacity / 16)});  // 4 bytes a value: capacity / 4, plus its output
    cache.put({big}, at::ones({1}));
    CHECK_FALSE(cache.get({big}).has_value());
    CHECK(cache.stats().rejected == 1);
    CHECK_THAT(cache.to_prometheus(), Catch::Contains("pare_cache_rejected_total 1\n"));
  }
}

TEST_CASE("entries up to a quarter of the capacity are cached whatever the shard count") {
  // The case of the bug report: 64 KiB inputs (128 KiB with the verify copy)
  // in a 1 MiB cache of 8 shards were all dropped, without a trace.
  InferenceCache cache(InferenceCacheOptions().capacity_bytes(1 << 20).shards(8));
  std::vector<at::Tensor> xs;
  for (int i = 0; i < 64; ++i) xs.push_back(input(300 + i, {16 * 1024}));  // 64 KiB of float32
  for (const auto& x : xs) cache.get_or_compute({x}, [&] { return c10::IValue(x.sum().reshape({1})); });
  const auto stats = cache.stats();
  CHECK(stats.misses == 64);
  CHECK(stats.rejected == 0);
  CHECK(stats.entries >= 6);  // 1 MiB / (128 KiB + bookkeeping): 7 fit
  CHECK(stats.bytes <= int64_t(1 << 20));
  CHECK(stats.evictions == 64 - stats.entries);
  CHECK(cache.get({xs.back()}).has_value());  // the newest survives

  SECTION("an entry of exactly a quarter fits next to others") {
    InferenceCache exact(InferenceCacheOptions().capacity_bytes(1 << 20).shards(8).verify(false));
    const size_t quarter_values = ((1 << 20) / 4 - 256) / 4;  // output bytes + the 256 B of bookkeeping
    const auto key = input(400, {4});
    exact.put({key}, at::zeros({int64_t(quarter_values)}));
    exact.put({input(401, {4})}, at::zeros({int64_t(quarter_values)}));
    CHECK(exact.get({key}).has_value());
    CHECK(exact.stats().entries == 2);
    CHECK(exact.stats().rejected == 0);
  }
}

TEST_CASE("entries expire after the TTL") {
  InferenceCache cache(InferenceCacheOptions().ttl(50ms));
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

TEST_CASE("records refuse what the writer never writes") {
  // A body past a valid header: the value decoder itself must refuse it.
  auto body = [](auto&&... parts) {
    std::string out;
    (out.append(reinterpret_cast<const char*>(&parts), sizeof parts), ...);
    return out;
  };
  using pare::cache_detail::parse_cache_record_body;
  const uint8_t list = 7, dict = 8, integer = 2, tensor = 5, tuple = 6;
  const auto head = body(0.5, uint64_t(0), uint64_t(0));  // seconds, empty namespace, no inputs
  const auto good = head + body(list, uint64_t(2), integer, int64_t(1), integer, int64_t(2));
  CHECK(parse_cache_record_body(good.data(), good.size()).output.toList().size() == 2);
  const auto mixed = head + body(list, uint64_t(2), integer, int64_t(1), uint8_t(4), uint64_t(0));
  CHECK_THROWS_WITH(parse_cache_record_body(mixed.data(), mixed.size()), Catch::Contains("different types"));
  const auto tuple_key = head + body(dict, uint64_t(1), tuple, uint64_t(0), integer, int64_t(1));
  CHECK_THROWS_WITH(parse_cache_record_body(tuple_key.data(), tuple_key.size()), Catch::Contains("can't hash"));
  const auto bad_bool = head + body(tensor, int32_t(at::kBool), uint64_t(1), int64_t(1), uint64_t(1), uint8_t(7));
  CHECK_THROWS_WITH(parse_cache_record_body(bad_bool.data(), bad_bool.size()), Catch::Contains("bool"));
  // Found by the fuzzer: sizes whose product wraps around 2^64 passed the size check.
  const auto wrapping = head + body(tensor, int32_t(at::kFloat), uint64_t(2), int64_t(1) << 35, int64_t(1) << 35,
                                    uint64_t(0));
  CHECK_THROWS_WITH(parse_cache_record_body(wrapping.data(), wrapping.size()), Catch::Contains("too large"));
  const auto zero_and_huge = head + body(tensor, int32_t(at::kFloat), uint64_t(3), int64_t(0), int64_t(1) << 35,
                                         int64_t(1) << 35, uint64_t(0));
  CHECK_THROWS_WITH(parse_cache_record_body(zero_and_huge.data(), zero_and_huge.size()), Catch::Contains("too large"));
  const auto negative_time = body(-1.0, uint64_t(0), uint64_t(0), uint8_t(0));
  CHECK_THROWS_AS(parse_cache_record_body(negative_time.data(), negative_time.size()), pare::Error);
}

TEST_CASE("the fuzzer's seed records decode (the seeds follow the format)") {
  const std::string dir = std::string(PARE_SOURCE_DIR) + "/tests/fuzz/corpus/fuzz_cache_record/";
  for (const char* name : {"tensor", "nested", "bool_uint8", "no_inputs", "int_dict"}) {
    std::ifstream file(dir + name, std::ios::binary);
    REQUIRE(file.good());
    const std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    INFO(name);
    const auto record = pare::deserialize_cache_record(bytes);
    CHECK(pare::same_content(pare::deserialize_cache_record(pare::serialize_cache_record(
                                 record.inputs, record.output, record.compute_seconds, record.key_namespace))
                                 .output,
                             record.output));
  }
}

TEST_CASE("records round-trip and corruption is detected") {
  const auto x = input(9);
  const c10::IValue output = c10::ivalue::Tuple::create({at::arange(5, at::kLong), at::ones({2, 2}, at::kDouble)});
  const auto bytes = pare::serialize_cache_record({x}, output, 0.25, "model-a");
  const auto record = pare::deserialize_cache_record(bytes);
  CHECK(record.compute_seconds == 0.25);
  CHECK(record.key_namespace == "model-a");
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
  CHECK_THROWS_AS(InferenceCache(InferenceCacheOptions().shards(0)), pare::Error);
  CHECK_THROWS_AS(InferenceCache(InferenceCacheOptions().capacity_bytes(0)), pare::Error);
  CHECK_THROWS_AS(InferenceCache(InferenceCacheOptions().key_bits(129)), pare::Error);
  CHECK_THROWS_AS(InferenceCache(InferenceCacheOptions().ttl(-1ms)), pare::Error);
  InferenceCache cache;
  CHECK_THROWS_WITH(cache.get_or_compute({at::empty({2}, at::device(at::kMeta))}, [] { return c10::IValue(); }),
                    Catch::Contains("CPU"));
  CHECK_THROWS_AS(cache.get_or_compute({input(1)}, InferenceCache::Compute{}), pare::Error);
  CHECK_THROWS_AS(cache.put({input(1)}, at::ones({1}), std::chrono::duration<double>(-1.0)), pare::Error);
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

TEST_CASE("content_hash is XXH3-128 of the bytes (known-answer vectors)") {
  // XXH128 of the empty input, from xxHash's own sanity tests, high word first
  // as xxhsum -H2 prints it; the second is xxhsum -H2 of the 4 bytes "pare".
  CHECK(pare::content_hash(nullptr, 0).hex() == "99aa06d3014798d86001c324468d497f");
  const std::string a = "pare";
  CHECK(pare::content_hash(a.data(), a.size()).hex() == "cf98850a7d13ea42c05f5000911f9f29");
  CHECK_THROWS_AS(pare::content_hash(nullptr, 4), pare::Error);
}
