// Fuzzes pare::parse_quantization_info, which reads "pare/quantization.json"
// from model files (pare::read_quantization_info, pare::load_quantized,
// `pare inspect`). Contract: any bytes either parse into an engine and a mode
// or raise pare::Error.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "pare/core/error.hpp"
#include "pare/quantize/quantization_info.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto info = pare::parse_quantization_info(text);
    if (info.mode != "static" && info.mode != "dynamic") std::abort();
    if (info.json != text) std::abort();
  } catch (const pare::Error&) {
  }
  return 0;
}
