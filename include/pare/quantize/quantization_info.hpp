#pragma once
// pare::QuantizationInfo — the record a quantized export keeps about itself
// ("pare/quantization.json" inside the file). Free of LibTorch.

#include <string>

namespace pare {

/// What a quantized export recorded about itself.
struct QuantizationInfo {
  std::string engine;  ///< engine the weights were packed for
  std::string mode;    ///< "static" or "dynamic"
  std::string json;    ///< the whole record
};

/// Parses a record's text (untrusted: it comes from a model file). pare::Error
/// on anything but a JSON object with string fields "engine" and "mode"
/// ("static" or "dynamic").
QuantizationInfo parse_quantization_info(const std::string& json);

}  // namespace pare
