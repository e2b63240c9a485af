// Binds the CPU implementations to the op schemas of ../ops.cpp.
#include <torch/library.h>

#include "ops_cpu.h"

TORCH_LIBRARY_IMPL(fastcells, CPU, m) {
  using namespace fastcells::cpu;
  m.impl("lstm_layer_fwd", &lstm_layer_fwd_cpu);
  m.impl("lstm_layer_bwd", &lstm_layer_bwd_cpu);
  m.impl("lstm_step_fwd", &lstm_step_fwd_cpu);
  m.impl("gru_layer_fwd", &gru_layer_fwd_cpu);
  m.impl("gru_layer_bwd", &gru_layer_bwd_cpu);
  m.impl("gru_step_fwd", &gru_step_fwd_cpu);
  m.impl("rnn_layer_fwd", &rnn_layer_fwd_cpu);
  m.impl("rnn_layer_bwd", &rnn_layer_bwd_cpu);
  m.impl("rnn_step_fwd", &rnn_step_fwd_cpu);
}
