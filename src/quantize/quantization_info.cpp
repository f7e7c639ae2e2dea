#include "pare/quantize/quantization_info.hpp"

#include <nlohmann/json.hpp>

#include "pare/core/error.hpp"

namespace pare {

QuantizationInfo parse_quantization_info(const std::string& text) {
  using nlohmann::json;
  const json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  const auto string_field = [&](const char* key) -> std::string {
    require(doc.is_object() && doc.contains(key) && doc[key].is_string(),
            std::string("quantization record is malformed: expected a JSON object with a string field '") + key +
                "', as pare's quantization passes write it");
    return doc[key].get<std::string>();
  };
  QuantizationInfo info{string_field("engine"), string_field("mode"), text};
  require(info.mode == "static" || info.mode == "dynamic",
          "quantization record is malformed: mode '" + info.mode + "' is not \"static\" or \"dynamic\"");
  return info;
}

}  // namespace pare
