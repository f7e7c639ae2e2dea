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
  /// The server's host name or address.
  PARE_ARG(std::string, host) = "127.0.0.1";
  /// The server's port.
  PARE_ARG(int64_t, port) = 6379;
  /// Prepended to every key, so several caches (or applications) can share one server.
  PARE_ARG(std::string, key_prefix) = "pare:cache:";
  /// Limit for connecting and for each command; a slower server counts as an error.
  PARE_ARG(std::chrono::milliseconds, timeout){100};
  /// Expiry of stored values; zero means "the cache's TTL" (and no expiry if that is zero too).
  PARE_ARG(std::chrono::milliseconds, ttl){0};
  /// After a failure, skip the server for this long instead of waiting on it for every lookup.
  PARE_ARG(std::chrono::milliseconds, retry_after){1000};
  /// Connections kept open for reuse (one is used per command at a time).
  PARE_ARG(int64_t, max_idle_connections) = 8;
  /// Sent with AUTH on every new connection (redis-server --requirepass, or an ACL user's password).
  PARE_ARG(std::string, password);
  /// ACL user name (Redis 6+) for AUTH; empty: the default user. Needs a password.
  PARE_ARG(std::string, user);
};

/// Counters of one tier.
struct RedisTierStats {
  int64_t gets = 0, puts = 0;
  int64_t errors = 0;   ///< failed commands or connections
  int64_t skipped = 0;  ///< calls not sent because the server failed less than retry_after ago
  /// Prometheus text exposition (metric names pare_redis_tier_*).
  std::string to_prometheus(const prometheus::Labels& labels = {}) const;
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
  int64_t clear();
  /// True if the server answers PING now.
  bool ping();

  RedisTierStats stats() const;
  std::string to_prometheus(const prometheus::Labels& labels = {}) const { return stats().to_prometheus(labels); }
  const RedisTierOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pare
