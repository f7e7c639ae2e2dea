// Distill's checkpoints: parameters and buffers by position (their names and
// shapes kept beside them, so another model is refused), the optimizer's own
// serialization, the epochs done and their losses.

#include "distill/checkpoint.hpp"

#include <sys/stat.h>

#include <sstream>

#include "core/atomic_file.hpp"
#include "core/torch_errors.hpp"

namespace pare::detail {
namespace {

// "p name [shape]" / "b name [shape]" lines: what the checkpoint must match.
std::string layout_of(const torch::jit::Module& module) {
  std::ostringstream out;
  for (const auto& p : module.named_parameters()) out << "p " << p.name << " " << p.value.sizes() << "\n";
  for (const auto& b : module.named_buffers()) out << "b " << b.name << " " << b.value.sizes() << "\n";
  return out.str();
}

}  // namespace

void save_checkpoint(const std::string& path, const torch::jit::Module& student, torch::optim::Optimizer& optimizer,
                     const CheckpointState& state) {
  torch::serialize::OutputArchive archive;
  archive.write("layout", c10::IValue(layout_of(student)));
  archive.write("epochs_done", c10::IValue(state.epochs_done));
  archive.write("steps", c10::IValue(state.steps));
  archive.write("epoch_loss", c10::IValue(c10::List<double>(state.epoch_loss)));
  int64_t i = 0;
  for (const auto& p : student.parameters()) archive.write("p" + std::to_string(i++), p.detach().cpu());
  i = 0;
  for (const auto& b : student.buffers())
    archive.write("b" + std::to_string(i++), b.detach().cpu(), /*is_buffer=*/true);
  torch::serialize::OutputArchive optimizer_archive;
  optimizer.save(optimizer_archive);
  archive.write("optimizer", optimizer_archive);
  std::ostringstream bytes;
  archive.save_to(bytes);
  write_file_atomically(path, bytes.str(), "Distill checkpoint");
}

std::optional<CheckpointState> load_checkpoint(const std::string& path, torch::jit::Module& student,
                                               torch::optim::Optimizer& optimizer) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) return std::nullopt;
  const std::string who = "Distill: checkpoint '" + path + "'";
  torch::serialize::InputArchive archive;
  translate_torch_errors(
      who + " is not a Distill checkpoint", [&] { archive.load_from(path); }, Error::Kind::InvalidArgument);
  c10::IValue layout, epochs, steps, losses;
  require(archive.try_read("layout", layout) && layout.isString() && archive.try_read("epochs_done", epochs) &&
              archive.try_read("steps", steps) && archive.try_read("epoch_loss", losses),
          who + " is not a Distill checkpoint; delete it or choose another path");
  require(layout.toStringRef() == layout_of(student),
          who + " holds another model (its parameter names or shapes differ); delete it or choose another path");
  torch::NoGradGuard no_grad;
  int64_t i = 0;
  for (auto p : student.parameters()) {
    torch::Tensor saved;
    archive.read("p" + std::to_string(i++), saved);
    p.copy_(saved);
  }
  i = 0;
  for (auto b : student.buffers()) {
    torch::Tensor saved;
    archive.read("b" + std::to_string(i++), saved, /*is_buffer=*/true);
    b.copy_(saved);
  }
  torch::serialize::InputArchive optimizer_archive;
  archive.read("optimizer", optimizer_archive);
  translate_torch_errors(
      who + ": the optimizer state does not load", [&] { optimizer.load(optimizer_archive); },
      Error::Kind::InvalidArgument);
  CheckpointState state;
  state.epochs_done = epochs.toInt();
  state.steps = steps.toInt();
  for (const double loss : losses.toDoubleList()) state.epoch_loss.push_back(loss);
  return state;
}

}  // namespace pare::detail
