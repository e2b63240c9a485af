#include "persistent_choice.h"

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <tuple>

namespace fastcells::cuda {
namespace {

using Key = std::tuple<Cell, DType, int64_t, int64_t, bool>;

PersistentMode mode_from_environment() {
  const char* value = std::getenv("FASTCELLS_CUDA_PERSISTENT");
  if (value == nullptr || *value == '\0') return PersistentMode::kTable;
  return std::strcmp(value, "0") == 0 ? PersistentMode::kOff : PersistentMode::kOn;
}

struct State {
  std::shared_mutex mutex;
  PersistentMode mode = mode_from_environment();  // read once, when fastcells._C loads
  PersistentConfig on_config;
  std::map<Key, std::optional<PersistentConfig>> table;
};

State& state() {
  static State s;
  return s;
}

}  // namespace

void set_persistent_mode(PersistentMode mode, PersistentConfig on_config) {
  std::unique_lock lock(state().mutex);
  state().mode = mode;
  state().on_config = on_config;
}

void record_persistent_choice(Cell cell, DType dtype, int64_t batch, int64_t H, bool training,
                              std::optional<PersistentConfig> choice) {
  std::unique_lock lock(state().mutex);
  state().table[Key{cell, dtype, batch, H, training}] = choice;
}

std::optional<PersistentConfig> persistent_choice(Cell cell, DType dtype, int64_t batch, int64_t H,
                                                  bool training) {
  std::shared_lock lock(state().mutex);
  switch (state().mode) {
    case PersistentMode::kOn: return state().on_config;
    case PersistentMode::kOff: return std::nullopt;
    case PersistentMode::kTable: break;
  }
  const auto found = state().table.find(Key{cell, dtype, batch, H, training});
  return found == state().table.end() ? std::nullopt : found->second;
}

}  // namespace fastcells::cuda
