// Where the time of a persistent forward step goes, on a GPU, without torch: a standalone driver of
// csrc/cuda/persistent.cu compiled with FASTCELLS_PHASE_PROBE, so thread 0 of every block counts the
// clock cycles of each phase of each step (wait for the other blocks, copy h_{t-1}, tensor-core
// products, the cell, publish). It times every variant (8 or 16 units a block x flags, grid.sync, or
// flags in clusters of 2, 4 or 8 blocks) of one shape with CUDA events and prints each phase's mean cycles a step, averaged over the blocks.
// Building the whole extension costs minutes of rented GPU time; this builds in one nvcc call (or here,
// and runs there: the CUDA runtime is linked statically).
//
//   nvcc -O3 -std=c++20 -lineinfo -Icsrc/include -Icsrc/cuda -gencode arch=compute_90,code=sm_90
//        bench/persistent_probe.cu -o persistent_probe     (one line)
//   ./persistent_probe [lstm|gru|rnn] T B H [rounds]     (default: lstm 1024 16 768 10)
//
// The phases' cycles are thread 0's view: a phase that ends in a barrier includes the wait for the
// block's slowest warp, and a block's wait includes the slowest other block's step.
#define FASTCELLS_PHASE_PROBE 1
#include "../csrc/cuda/persistent.cu"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace fastcells::cuda;

void check(cudaError_t error, const char* what) {
  if (error != cudaSuccess) {
    std::fprintf(stderr, "persistent_probe: %s: %s\n", what, cudaGetErrorString(error));
    std::exit(1);
  }
}

// bfloat16 bits of x, rounded to nearest even.
uint16_t bf16_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return static_cast<uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

float bf16_value(uint16_t bits) {
  const uint32_t wide = uint32_t{bits} << 16;
  float x;
  std::memcpy(&x, &wide, sizeof x);
  return x;
}

// A device tensor of n bfloat16 values drawn uniformly from [-scale, scale).
void* random_bf16(int64_t n, float scale, std::mt19937& rng) {
  std::uniform_real_distribution<float> uniform(-scale, scale);
  std::vector<uint16_t> host(static_cast<size_t>(n));
  for (auto& value : host) value = bf16_bits(uniform(rng));
  void* device = nullptr;
  check(cudaMalloc(&device, n * 2), "cudaMalloc");
  check(cudaMemcpy(device, host.data(), n * 2, cudaMemcpyHostToDevice), "cudaMemcpy");
  return device;
}

void* zeros(int64_t bytes) {
  void* device = nullptr;
  check(cudaMalloc(&device, bytes), "cudaMalloc");
  check(cudaMemset(device, 0, bytes), "cudaMemset");
  return device;
}

