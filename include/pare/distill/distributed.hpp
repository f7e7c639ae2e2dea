#pragma once
// pare::DistributedOptions — how a Distill run joins the other processes of a
// data-parallel job (LibTorch's c10d: Gloo on CPU, NCCL on CUDA devices; a
// TCPStore or FileStore rendezvous). Every process runs the same program with
// its own rank; docs/scaling.md shows the launchers.
//
//   // RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT as torchrun sets them:
//   options.distributed(pare::DistributedOptions::from_env());
//   // or spelled out:
//   options.distributed(pare::DistributedOptions(rank, 2).master_addr("10.0.0.1").master_port(29500));

#include <c10/util/intrusive_ptr.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "pare/core/arg.hpp"

namespace c10d {
class ProcessGroup;
}  // namespace c10d

namespace pare {

/// The collective library of a distributed run.
enum class CommBackend {
  Auto,  ///< Gloo for CPU training, NCCL for CUDA training
  Gloo,  ///< CPU tensors (and CUDA tensors staged through the host)
  NCCL   ///< CUDA tensors; needs a LibTorch built with NCCL
};

class DistributedOptions {
 public:
  /// This process's `rank` in [0, world_size) among `world_size` processes.
  DistributedOptions(int64_t rank, int64_t world_size) : rank_(rank), world_size_(world_size) {}
  /// From the environment torchrun and `pare distill --nproc` set: RANK,
  /// WORLD_SIZE, MASTER_ADDR (default 127.0.0.1), MASTER_PORT (default 29500),
  /// and PARE_DIST_TIMEOUT (seconds, optional). pare::Error naming a variable
  /// that is missing or malformed.
  static DistributedOptions from_env();
  /// True when WORLD_SIZE is set in the environment (a launcher started this process).
  static bool in_env();

  /// This process's rank in [0, world_size()).
  PARE_ARG(int64_t, rank);
  /// Processes in the job.
  PARE_ARG(int64_t, world_size);
  /// Host of rank 0, which serves the rendezvous store (TCPStore).
  PARE_ARG(std::string, master_addr) = "127.0.0.1";
  /// TCP port of the rendezvous store on master_addr (1..65535).
  PARE_ARG(int64_t, master_port) = 29500;
  /// Rendezvous through a file every process can reach instead of TCP (c10d's
  /// FileStore; one run per file: delete it before the next).
  PARE_ARG(std::string, store_file);
  /// How long the rendezvous and every collective may wait for the other ranks
  /// (default 60 s): a rank that dies or hangs ends the job on every other rank
  /// with a pare::Error naming it, within this time.
  PARE_ARG(std::chrono::milliseconds, timeout) = std::chrono::milliseconds(60000);
  /// The collective library (default: Gloo on CPU, NCCL on CUDA).
  PARE_ARG(CommBackend, backend) = CommBackend::Auto;
  /// Gradient buckets' size in megabytes: each bucket is one all-reduce (default 25, as PyTorch's DDP).
  PARE_ARG(double, bucket_mb) = 25.0;

 public:
  /// A process group the caller made (any c10d backend); rank and world size
  /// must match it. Rendezvous options and the lost-rank diagnosis (which needs
  /// the store) are then unused: a failed collective reports the backend's message.
  DistributedOptions& process_group(c10::intrusive_ptr<c10d::ProcessGroup> value);
  c10::intrusive_ptr<c10d::ProcessGroup> process_group() const;

 private:
  std::shared_ptr<void> group_;  // holds a c10::intrusive_ptr<c10d::ProcessGroup>
};

/// True when this LibTorch and pare were built with Gloo (CPU collectives).
bool distributed_gloo_available();

}  // namespace pare
