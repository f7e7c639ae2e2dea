#pragma once
// Durable atomic writes: a temporary file next to the target, fsync'd, renamed
// over the target, then the directory fsync'd so the rename itself survives a
// power cut. Readers see the old file or the new one, never a torn one.

#include <functional>
#include <string>

namespace pare::detail {

/// A fresh temporary name in `path`'s directory (same file system, so rename is atomic).
std::string temporary_path_for(const std::string& path);

/// Runs write(temporary) then check(temporary) (if given), fsyncs the file,
/// renames it to `path` and fsyncs the directory. Any failure removes the
/// temporary and throws pare::Error naming `what` and `path`; `path` keeps its
/// old content.
void replace_file_atomically(const std::string& path, const std::string& what,
                             const std::function<void(const std::string& temporary)>& write,
                             const std::function<void(const std::string& temporary)>& check = {});

/// replace_file_atomically with `contents` as the new file.
void write_file_atomically(const std::string& path, const std::string& contents, const std::string& what);

}  // namespace pare::detail
