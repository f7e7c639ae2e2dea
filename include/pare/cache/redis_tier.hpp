#pragma once
// pare::RedisTier — a Redis server as the shared second tier of
// pare::InferenceCache (built when PARE_WITH_REDIS is ON; hiredis).

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "pare/cache/cache.hpp"

namespace pare {

class RedisTierOptions {
 public:
  RedisTierOptions& host(std::string value) { host_ = std::move(value); return *this; }
  RedisTierOptions& port(int value) { port_ = value; return *this; }
  /// Prepended to every key, so several caches (or applications) can share one server.
  RedisTierOptions& key_prefix(std::string value) { key_prefix_ = std::move(value); return *this; }
  /// Limit for connecting and for each command; a slower server counts as an error.
  RedisTierOptions& timeout(std::chrono::milliseconds value) { timeout_ = value; return *this; }
  /// Expiry of stored values; zero means "the cache's TTL" (and no expiry if that is zero too).
  RedisTierOptions& ttl(std::chrono::milliseconds value) { ttl_ = value; return *this; }
  /// After a failure, skip the server for this long instead of waiting on it for every lookup.
  RedisTierOptions& retry_after(std::chrono::milliseconds value) { retry_after_ = value; return *this; }
  /// Connections kept open for reuse (one is used per command at a time).
  RedisTierOptions& max_idle_connections(size_t value) { max_idle_connections_ = value; return *this; }
  /// Sent with AUTH on every new connection (redis-server --requirepass, or an ACL user's password).
  RedisTierOptions& password(std::string value) { password_ = std::move(value); return *this; }
  /// ACL user name (Redis 6+) for AUTH; empty: the default user. Needs a password.
  RedisTierOptions& user(std::string value) { user_ = std::move(value); return *this; }

  const std::string& host() const { return host_; }
  int port() const { return port_; }
  const std::string& key_prefix() const { return key_prefix_; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  std::chrono::milliseconds ttl() const { return ttl_; }
  std::chrono::milliseconds retry_after() const { return retry_after_; }
  size_t max_idle_connections() const { return max_idle_connections_; }
  const std::string& password() const { return password_; }
  const std::string& user() const { return user_; }

 private:
  std::string host_ = "127.0.0.1";
  int port_ = 6379;
  std::string key_prefix_ = "pare:cache:";
  std::chrono::milliseconds timeout_{100};
  std::chrono::milliseconds ttl_{0};
  std::chrono::milliseconds retry_after_{1000};
  size_t max_idle_connections_ = 8;
  std::string password_;
  std::string user_;
};

/// Counters of one tier.
struct RedisTierStats {
  uint64_t gets = 0, puts = 0;
  uint64_t errors = 0;   ///< failed commands or connections
  uint64_t skipped = 0;  ///< calls not sent because the server failed less than retry_after ago
};

/// Thread-safe: a small pool of hiredis connections. `get`/`put` throw
/// pare::Error (Runtime) when the server is unreachable, too slow or answers
/// with an error; while in back-off after a failure, `get` returns nullopt and
/// `put` does nothing, without touching the network.
///
/// Construction connects once to check access: a wrong password or user, or
/// a server that wants a password when none is given, is a pare::Error
/// (InvalidArgument) there, not a silent miss on every lookup later. An
/// unreachable server is not an error at construction (the cache carries on
/// without it, and the tier retries after its back-off).
class RedisTier : public CacheTier {
 public:
  explicit RedisTier(RedisTierOptions options = {});
  ~RedisTier() override;

  std::optional<std::string> get(const std::string& key) override;
  void put(const std::string& key, const std::string& value, std::chrono::milliseconds ttl) override;
  /// Deletes every key under the prefix (SCAN + DEL); returns how many.
  size_t clear();
  /// True if the server answers PING now.
  bool ping();

  RedisTierStats stats() const;
  const RedisTierOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pare
