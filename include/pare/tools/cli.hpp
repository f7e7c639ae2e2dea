#pragma once
// The `pare` command line (compress, bench, inspect), as a function so that the
// installed binary and `python -m pare` run the very same code.

#include <iosfwd>
#include <string>
#include <vector>

#include "pare/core/report.hpp"

namespace pare {

/// Runs the command line `args` (args[0] is the program name). Writes results to
/// `out` and one-line errors to `err`; returns the process exit code
/// (0 success, 1 runtime failure, 2 bad usage). Never throws.
int cli_main(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

/// What `pare inspect` prints about a TorchScript file.
std::string inspect_model(const std::string& path);

/// What `pare inspect --html` draws: the report pare embedded in the file (if
/// any), then an "inspect" entry with the file's Linear/Conv weights and size.
Report inspect_report(const std::string& path);

}  // namespace pare
