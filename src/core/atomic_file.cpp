#include "core/atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>

#include "pare/core/error.hpp"
#include "core/torch_errors.hpp"

namespace pare::detail {
namespace {

std::string directory_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// fsync of a file or directory opened read-only (enough for both on Linux).
void sync_path(const std::string& path, int flags, const std::string& what) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | flags);
  if (fd < 0) throw Error(what + ": could not open '" + path + "' to sync it: " + std::strerror(errno), Error::Kind::Runtime);
  const int synced = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (synced != 0) throw Error(what + ": fsync of '" + path + "' failed: " + std::strerror(error), Error::Kind::Runtime);
}

}  // namespace

std::string temporary_path_for(const std::string& path) {
  std::random_device random;
  return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(random());
}

void replace_file_atomically(const std::string& path, const std::string& what,
                             const std::function<void(const std::string&)>& write,
                             const std::function<void(const std::string&)>& check) {
  require(!path.empty(), what + ": path is empty; expected a file name such as \"model.pt\"");
  const std::string temporary = temporary_path_for(path);
  try {
    translate_torch_errors(what + ": could not write '" + path + "'", [&] { write(temporary); });
    if (check) check(temporary);
    sync_path(temporary, 0, what);
  } catch (...) {
    std::remove(temporary.c_str());  // a file that failed to write or check never lands at `path`
    throw;
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::remove(temporary.c_str());
    throw Error(what + ": could not move the new file into place at '" + path + "': " + std::strerror(error),
                Error::Kind::Runtime);
  }
  sync_path(directory_of(path), O_DIRECTORY, what);
}

void write_file_atomically(const std::string& path, const std::string& contents, const std::string& what) {
  replace_file_atomically(path, what, [&](const std::string& temporary) {
    std::ofstream file(temporary, std::ios::binary | std::ios::trunc);
    file << contents;
    file.close();
    require(!file.fail(), what + ": could not write '" + temporary + "' (missing directory, no permission or disk full?)",
            Error::Kind::Runtime);
  });
}

}  // namespace pare::detail
