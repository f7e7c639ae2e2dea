// Fuzzes pare::Report::from_json, which reads the report embedded in every
// model file pare writes (an untrusted file once it leaves the machine).
// Contract: any bytes either parse or raise pare::Error; what parses survives
// a round trip through to_json() unchanged and prints as a table.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "pare/core/error.hpp"
#include "pare/core/report.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  pare::Report report;
  try {
    report = pare::Report::from_json(text);
  } catch (const pare::Error&) {
    return 0;  // refused with pare's error: the contract holds
  }
  const std::string json = report.to_json();
  const std::string again = pare::Report::from_json(json).to_json();  // must not throw
  if (again != json) std::abort();  // a report that changes when written and read back
  (void)report.to_string();
  return 0;
}
