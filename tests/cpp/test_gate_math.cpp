// ctest of csrc/include/fastcells/gate_math.h against the C library and against finite differences.
// Needs no torch: it checks the one definition of the gate math that the CPU and CUDA kernels share.
#include <cmath>
#include <cstdio>
#include <random>

#include "fastcells/gate_math.h"

using namespace fastcells;

static int failures = 0;

static void expect_close(const char* what, double got, double want, double tol) {
  if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
    std::printf("FAIL %s: got %.17g want %.17g\n", what, got, want);
    ++failures;
  }
}

static void test_exp_sigmoid_tanh() {
  for (double x = -30.0; x <= 30.0; x += 0.0137) {
    expect_close("exp_(double)", exp_(x), std::exp(x), 4e-16);
    expect_close("exp_(float)", exp_(static_cast<float>(x)), std::exp(static_cast<float>(x)), 3e-7);
    expect_close("sigmoid_(double)", sigmoid_(x), 1.0 / (1.0 + std::exp(-x)), 4e-16);
    expect_close("tanh_(double)", tanh_(x), std::tanh(x), 1e-15);
    expect_close("tanh_(float)", tanh_(static_cast<float>(x)), std::tanh(static_cast<float>(x)), 4e-7);
  }
  expect_close("tanh_ saturates", tanh_(1000.0), 1.0, 0.0);
  expect_close("tanh_ saturates", tanh_(-1000.0), -1.0, 0.0);
  expect_close("sigmoid_ saturates", sigmoid_(-1000.0), 0.0, 1e-300);
  if (!std::isnan(exp_(std::nan("")))) {
    std::printf("FAIL exp_(nan) is not nan\n");
    ++failures;
  }
}

// Backward of each unit against central differences of its forward, in double.
static void test_unit_gradients() {
  std::mt19937 rng(7);
  std::normal_distribution<double> normal(0.0, 1.0);
  const double eps = 1e-6, tol = 1e-7;
  for (int trial = 0; trial < 200; ++trial) {
    double a[4], c_prev = normal(rng), dh = normal(rng), dc = normal(rng);
    for (double& v : a) v = 2.0 * normal(rng);
    auto loss = [&](const double* pre, double cp) {
      LstmUnit<double> u = lstm_unit_fwd(pre[0], pre[1], pre[2], pre[3], cp);
      return dh * u.h + dc * u.c;
    };
    LstmUnit<double> u = lstm_unit_fwd(a[0], a[1], a[2], a[3], c_prev);
    LstmUnitGrad<double> g = lstm_unit_bwd(u.i, u.f, u.g, u.o, c_prev, u.tanh_c, dh, dc);
    const double grads[4] = {g.d_i, g.d_f, g.d_g, g.d_o};
    for (int k = 0; k < 4; ++k) {
      double plus[4], minus[4];
      for (int q = 0; q < 4; ++q) plus[q] = minus[q] = a[q];
      plus[k] += eps;
      minus[k] -= eps;
      expect_close("lstm d_gate", grads[k], (loss(plus, c_prev) - loss(minus, c_prev)) / (2 * eps), tol);
    }
    expect_close("lstm d_c_prev", g.d_c_prev,
                 (loss(a, c_prev + eps) - loss(a, c_prev - eps)) / (2 * eps), tol);

    // GRU: inputs x_r, x_z, x_n, h_r, h_z, h_n, h_prev.
    double v[7];
    for (double& q : v) q = normal(rng);
    auto gru_loss = [&](const double* p) {
      return dh * gru_unit_fwd(p[0], p[1], p[2], p[3], p[4], p[5], p[6]).h;
    };
    GruUnit<double> gu = gru_unit_fwd(v[0], v[1], v[2], v[3], v[4], v[5], v[6]);
    GruUnitGrad<double> gg = gru_unit_bwd(gu.r, gu.z, gu.n, v[5], v[6], dh);
    const double gru_grads[7] = {gg.d_r, gg.d_z, gg.d_n, gg.d_r, gg.d_z, gg.d_hn, gg.d_h_prev};
    for (int k = 0; k < 7; ++k) {
      double plus[7], minus[7];
      for (int q = 0; q < 7; ++q) plus[q] = minus[q] = v[q];
      plus[k] += eps;
      minus[k] -= eps;
      expect_close("gru grad", gru_grads[k], (gru_loss(plus) - gru_loss(minus)) / (2 * eps), tol);
    }

    for (bool relu : {false, true}) {
      const double pre = normal(rng) + 0.01;
      const double fd = dh * (rnn_unit_fwd(pre + eps, relu) - rnn_unit_fwd(pre - eps, relu)) / (2 * eps);
      expect_close("rnn grad", rnn_unit_bwd(rnn_unit_fwd(pre, relu), dh, relu), fd, tol);
    }
  }
}

int main() {
  test_exp_sigmoid_tanh();
  test_unit_gradients();
  std::printf("%s: %d failures\n", failures ? "FAILED" : "passed", failures);
  return failures ? 1 : 0;
}
