// The arithmetic peak of this CPU's cores, for reading the CPU benchmark's times as fractions of it: 12
// independent chains of 512-bit float32 FMAs (VFMADD) or bfloat16 dot products (VDPBF16PS: two
// multiply-adds a lane), on 1 and 2 threads. Nothing else runs in the loop, so no kernel can go faster.
//
//   g++ -O3 -funroll-loops -mavx512f -mavx512bf16 -mavx512vl -pthread bench/cpu_peak.cpp -o cpu_peak
//   ./cpu_peak
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

namespace {

constexpr int kChains = 12;  // more than an FMA's latency times its issue rate

// GFLOP/s of one thread (a multiply-add counts 2).
template <bool kBf16>
double chains_gflops(long iterations) {
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(0.001f * i);
  const __m512 a = _mm512_set1_ps(1.0000001f), b = _mm512_set1_ps(0.9999999f);
  const __m512bh one = (__m512bh)_mm512_set1_epi32(0x3f803f80);  // bfloat16 pairs (1, 1)
  const auto start = std::chrono::steady_clock::now();
  for (long it = 0; it < iterations; ++it) {
    for (int i = 0; i < kChains; ++i) {
      acc[i] = kBf16 ? _mm512_dpbf16_ps(acc[i], one, one) : _mm512_fmadd_ps(acc[i], a, b);
    }
    // Every chain in a register, each iteration executed: without this the compiler may fold iterations.
    asm volatile("" : "+v"(acc[0]), "+v"(acc[1]), "+v"(acc[2]), "+v"(acc[3]), "+v"(acc[4]), "+v"(acc[5]),
                 "+v"(acc[6]), "+v"(acc[7]), "+v"(acc[8]), "+v"(acc[9]), "+v"(acc[10]), "+v"(acc[11]));
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  float sink[16];
  _mm512_storeu_ps(sink, acc[0]);
  if (sink[0] == 12345.0f) std::printf(" ");  // keep the chains alive
  const double flops_per_iteration = kChains * 16.0 * (kBf16 ? 4 : 2);
  return iterations * flops_per_iteration / seconds / 1e9;
}

}  // namespace

int main() {
  const long iterations = 200000000;
  for (int threads : {1, 2}) {
    for (bool bf16 : {false, true}) {
      std::vector<double> per_thread(threads);
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
          per_thread[t] = bf16 ? chains_gflops<true>(iterations) : chains_gflops<false>(iterations);
        });
      }
      for (std::thread& t : pool) t.join();
      double total = 0;
      for (double g : per_thread) total += g;
      std::printf("%d thread%s, %s: %.1f GFLOP/s\n", threads, threads > 1 ? "s" : "",
                  bf16 ? "bfloat16 dot products (VDPBF16PS)" : "float32 FMA", total);
    }
  }
  return 0;
}
