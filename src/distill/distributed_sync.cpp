// pare::DistributedOptions (from the environment, a caller's process group)
// and detail::GradientSync (gradients averaged across ranks in buckets).

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include <cerrno>
#include <cstdlib>
#include <optional>

#include "distill/distributed.hpp"
#include "pare/core/error.hpp"

namespace pare {
namespace {

std::optional<std::string> env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

int64_t env_integer(const char* name, int64_t low, int64_t high) {
  const auto value = env(name);
  require(value.has_value(), std::string("DistributedOptions::from_env: ") + name +
                                 " is not set; expected a launcher (torchrun, pare distill --nproc) to set RANK, "
                                 "WORLD_SIZE, MASTER_ADDR and MASTER_PORT");
  char* end = nullptr;
  errno = 0;
  const long long parsed = std::strtoll(value->c_str(), &end, 10);
  require(errno == 0 && end != value->c_str() && *end == '\0' && parsed >= low && parsed <= high,
          std::string("DistributedOptions::from_env: ") + name + "='" + *value + "' is not an integer in [" +
              std::to_string(low) + ", " + std::to_string(high) + "]");
  return parsed;
}

}  // namespace

bool DistributedOptions::in_env() { return env("WORLD_SIZE").has_value(); }

DistributedOptions DistributedOptions::from_env() {
  const int64_t world = env_integer("WORLD_SIZE", 1, 1 << 20);
  DistributedOptions options(env_integer("RANK", 0, world - 1), world);
  if (const auto addr = env("MASTER_ADDR")) options.master_addr(*addr);
  if (env("MASTER_PORT")) options.master_port(env_integer("MASTER_PORT", 1, 65535));
  if (env("PARE_DIST_TIMEOUT")) options.timeout(std::chrono::seconds(env_integer("PARE_DIST_TIMEOUT", 1, 86400)));
  return options;
}

DistributedOptions& DistributedOptions::process_group(c10::intrusive_ptr<c10d::ProcessGroup> value) {
  group_ = value ? std::make_shared<c10::intrusive_ptr<c10d::ProcessGroup>>(std::move(value)) : nullptr;
  return *this;
}

c10::intrusive_ptr<c10d::ProcessGroup> DistributedOptions::process_group() const {
  if (!group_) return {};
  return *std::static_pointer_cast<c10::intrusive_ptr<c10d::ProcessGroup>>(group_);
}

bool distributed_gloo_available() {
#ifdef PARE_WITH_GLOO
  return true;
#else
  return false;
#endif
}

namespace detail {

GradientSync::GradientSync(Group& group, const std::vector<torch::Tensor>& parameters, double bucket_mb)
    : group_(group), parameters_(parameters) {
  const auto cap = static_cast<int64_t>(bucket_mb * 1024 * 1024);
  int64_t bytes = 0;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const auto& p = parameters_[i];
    const int64_t size = p.numel() * int64_t(p.element_size());
    const bool same_kind = !buckets_.empty() && parameters_[buckets_.back().front()].options().type_equal(p.options());
    if (buckets_.empty() || !same_kind || bytes + size > cap) {
      buckets_.emplace_back();
      bytes = 0;
    }
    buckets_.back().push_back(i);
    bytes += size;
  }
  for (const auto& bucket : buckets_) {
    int64_t numel = 0;
    for (const size_t i : bucket) numel += parameters_[i].numel();
    flat_.push_back(torch::empty({numel}, parameters_[bucket.front()].options().requires_grad(false)));
  }
}

GradientSync::Step GradientSync::average(bool had_batch, double loss_sum, int64_t samples, const std::string& what) {
  torch::NoGradGuard no_grad;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    int64_t offset = 0;
    for (const size_t i : buckets_[b]) {
      const auto& p = parameters_[i];
      auto slot = flat_[b].narrow(0, offset, p.numel());
      if (had_batch && p.grad().defined()) slot.copy_(p.grad().reshape({-1}));
      else slot.zero_();
      offset += p.numel();
    }
  }
  auto tally = torch::tensor(
      {had_batch ? 1.0 : 0.0, loss_sum, double(samples)},
      torch::TensorOptions(torch::kDouble).device(flat_.empty() ? torch::Device(torch::kCPU) : flat_[0].device()));
  std::vector<torch::Tensor> tensors = flat_;
  tensors.push_back(tally);
  group_.all_reduce_sum(tensors, what);
  const auto totals = tally.cpu();
  Step step{std::llround(totals[0].item<double>()), totals[1].item<double>(), std::llround(totals[2].item<double>())};
  const double scale = step.contributors > 0 ? 1.0 / double(step.contributors) : 0.0;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    flat_[b].mul_(scale);
    int64_t offset = 0;
    for (const size_t i : buckets_[b]) {
      auto& p = parameters_[i];
      const auto averaged = flat_[b].narrow(0, offset, p.numel()).view(p.sizes());
      if (p.grad().defined()) p.mutable_grad().copy_(averaged);
      else p.mutable_grad() = averaged.clone();
      offset += p.numel();
    }
  }
  return step;
}

}  // namespace detail
}  // namespace pare
