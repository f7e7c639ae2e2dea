// libFuzzer target: pare::deserialize_cache_record on arbitrary bytes, as a
// remote tier may hand back. Every input must either decode or throw
// pare::Error; anything else (another exception, a crash, a sanitizer
// report) is a finding. Inputs are also fed to the value decoder past the
// checksummed header, which random bytes would almost never get through.
// A decoded record must survive a round trip unchanged.

#include <cstdint>
#include <cstdlib>
#include <string>

#include <ATen/Parallel.h>

#include "cache/cache_values.hpp"
#include "pare/cache/cache.hpp"

namespace {

void check_round_trip(const pare::CacheRecord& record) {
  const auto bytes = pare::serialize_cache_record(record.inputs, record.output, record.compute_seconds,
                                                  record.key_namespace);
  const auto again = pare::deserialize_cache_record(bytes);
  if (again.key_namespace != record.key_namespace || again.compute_seconds != record.compute_seconds ||
      !pare::cache_detail::same_inputs(again.inputs, record.inputs) || !pare::same_content(again.output, record.output))
    std::abort();  // the decoder accepted something the encoder writes differently
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    check_round_trip(pare::deserialize_cache_record(bytes));
  } catch (const pare::Error&) {
  }
  try {
    check_round_trip(pare::cache_detail::parse_cache_record_body(bytes.data(), bytes.size()));
  } catch (const pare::Error&) {
  }
  return 0;
}
