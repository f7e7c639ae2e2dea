// pare::load_calibration_file — calibration batches from a torch.save file.

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include <caffe2/serialize/in_memory_adapter.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/unpickler.h>
#include <torch/serialize.h>

#include "pare/quantize/quantize.hpp"
#include "core/torch_errors.hpp"

namespace pare {
namespace {

// Python's pickler writes a one-element list as EMPTY_LIST, item, APPEND,
// while LibTorch's unpickler knows only APPENDS (a MARK before the items):
// torch.save([batch]) from stock PyTorch would not load. Rewrites that top
// level shape to MARK ... APPENDS, which builds the same list.
std::string with_appends(std::string pickle) {
  const std::string list_start("\x80\x02]q\x00", 5);  // PROTO 2, EMPTY_LIST, BINPUT 0
  const std::string append_stop = "a.";              // APPEND, STOP
  if (pickle.size() < list_start.size() + append_stop.size() || pickle.compare(0, list_start.size(), list_start) != 0 ||
      pickle.compare(pickle.size() - append_stop.size(), append_stop.size(), append_stop) != 0)
    return pickle;
  pickle[pickle.size() - 2] = 'e';          // APPENDS
  pickle.insert(list_start.size(), 1, '(');  // MARK
  return pickle;
}

// torch.save's zip format: data.pkl plus one record per storage under data/.
c10::IValue unpickle_zip(const std::vector<char>& bytes) {
  caffe2::serialize::PyTorchStreamReader reader(
      std::make_shared<caffe2::serialize::MemoryReadAdapter>(bytes.data(), off_t(bytes.size())));
  // A TorchScript module is a zip too; its data.pkl names classes that only a
  // module loader can build, so it is refused before unpickling.
  TORCH_CHECK(!reader.hasRecord("constants.pkl"), "it is a TorchScript model (torch.jit.save), not a torch.save file");
  const auto [data, size] = reader.getRecord("data.pkl");
  const std::string pickle = with_appends(std::string(static_cast<const char*>(data.get()), size));
  size_t offset = 0;
  auto read = [&](char* buffer, size_t wanted) {
    const size_t n = std::min(wanted, pickle.size() - offset);
    std::memcpy(buffer, pickle.data() + offset, n);
    offset += n;
    return n;
  };
  auto read_record = [&](const std::string& name) { return std::get<0>(reader.getRecord("data/" + name)); };
  // Classes (pickled Python objects, modules) are not batches: refused by name.
  auto no_classes = [](const c10::QualifiedName& name) -> c10::StrongTypePtr {
    throw std::runtime_error("it holds an object of class " + name.qualifiedName() + ", not tensors");
  };
  torch::jit::Unpickler unpickler(read, no_classes, nullptr, read_record, c10::nullopt);
  unpickler.set_version(reader.version());
  return unpickler.parse_ivalue();
}

c10::IValue unpickle(const std::vector<char>& bytes, const std::string& path) {
  const bool zip = bytes.size() >= 4 && std::memcmp(bytes.data(), "PK\x03\x04", 4) == 0;
  return detail::translate_torch_errors(
      "'" + path + "' is not a torch.save file of tensors (make one with torch.save([batch1, batch2, ...], "
      "\"calib.pt\"))",
      [&] { return zip ? unpickle_zip(bytes) : torch::pickle_load(bytes); }, Error::Kind::InvalidArgument);
}

}  // namespace

InputBatches load_calibration_file(const std::string& path, int64_t batch_size) {
  require(batch_size > 0, "load_calibration_file: batch_size must be positive, got " + std::to_string(batch_size));
  std::ifstream file(path, std::ios::binary);
  require(file.good(), "no such calibration file: '" + path + "'");
  const std::vector<char> bytes((std::istreambuf_iterator<char>(file)), {});
  const c10::IValue value = unpickle(bytes, path);
  InputBatches batches;
  // One level, not a nested walk (ivalue_walk.hpp): a batch is a tensor or a tuple of a forward's inputs.
  auto add = [&](const c10::IValue& item) {
    if (item.isTensor()) batches.push_back({item});
    else if (item.isTuple()) batches.push_back(item.toTupleRef().elements().vec());
    else throw Error("calibration file '" + path + "' holds a " + item.tagKind() + "; expected tensors or tuples");
  };
  if (value.isTensor()) {
    require(value.toTensor().dim() > 0, "calibration file '" + path + "' holds a 0-d tensor; expected a batch");
    for (const auto& chunk : value.toTensor().split(batch_size)) batches.push_back({chunk});
  } else if (value.isList()) {
    for (const auto& item : value.toListRef()) add(item);
  } else {
    add(value);
  }
  require(!batches.empty(), "calibration file '" + path + "' holds no batches");
  return batches;
}

}  // namespace pare