// The largest difference between y (n bfloat16 values on the device) and the y of the first call (every
// variant computes the same sums in the same order, so expect 0).
double max_difference_from_first(const void* y, int64_t n) {
  static std::vector<uint16_t> first;
  std::vector<uint16_t> now(static_cast<size_t>(n));
  check(cudaMemcpy(now.data(), y, n * 2, cudaMemcpyDeviceToHost), "copy y");
  if (first.empty()) first = now;
  double most = 0;
  for (size_t i = 0; i < now.size(); ++i) {
    const double difference = std::fabs(bf16_value(now[i]) - bf16_value(first[i]));
    if (!(difference <= most)) most = difference;  // a NaN too
  }
  return most;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string name = argc > 1 ? argv[1] : "lstm";
  const int64_t T = argc > 2 ? std::atoll(argv[2]) : 1024, B = argc > 3 ? std::atoll(argv[3]) : 16;
  const int64_t H = argc > 4 ? std::atoll(argv[4]) : 768;
  const int rounds = argc > 5 ? std::atoi(argv[5]) : 10;
  const Cell cell = name == "gru" ? Cell::kGru : name == "rnn" ? Cell::kRnn : Cell::kLstm;
  const int64_t G = gates_of(cell);
  std::mt19937 rng(0);

  SequenceFwd args{};
  args.cell = cell;
  args.gx = random_bf16(T * B * G * H, 1.0f, rng);
  args.w_hh = random_bf16(G * H * H, 1.0f / std::sqrt(static_cast<float>(H)), rng);
  args.b_hh = cell == Cell::kGru ? random_bf16(G * H, 0.1f, rng) : nullptr;
  args.h0 = random_bf16(B * H, 0.5f, rng);
  args.c0 = random_bf16(B * H, 0.5f, rng);
  args.y = zeros(T * B * H * 2);
  args.hn = zeros(B * H * 2);
  args.cn = zeros(B * H * 2);
  args.flags = static_cast<unsigned*>(zeros(4096 * sizeof(unsigned)));
  args.steps = T;
  args.batch = B;
  args.H = H;

  int clock_khz = 0;
  check(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0), "clock rate");
  std::printf("%s T=%lld B=%lld H=%lld bfloat16 (device clock %d MHz)\n", name.c_str(),
              static_cast<long long>(T), static_cast<long long>(B), static_cast<long long>(H), clock_khz / 1000);
  std::printf("variant       ms (median)  us/step | cycles a step: wait  copy-h  products  cell  publish"
              " | max |y - first variant's y|\n");
  cudaEvent_t start, end;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&end), "event");
  for (int units : {8, 16}) {
    for (const char* sync : {"flags", "grid", "cluster2", "cluster4", "cluster8"}) {
      const int cluster = std::strncmp(sync, "cluster", 7) == 0 ? std::atoi(sync + 7) : 1;
      const PersistentConfig config{units, std::strcmp(sync, "grid") != 0, cluster};
      if (!sequence_fwd_fits(DType::kBFloat16, cell, B, H, config)) {
        std::printf("%2d %-8s   does not fit\n", units, sync);
        continue;
      }
      for (int i = 0; i < 2; ++i) check(sequence_fwd(DType::kBFloat16, args, config, nullptr), "warm-up launch");
      check(cudaDeviceSynchronize(), "warm-up");
      const unsigned long long none[kPhases] = {};
      check(cudaMemcpyToSymbol(phase_cycles, none, sizeof none), "reset phase cycles");
      std::vector<float> times;
      for (int r = 0; r < rounds; ++r) {
        check(cudaEventRecord(start), "record");
        check(sequence_fwd(DType::kBFloat16, args, config, nullptr), "launch");
        check(cudaEventRecord(end), "record");
        check(cudaEventSynchronize(end), "kernel");
        float ms = 0;
        check(cudaEventElapsedTime(&ms, start, end), "elapsed");
        times.push_back(ms);
      }
      unsigned long long cycles[kPhases];
      check(cudaMemcpyFromSymbol(cycles, phase_cycles, sizeof cycles), "read phase cycles");
      std::sort(times.begin(), times.end());
      const float median = times[times.size() / 2];
      const double per_step = double(rounds) * T * sequence_fwd_blocks(cell, H, config);
      std::printf("%2d %-8s   %9.3f  %7.2f |", units, sync, median, 1000.0 * median / T);
      for (int i = 0; i < kPhases; ++i) std::printf(" %7.0f", cycles[i] / per_step);
      std::printf(" | %.3g\n", max_difference_from_first(args.y, T * B * H));
    }
  }
  // The last output row, as a check that the kernel computed something finite.
  std::vector<uint16_t> last(static_cast<size_t>(B * H));
  check(cudaMemcpy(last.data(), static_cast<uint16_t*>(args.y) + (T - 1) * B * H, B * H * 2,
                   cudaMemcpyDeviceToHost), "copy y");
  double sum = 0;
  for (uint16_t bits : last) sum += std::fabs(bf16_value(bits));
  std::printf("mean |y| of the last step: %.4f%s\n", sum / (B * H), std::isfinite(sum) ? "" : " (NOT FINITE)");
  return std::isfinite(sum) && sum > 0 ? 0 : 1;
}
