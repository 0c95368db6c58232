"""A native CPU kernel for the grouped matmul of routed banks (opt-in, built once per machine).

On the CPU :func:`torch.nn.functional.grouped_mm` runs a loop over the groups inside torch: for every
group, empty ones included, a slice of the rows, a view of the weight, a host read of the offsets and
one ``mm`` through the dispatcher, and in the weight gradient a zero-filled slice for every empty group.
With 128 blocks that is about a thousand operators a training step (BENCHMARKS.md, issue 33). This
module compiles a small C++ extension whose loop calls the BLAS ``sgemm`` that PyTorch itself links
(MKL or OpenBLAS) directly, once per non-empty group, for the three products of a bank (forward,
input gradient, weight gradient), and skips empty groups.

Three more operators of the same extension take the per-step bookkeeping of a routed training step out of
Python (each one operator where torch dispatched ten to a few dozen; values, gradients and actions equal the
torch computations, tested):

* :func:`routed_path`: a routed layer's whole path through :class:`LinearBank` s decided ahead (tabular routers,
  fixed routes), forward and backward: every step groups its rows with a counting sort, runs one BLAS call per
  non-empty block, adds the bias and applies the activation (identity, relu, tanh); the rows go from one step's
  block order straight to the next's and back to input order once at the end, and the backward reads the sorted
  rows the forward kept (no operator between the steps).
  :meth:`RoutedLayer.forward_path <nli_routing.routing.layer.RoutedLayer.forward_path>` uses it when every bank
  resolves to ``"native"`` and nothing else is asked of the path (no residual gate, dropout, stop or PASS action,
  relaxed weights); otherwise the sorted path runs as before;
* :func:`qlearning_return_loss`: the tabular Q-learning loss with return targets (``QLearner(target="return")``,
  either batch mean), used by the learner where the switch is on;
* :func:`epsilon_greedy_rows`: epsilon-greedy over table rows after the same random draws (tabular routers'
  path decisions).

It is opt-in because it needs a C++ compiler and ``ninja`` (``pip install nli_routing[native]``) and takes
20-40 s to build the first time (PyTorch's extension cache, ``TORCH_EXTENSIONS_DIR``, keeps it afterwards):
``TrainConfig.native_cpu_kernels`` / ``--native_cpu_kernels``, ``RoutingTrainer(native_cpu_kernels=True)``
or :func:`enable_native_cpu_kernels` switch it on for the process; ``LinearBank(impl="native")`` asks for it
for one bank. Once on, ``impl="auto"`` banks use it for float32 CPU rows; other dtypes, devices and
``torch.compile`` keep ``grouped_mm``. A build that fails (no compiler, a PyTorch build without the BLAS
symbol) or a kernel whose self-check disagrees with ``torch.mm`` is reported once as a warning with the
reason, and the banks keep ``grouped_mm``. Values and gradients equal the per-sample reference (tested).
"""

from __future__ import annotations

import logging
import time
import warnings

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

#: the extension's C++ source: y = x_g @ W_g (or x_g @ W_g^T) and dW_g = x_g^T dy_g per group of sorted rows
_SOURCE = r"""
#include <torch/extension.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

// The Fortran BLAS entry point PyTorch's CPU build links (MKL's LP64 interface or OpenBLAS).
extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
                       const float*, const int*, const float*, const int*, const float*, float*, const int*);

// column-major C[m,n] = op(A) op(B) (beta 0): a row-major product seen transposed
static void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                 const float* b, int64_t ldb, float* c, int64_t ldc) {
  const int mi = (int)m, ni = (int)n, ki = (int)k, la = (int)lda, lb = (int)ldb, lc = (int)ldc;
  const float one = 1.f, zero = 0.f;
  sgemm_(&ta, &tb, &mi, &ni, &ki, &one, a, &la, b, &lb, &zero, c, &lc);
}

static void check(const torch::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "segment_mm: ", name, " must be on the CPU");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, "segment_mm: ", name, " must be float32");
  TORCH_CHECK(t.dim() == dim, "segment_mm: ", name, " must have ", dim, " dims, got ", t.dim());
  TORCH_CHECK(t.numel() < (int64_t)1 << 31, "segment_mm: ", name, " is too large for the 32-bit BLAS interface");
}

static std::vector<int64_t> ends(const torch::Tensor& offs, int64_t groups, int64_t rows) {
  TORCH_CHECK(offs.device().is_cpu() && offs.scalar_type() == torch::kInt32 && offs.dim() == 1 &&
              offs.size(0) == groups, "segment_mm: offs must be int32 [groups] on the CPU");
  auto o = offs.contiguous();
  const int32_t* p = o.data_ptr<int32_t>();
  std::vector<int64_t> e(groups);
  int64_t prev = 0;
  for (int64_t g = 0; g < groups; ++g) {
    TORCH_CHECK(p[g] >= prev && p[g] <= rows, "segment_mm: offsets must rise from 0 to at most ", rows);
    e[g] = prev = p[g];
  }
  return e;
}

// x [N, in] sorted by group, w [G, K, M]: y [N, M] = x_g @ w_g (trans_w: x [N, M], y [N, K] = x_g @ w_g^T).
// Rows past the last offset are zero.
torch::Tensor segment_mm(torch::Tensor x, torch::Tensor w, torch::Tensor offs, bool trans_w) {
  check(x, 2, "x"); check(w, 3, "w");
  const int64_t G = w.size(0), K = w.size(1), M = w.size(2), N = x.size(0);
  const int64_t in = trans_w ? M : K, out = trans_w ? K : M;
  TORCH_CHECK(x.size(1) == in, "segment_mm: x has ", x.size(1), " columns, the blocks take ", in);
  auto e = ends(offs, G, N);
  x = x.contiguous(); w = w.contiguous();
  auto y = torch::empty({N, out}, x.options());
  const float* xp = x.data_ptr<float>(); const float* wp = w.data_ptr<float>(); float* yp = y.data_ptr<float>();
  int64_t start = 0;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t rows = e[g] - start;
    if (rows > 0 && out > 0) {
      if (in == 0) std::memset(yp + start * out, 0, sizeof(float) * rows * out);
      else gemm(trans_w ? 'T' : 'N', 'N', out, rows, in, wp + g * K * M, M, xp + start * in, in, yp + start * out, out);
    }
    start = e[g];
  }
  if (start < N) std::memset(yp + start * out, 0, sizeof(float) * (N - start) * out);
  return y;
}

// dw [G, K, M] = x_g^T @ gy_g for x [N, K], gy [N, M] sorted by group (zero for empty groups)
torch::Tensor segment_weight_grad(torch::Tensor x, torch::Tensor gy, torch::Tensor offs, int64_t groups) {
  check(x, 2, "x"); check(gy, 2, "grad");
  const int64_t N = x.size(0), K = x.size(1), M = gy.size(1);
  TORCH_CHECK(gy.size(0) == N, "segment_mm: x and grad have different numbers of rows");
  auto e = ends(offs, groups, N);
  x = x.contiguous(); gy = gy.contiguous();
  auto dw = torch::empty({groups, K, M}, x.options());
  const float* xp = x.data_ptr<float>(); const float* gp = gy.data_ptr<float>(); float* dp = dw.data_ptr<float>();
  int64_t start = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t rows = e[g] - start;
    float* d = dp + g * K * M;
    if (rows > 0 && K > 0 && M > 0) gemm('N', 'T', M, K, rows, gp + start * M, M, xp + start * K, K, d, M);
    else std::fill(d, d + K * M, 0.f);
    start = e[g];
  }
  return dw;
}

// ---------------------------------------------------------------- a routed layer's whole path, one op
// Rows are in input order at the op's boundaries; inside, every step groups its rows by block with a
// counting sort (stable: input order within a block), gathers them from the previous step's order, runs
// one sgemm per non-empty block, adds the bias and applies the activation (0 identity, 1 relu, 2 tanh) in
// that order. No operator is dispatched per step or per group.

static void check_groups(const torch::Tensor& groups, int64_t n, int64_t depth) {
  TORCH_CHECK(groups.device().is_cpu() && groups.scalar_type() == torch::kInt64 && groups.dim() == 2 &&
              groups.size(0) == n && groups.size(1) == depth, "routed_path: groups must be int64 [rows, steps] on the CPU");
}

// stable counting sort of column t of groups [n, depth]: perm (sorted position -> row), ends per block
static void group_rows(const int64_t* g, int64_t n, int64_t depth, int64_t t, int64_t blocks,
                       std::vector<int64_t>& perm, std::vector<int64_t>& ends) {
  ends.assign(blocks, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = g[i * depth + t];
    TORCH_CHECK(k >= 0 && k < blocks, "routed_path: step ", t, " sends a row to block ", k, " of ", blocks);
    ++ends[k];
  }
  std::vector<int64_t> next(blocks);
  int64_t run = 0;
  for (int64_t k = 0; k < blocks; ++k) { next[k] = run; run += ends[k]; ends[k] = run; }
  perm.resize(n);
  for (int64_t i = 0; i < n; ++i) perm[next[g[i * depth + t]]++] = i;
}

static void check_step(const torch::Tensor& w, const torch::Tensor& b, int64_t in, int64_t t) {
  check(w, 3, "a weight"); check(b, 2, "a bias");
  TORCH_CHECK(w.size(1) == in, "routed_path: step ", t, " takes ", w.size(1), " columns, gets ", in);
  TORCH_CHECK(b.size(0) == w.size(0) && b.size(1) == w.size(2), "routed_path: step ", t, "'s bias does not match its weight");
}

// dst = src where o > 0, else 0, without a branch per element (half the rows of a relu are zero, at
// random: a branch mispredicts every other element)
static void relu_mask(float* dst, const float* src, const float* o, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    uint32_t bits;
    std::memcpy(&bits, src + j, sizeof(bits));
    bits &= 0u - (uint32_t)(o[j] > 0.f);
    std::memcpy(dst + j, &bits, sizeof(bits));
  }
}

// x [N, in]; every step t: x <- act_t(x_i @ W_t[g[i, t]] + b_t[g[i, t]]).
// Returns 1 + 3 * depth tensors: the path's output [N, out] (input order), then what the backward reads, each
// step in its own block order: the step's inputs xs_t [N, in], its outputs ys_t [N, out] (after the activation),
// and idx_t int64 [N + blocks] (the input row at each sorted position, then every block's end). Between the
// steps the rows go from one step's order straight to the next's: no input-order copy in between.
std::vector<torch::Tensor> routed_path_forward(torch::Tensor x, torch::Tensor groups, std::vector<torch::Tensor> ws,
                                               std::vector<torch::Tensor> bs, std::vector<int64_t> acts) {
  const int64_t depth = (int64_t)ws.size(), n = x.size(0);
  TORCH_CHECK(depth > 0 && (int64_t)bs.size() == depth && (int64_t)acts.size() == depth, "routed_path: one weight, bias and activation per step");
  check(x, 2, "x"); check_groups(groups, n, depth);
  auto gc = groups.contiguous();
  const int64_t* g = gc.data_ptr<int64_t>();
  std::vector<torch::Tensor> xss, yss, idxs;
  std::vector<int64_t> perm, ends, pos(n);
  auto xc = x.contiguous();
  int64_t in = x.size(1);
  for (int64_t t = 0; t < depth; ++t) {
    auto w = ws[t].contiguous(); auto b = bs[t].contiguous();
    check_step(w, b, in, t);
    const int64_t blocks = w.size(0), out = w.size(2);
    group_rows(g, n, depth, t, blocks, perm, ends);
    auto xs = torch::empty({n, in}, x.options());
    float* xp = xs.data_ptr<float>();
    if (t == 0) {
      const float* src = xc.data_ptr<float>();
      for (int64_t i = 0; i < n; ++i) std::memcpy(xp + i * in, src + perm[i] * in, sizeof(float) * in);
    } else {  // row perm[i] sits at position pos[perm[i]] of the previous step's order
      const float* src = yss.back().data_ptr<float>();
      for (int64_t i = 0; i < n; ++i) std::memcpy(xp + i * in, src + pos[perm[i]] * in, sizeof(float) * in);
    }
    auto ys = torch::empty({n, out}, x.options());
    float* yp = ys.data_ptr<float>();
    const float* wp = w.data_ptr<float>(); const float* bp = b.data_ptr<float>();
    int64_t start = 0;
    for (int64_t k = 0; k < blocks; ++k) {
      const int64_t rows = ends[k] - start;
      if (rows > 0 && out > 0) {
        if (in == 0) std::memset(yp + start * out, 0, sizeof(float) * rows * out);
        else gemm('N', 'N', out, rows, in, wp + k * in * out, out, xp + start * in, in, yp + start * out, out);
        const float* bias = bp + k * out;
        for (int64_t i = start; i < ends[k]; ++i) {
          float* row = yp + i * out;
          if (acts[t] == 1) for (int64_t j = 0; j < out; ++j) row[j] = std::max(row[j] + bias[j], 0.f);  // branch-free
          else if (acts[t] == 2) for (int64_t j = 0; j < out; ++j) row[j] = std::tanh(row[j] + bias[j]);
          else for (int64_t j = 0; j < out; ++j) row[j] += bias[j];
        }
      }
      start = ends[k];
    }
    auto idx = torch::empty({n + blocks}, gc.options());
    int64_t* ip = idx.data_ptr<int64_t>();
    std::memcpy(ip, perm.data(), sizeof(int64_t) * n);
    std::memcpy(ip + n, ends.data(), sizeof(int64_t) * blocks);
    for (int64_t i = 0; i < n; ++i) pos[perm[i]] = i;
    xss.push_back(xs); yss.push_back(ys); idxs.push_back(idx);
    in = out;
  }
  auto y = torch::empty({n, in}, x.options());
  float* yp = y.data_ptr<float>();
  const float* last = yss.back().data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) std::memcpy(yp + perm[i] * in, last + i * in, sizeof(float) * in);
  std::vector<torch::Tensor> result{y};
  for (auto* v : {&xss, &yss, &idxs}) for (auto& t : *v) result.push_back(t);
  return result;
}

// The gradients of routed_path_forward from its saved tensors (xs, ys, idx per step, as it returns them):
// [grad_x (undefined unless need_x), grad_w_0.., grad_b_0..].
std::vector<torch::Tensor> routed_path_backward(torch::Tensor grad, std::vector<torch::Tensor> xss,
                                                std::vector<torch::Tensor> yss, std::vector<torch::Tensor> idxs,
                                                std::vector<torch::Tensor> ws, std::vector<int64_t> acts, bool need_x) {
  const int64_t depth = (int64_t)ws.size();
  TORCH_CHECK(depth > 0 && (int64_t)xss.size() == depth && (int64_t)yss.size() == depth && (int64_t)idxs.size() == depth &&
              (int64_t)acts.size() == depth, "routed_path: the saved inputs, outputs and orders of every step");
  const int64_t n = xss[0].size(0);
  std::vector<torch::Tensor> gws(depth), gbs(depth);
  std::vector<int64_t> pos(n);     // position of each input row in the later step's order
  std::vector<float> gs, gxs, prev;  // prev: the gradient of the later step's sorted inputs
  auto gy = grad.contiguous();
  TORCH_CHECK(gy.dim() == 2 && gy.size(0) == n, "routed_path: the gradient must have one row per input row");
  torch::Tensor gx;
  for (int64_t t = depth - 1; t >= 0; --t) {
    auto w = ws[t].contiguous();
    const int64_t blocks = w.size(0), in = w.size(1), out = w.size(2);
    const float* xp = xss[t].data_ptr<float>(); const float* op = yss[t].data_ptr<float>();
    const int64_t* perm = idxs[t].data_ptr<int64_t>(); const int64_t* ends = perm + n;
    gs.resize(n * out);
    const float* gsrc = t == depth - 1 ? gy.data_ptr<float>() : prev.data();
    for (int64_t i = 0; i < n; ++i) {
      const float* src = gsrc + (t == depth - 1 ? perm[i] : pos[perm[i]]) * out;
      const float* o = op + i * out; float* dst = gs.data() + i * out;
      if (acts[t] == 1) relu_mask(dst, src, o, out);
      else if (acts[t] == 2) for (int64_t j = 0; j < out; ++j) dst[j] = src[j] * (1.f - o[j] * o[j]);
      else std::memcpy(dst, src, sizeof(float) * out);
    }
    auto gw = torch::empty({blocks, in, out}, w.options());
    auto gb = torch::zeros({blocks, out}, w.options());
    float* gwp = gw.data_ptr<float>(); float* gbp = gb.data_ptr<float>();
    const bool down = t > 0 || need_x;
    if (down) gxs.resize(n * in);
    const float* wp = w.data_ptr<float>();
    int64_t start = 0;
    for (int64_t k = 0; k < blocks; ++k) {
      const int64_t rows = ends[k] - start;
      float* d = gwp + k * in * out;
      if (rows > 0 && in > 0 && out > 0) gemm('N', 'T', out, in, rows, gs.data() + start * out, out, xp + start * in, in, d, out);
      else std::fill(d, d + in * out, 0.f);
      for (int64_t i = start; i < ends[k]; ++i) {
        const float* src = gs.data() + i * out; float* bsum = gbp + k * out;
        for (int64_t j = 0; j < out; ++j) bsum[j] += src[j];
      }
      if (down && rows > 0 && in > 0) {
        if (out == 0) std::memset(gxs.data() + start * in, 0, sizeof(float) * rows * in);
        else gemm('T', 'N', in, rows, out, wp + k * in * out, out, gs.data() + start * out, out, gxs.data() + start * in, in);
      }
      start = ends[k];
    }
    gws[t] = gw; gbs[t] = gb;
    if (t > 0) {  // this step's order, for the earlier step to read its rows from
      for (int64_t i = 0; i < n; ++i) pos[perm[i]] = i;
      prev.swap(gxs);
    } else if (need_x) {
      gx = torch::empty({n, in}, gy.options());
      float* gp = gx.data_ptr<float>();
      for (int64_t i = 0; i < n; ++i) std::memcpy(gp + perm[i] * in, gxs.data() + i * in, sizeof(float) * in);
    }
  }
  std::vector<torch::Tensor> result;
  result.push_back(gx);
  for (auto& t : gws) result.push_back(t);
  for (auto& t : gbs) result.push_back(t);
  return result;
}

// ---------------------------------------------------------------- the tabular Q-learning loss, one op
// Q-learning with return targets (QLearner(target="return")) over a tabular trajectory: the targets
// G_t = sum_{k >= t} gamma^(k - t) r_k + R_final on the active steps, the batch-mean weights 1 / n(key)
// (key: the state, or the state-action pair), loss = 0.5 sum w (Q(s_t, a_t) - G_t)^2. Returns the loss
// and its gradient with respect to the values [B, d, A] (non-zero only at the taken actions).
// values [B, d, A] (from_table false) or the router's table [S, A] whose row state_index[i, t] holds the
// values of decision (i, t) (from_table true); the gradient has the shape of that input.
static std::vector<torch::Tensor> qlearning_return_core(torch::Tensor values, bool from_table, torch::Tensor actions,
                                                        torch::Tensor active, torch::Tensor state_index,
                                                        torch::Tensor step_rewards, torch::Tensor final_reward,
                                                        double gamma, bool per_state_action, int64_t num_states) {
  check(values, from_table ? 2 : 3, from_table ? "table" : "values");
  TORCH_CHECK(actions.dim() == 2, "qlearning_loss: actions must be [batch, depth]");
  const int64_t b = actions.size(0), d = actions.size(1), a = values.size(from_table ? 1 : 2);
  TORCH_CHECK(from_table || (values.size(0) == b && values.size(1) == d), "qlearning_loss: values must be [", b, ", ", d, ", A]");
  const int64_t rows = from_table ? values.size(0) : num_states;
  auto same = [&](const torch::Tensor& t, torch::ScalarType type, const char* name) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == type && t.dim() == 2 && t.size(0) == b && t.size(1) == d,
                "qlearning_loss: ", name, " must be [", b, ", ", d, "] of the right type on the CPU");
  };
  same(actions, torch::kInt64, "actions"); same(active, torch::kBool, "active");
  same(state_index, torch::kInt64, "state_index"); same(step_rewards, torch::kFloat32, "step_rewards");
  TORCH_CHECK(final_reward.device().is_cpu() && final_reward.scalar_type() == torch::kFloat32 && final_reward.dim() == 1 &&
              final_reward.size(0) == b, "qlearning_loss: final_reward must be float32 [", b, "] on the CPU");
  TORCH_CHECK(num_states > 0, "qlearning_loss: needs the number of states");
  auto v = values.contiguous(); auto ac = actions.contiguous(); auto av = active.contiguous();
  auto si = state_index.contiguous(); auto r = step_rewards.contiguous(); auto fr = final_reward.contiguous();
  const float* vp = v.data_ptr<float>(); const int64_t* ap = ac.data_ptr<int64_t>(); const bool* act = av.data_ptr<bool>();
  const int64_t* sp = si.data_ptr<int64_t>(); const float* rp = r.data_ptr<float>(); const float* fp = fr.data_ptr<float>();
  const int64_t bins = per_state_action ? num_states * a : num_states;
  std::vector<int64_t> keys(b * d, -1);
  std::vector<float> counts(bins, 0.f);
  for (int64_t i = 0; i < b * d; ++i) {
    if (!act[i]) continue;
    const int64_t s = sp[i], k = std::max<int64_t>(ap[i], 0);
    TORCH_CHECK(s >= 0 && s < num_states && s < rows, "qlearning_loss: state ", s, " outside the ", std::min(num_states, rows), " states");
    TORCH_CHECK(k < a, "qlearning_loss: action ", k, " outside the ", a, " actions");
    keys[i] = per_state_action ? s * a + k : s;
    counts[keys[i]] += 1.f;
  }
  auto grad = torch::zeros(v.sizes(), values.options());
  float* gp = grad.data_ptr<float>();
  double loss = 0.0;
  for (int64_t i = 0; i < b; ++i) {
    double later = 0.0;  // sum_{k > t} gamma^(k - t - 1)... built backwards: G_t - R_final
    for (int64_t t = d - 1; t >= 0; --t) {
      const int64_t j = i * d + t;
      later = (act[j] ? (double)rp[j] : 0.0) + gamma * later;
      if (!act[j]) continue;
      const float target = (float)(later + (double)fp[i]);
      const int64_t at = (from_table ? sp[j] : j) * a + std::max<int64_t>(ap[j], 0);
      const float w = 1.f / counts[keys[j]];
      const float diff = vp[at] - target;
      loss += 0.5 * (double)w * (double)diff * (double)diff;
      gp[at] += w * diff;
    }
  }
  return {torch::full({}, (float)loss, values.options()), grad};
}

// the core's loss and gradient, without autograd (tests and the self-check call it directly)
std::vector<torch::Tensor> qlearning_return_loss(torch::Tensor values, torch::Tensor actions, torch::Tensor active,
                                                 torch::Tensor state_index, torch::Tensor step_rewards,
                                                 torch::Tensor final_reward, double gamma, bool per_state_action,
                                                 int64_t num_states, bool from_table) {
  return qlearning_return_core(values, from_table, actions, active, state_index, step_rewards, final_reward, gamma,
                               per_state_action, num_states);
}

// ---------------------------------------------------------------- autograd functions in C++
// The two fused operators above as autograd nodes whose forward and backward run without Python (a
// Python torch.autograd.Function costs about 0.1 ms a call and its backward on this project's CPU).
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct RoutedPathFunction : public torch::autograd::Function<RoutedPathFunction> {
  // params: the depth weights, then the depth biases
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, torch::Tensor groups, std::vector<int64_t> acts,
                               at::TensorList params) {
    const int64_t depth = (int64_t)acts.size();
    TORCH_CHECK((int64_t)params.size() == 2 * depth, "routed_path: one weight and one bias per step");
    std::vector<torch::Tensor> ws(params.begin(), params.begin() + depth), bs(params.begin() + depth, params.end());
    auto got = routed_path_forward(x, groups, ws, bs, acts);
    variable_list saved(ws.begin(), ws.end());
    saved.insert(saved.end(), got.begin() + 1, got.end());  // every step's sorted inputs, outputs and order
    ctx->save_for_backward(saved);
    ctx->saved_data["acts"] = acts;
    ctx->saved_data["x_grad"] = x.requires_grad();
    return got[0];
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto acts = ctx->saved_data["acts"].toIntVector();
    const int64_t d = (int64_t)acts.size();
    auto part = [&](int64_t k) { return std::vector<torch::Tensor>(saved.begin() + k * d, saved.begin() + (k + 1) * d); };
    auto got = routed_path_backward(grads[0], part(1), part(2), part(3), part(0), acts, ctx->saved_data["x_grad"].toBool());
    variable_list result{got[0], torch::Tensor(), torch::Tensor()};  // x, groups, acts
    for (size_t i = 1; i < got.size(); ++i) result.push_back(got[i]);
    return result;
  }
};

torch::Tensor routed_path(torch::Tensor x, torch::Tensor groups, std::vector<int64_t> acts, std::vector<torch::Tensor> params) {
  return RoutedPathFunction::apply(x, groups, acts, at::TensorList(params));
}

struct QLearningReturnLossFunction : public torch::autograd::Function<QLearningReturnLossFunction> {
  // values: the trajectory's values [B, d, A], or (from_table) the router's table [S, A] they were read from
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor values, torch::Tensor actions, torch::Tensor active,
                               torch::Tensor state_index, torch::Tensor step_rewards, torch::Tensor final_reward,
                               double gamma, bool per_state_action, int64_t num_states, bool from_table) {
    auto got = qlearning_return_core(values, from_table, actions, active, state_index, step_rewards, final_reward, gamma,
                                     per_state_action, num_states);
    ctx->save_for_backward({got[1]});
    return got[0];
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto grad = ctx->get_saved_variables()[0];
    variable_list result{grad * grads[0]};
    for (int i = 0; i < 9; ++i) result.push_back(torch::Tensor());
    return result;
  }
};

torch::Tensor qlearning_loss(torch::Tensor values, torch::Tensor actions, torch::Tensor active, torch::Tensor state_index,
                             torch::Tensor step_rewards, torch::Tensor final_reward, double gamma, bool per_state_action,
                             int64_t num_states, bool from_table) {
  return QLearningReturnLossFunction::apply(values, actions, active, state_index, step_rewards, final_reward, gamma,
                                            per_state_action, num_states, from_table);
}

// ---------------------------------------------------------------- epsilon-greedy over table rows, one op
// learners.base.epsilon_greedy_rows after its random draws u [3, N] (tie pick, explore?, which other
// action): the greedy action of each decision's row (ties: the lowest maximum, or the (u0 * n_max)-th),
// replaced with probability epsilon by one of the other actions. Float32 products truncated as torch does.
std::vector<torch::Tensor> epsilon_greedy_rows(torch::Tensor table, torch::Tensor rows, torch::Tensor u,
                                               double epsilon, bool random_ties) {
  check(table, 2, "table");
  const int64_t r = table.size(0), a = table.size(1), n = rows.size(0);
  TORCH_CHECK(a > 0, "epsilon_greedy_rows: a table without actions");
  TORCH_CHECK(rows.device().is_cpu() && rows.scalar_type() == torch::kInt64 && rows.dim() == 1,
              "epsilon_greedy_rows: rows must be int64 [N] on the CPU");
  TORCH_CHECK(u.device().is_cpu() && u.scalar_type() == torch::kFloat32 && u.dim() == 2 && u.size(0) == 3 && u.size(1) == n,
              "epsilon_greedy_rows: u must be float32 [3, N] on the CPU");
  auto tc = table.contiguous(); auto rc = rows.contiguous(); auto uc = u.contiguous();
  const float* tp = tc.data_ptr<float>(); const int64_t* rp = rc.data_ptr<int64_t>(); const float* up = uc.data_ptr<float>();
  std::vector<int64_t> maxima(r * a), n_max(r);  // each row's maximal actions in order, and how many
  for (int64_t i = 0; i < r; ++i) {
    const float* row = tp + i * a;
    float best = row[0];
    for (int64_t j = 1; j < a; ++j) best = std::max(best, row[j]);
    int64_t c = 0;
    for (int64_t j = 0; j < a; ++j) if (row[j] >= best) maxima[i * a + c++] = j;
    n_max[i] = c;
  }
  auto actions = torch::empty({n}, rows.options());
  auto explored = torch::zeros({n}, rows.options().dtype(torch::kBool));
  int64_t* act = actions.data_ptr<int64_t>(); bool* ex = explored.data_ptr<bool>();
  const bool explore = epsilon > 0.0 && a >= 2;
  const float eps = (float)epsilon;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = rp[i];
    TORCH_CHECK(row >= 0 && row < r, "epsilon_greedy_rows: row ", row, " outside the table's ", r);
    const int64_t k = n_max[row];
    int64_t pick = 0;
    if (random_ties && k > 0) pick = std::min<int64_t>((int64_t)(up[i] * (float)k), k - 1);
    const int64_t greedy = k > 0 ? maxima[row * a + pick] : 0;
    act[i] = greedy;
    if (explore && up[n + i] < eps) {
      int64_t other = std::min<int64_t>((int64_t)(up[2 * n + i] * (float)(a - 1)), a - 2);
      other += other >= greedy;
      act[i] = other;
      ex[i] = true;
    }
  }
  return {actions, explored};
}
"""

_FUNCTIONS = ["segment_mm", "segment_weight_grad", "routed_path_forward", "routed_path_backward",
              "qlearning_return_loss", "epsilon_greedy_rows",
              "routed_path", "qlearning_loss"]
#: the extension's module name (load_inline rebuilds it when the source changes)
EXTENSION_NAME = "nli_routing_segment_mm"

_state: dict[str, object] = {"module": None, "tried": False, "enabled": False, "reason": "not built yet"}


def _self_check(module) -> str | None:
    """None when the kernel agrees with ``torch.mm`` on a small case with an empty group, else why not."""
    g = torch.Generator().manual_seed(0)
    x, w, gy = torch.randn(7, 5, generator=g), torch.randn(3, 5, 4, generator=g), torch.randn(7, 4, generator=g)
    offs = torch.tensor([3, 3, 7], dtype=torch.int32)  # group 1 empty
    parts = [(0, 3, 0), (3, 7, 2)]
    want_y = torch.cat([x[a:b] @ w[k] for a, b, k in parts])
    want_dx = torch.cat([gy[a:b] @ w[k].t() for a, b, k in parts])
    want_dw = torch.stack([x[0:3].t() @ gy[0:3], torch.zeros(5, 4), x[3:7].t() @ gy[3:7]])
    got = (module.segment_mm(x, w, offs, False), module.segment_mm(gy, w, offs, True),
           module.segment_weight_grad(x, gy, offs, 3))
    for name, a, b in zip(("forward", "input gradient", "weight gradient"), got, (want_y, want_dx, want_dw)):
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
            return f"its {name} disagrees with torch.mm (max difference {float((a - b).abs().max()):.3g})"
    # the routed path: two steps (relu, then identity), block 1 of the first step unused
    w1, b1 = torch.randn(3, 5, 4, generator=g), torch.randn(3, 4, generator=g)
    w2, b2 = torch.randn(2, 4, 3, generator=g), torch.randn(2, 3, generator=g)
    groups = torch.tensor([[2, 0], [0, 1], [2, 1], [0, 0], [2, 0], [0, 1], [2, 1]])
    h = torch.relu(torch.einsum("ni,nio->no", x, w1[groups[:, 0]]) + b1[groups[:, 0]])
    want = torch.einsum("ni,nio->no", h, w2[groups[:, 1]]) + b2[groups[:, 1]]
    got = module.routed_path_forward(x, groups, [w1, w2], [b1, b2], [1, 0])
    if not torch.allclose(got[0], want, rtol=1e-4, atol=1e-5):
        return f"its routed path disagrees with torch (max difference {float((got[0] - want).abs().max()):.3g})"
    gy2 = torch.randn(7, 3, generator=g)
    grads = module.routed_path_backward(gy2, got[1:3], got[3:5], got[5:7], [w1, w2], [1, 0], True)
    ref = [t.clone().requires_grad_() for t in (x, w1, w2, b1, b2)]
    hr = torch.relu(torch.einsum("ni,nio->no", ref[0], ref[1][groups[:, 0]]) + ref[3][groups[:, 0]])
    (torch.einsum("ni,nio->no", hr, ref[2][groups[:, 1]]) + ref[4][groups[:, 1]]).backward(gy2)
    for name, a, r in zip(("input", "first weight", "second weight", "first bias", "second bias"), grads, ref):
        if not torch.allclose(a, r.grad, rtol=1e-4, atol=1e-5):
            return f"its routed path's {name} gradient disagrees with torch (max difference {float((a - r.grad).abs().max()):.3g})"
    return None


def load_native_kernel():
    """The compiled extension (built on the first call of the process, from PyTorch's cache when it was
    built before), or None when it cannot be built or fails its self-check (:func:`native_kernel_reason`)."""
    if _state["tried"]:
        return _state["module"]
    _state["tried"] = True
    t0 = time.perf_counter()
    try:
        from torch.utils.cpp_extension import load_inline

        logger.info("loading the native CPU segment-matmul kernel (from PyTorch's extension cache, or built: "
                    "about 20-40 s the first time)")
        module = load_inline(EXTENSION_NAME, cpp_sources=_SOURCE, functions=_FUNCTIONS, extra_cflags=["-O3"])
    except Exception as e:  # noqa: BLE001 -- a missing compiler / ninja, a failed build, a BLAS symbol this torch lacks
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _state["reason"] = f"the native CPU kernel could not be built or loaded ({type(e).__name__}: {first[:200]})"
        return None
    problem = _self_check(module)
    if problem is not None:
        _state["reason"] = f"the native CPU kernel failed its self-check: {problem}"
        return None
    _state["module"], _state["reason"] = module, "ready"
    logger.info("native CPU segment-matmul kernel ready (%.1f s)", time.perf_counter() - t0)
    return module


def enable_native_cpu_kernels() -> bool:
    """Switch the native kernel on for this process (``impl="auto"`` banks use it for float32 CPU rows).
    Builds it if needed; returns whether it is on. A failure warns once with the reason and leaves the
    banks on ``grouped_mm``."""
    if load_native_kernel() is None:
        if not _state["enabled"] and not _state.get("warned"):
            _state["warned"] = True
            warnings.warn(f"{native_kernel_reason()}; routed banks keep torch's grouped_mm", RuntimeWarning,
                          stacklevel=2)
        return False
    _state["enabled"] = True
    return True


def disable_native_cpu_kernels() -> None:
    """Switch the process-wide use off again (explicit ``impl="native"`` banks keep it)."""
    _state["enabled"] = False


def native_cpu_kernels_enabled() -> bool:
    return bool(_state["enabled"])


def native_kernel_state(asked: bool) -> str:
    """What a run that ``asked`` for the kernel got, for its records: "off", "on", or "asked for, not running:
    <reason>" (a failed build leaves the banks on ``grouped_mm``)."""
    if not asked:
        return "off"
    return "on" if native_cpu_kernels_enabled() else f"asked for, not running: {native_kernel_reason()}"


def native_kernel_reason() -> str:
    """Why the kernel is not available ("ready" when it is)."""
    return str(_state["reason"])


def native_runs(x: Tensor) -> bool:
    """Whether the native kernel can run rows ``x`` (float32 on the CPU, not under ``torch.compile``)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.compiler.is_compiling()


class _SegmentMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, offs: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight, offs)
        return _state["module"].segment_mm(x, weight, offs, False)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, offs = ctx.saved_tensors
        module = _state["module"]
        grad = grad.contiguous()
        grad_x = module.segment_mm(grad, weight, offs, True) if ctx.needs_input_grad[0] else None
        grad_w = module.segment_weight_grad(x, grad, offs, weight.shape[0]) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None


def segment_matmul(x: Tensor, weight: Tensor, offs: Tensor) -> Tensor:
    """``grouped_mm(x, weight, offs)`` by the native kernel: rows ``x [N, K]`` sorted by group, ``weight
    [G, K, M]``, ``offs`` the int32 end offset of every group; rows past the last offset give zeros.
    Needs :func:`load_native_kernel` to have succeeded and :func:`native_runs` for ``x``."""
    if _state["module"] is None:
        raise RuntimeError(f"segment_matmul: {native_kernel_reason()}")
    return _SegmentMatmul.apply(x, weight, offs)


#: the bank activations the fused path computes itself (:func:`routed_path`), as the kernel's codes
PATH_ACTIVATIONS = {"identity": 0, "relu": 1, "tanh": 2}


def _apply_routed_path(x: Tensor, groups: Tensor, acts: list[int], params: list[Tensor]) -> Tensor:
    """The kernel's autograd node (C++ forward and backward; one place for tests to watch)."""
    return _state["module"].routed_path(x, groups, acts, params)


def routed_path(x: Tensor, groups: Tensor, banks: list) -> Tensor:
    """Rows ``x [N, in]`` (input order) through one block of every bank in turn, block ``groups[i, t]`` of
    ``banks[t]`` for row i at step t, as one operator (forward and backward): the native kernel groups the
    rows of every step itself (a counting sort), runs one BLAS call per non-empty block, adds the bias and
    applies the bank's activation, and keeps the rows in input order. Banks: :class:`LinearBank` s without
    residual gate or dropout, activations of :data:`PATH_ACTIVATIONS` (:meth:`LinearBank.runs_native_path
    <nli_routing.routing.bank.LinearBank.runs_native_path>`). Values and gradients
    equal the sorted path's (tested)."""
    if _state["module"] is None:
        raise RuntimeError(f"routed_path: {native_kernel_reason()}")
    acts = [PATH_ACTIVATIONS[b.activation] for b in banks]
    return _apply_routed_path(x, groups, acts, [*(b.weight for b in banks), *(b.bias for b in banks)])


def _apply_qlearning_loss(*args) -> Tensor:
    """The kernel's autograd node for the loss (C++ forward and backward; one place for tests to watch)."""
    return _state["module"].qlearning_loss(*args)


def qlearning_native_runs(trajectory, rewards: bool = True) -> bool:
    """Whether :func:`qlearning_return_loss` computes this trajectory's loss: the switch is on, tabular states
    (``state_index`` and ``num_states``), float32 CPU values, not under ``torch.compile``, and (``rewards``) its
    rewards assigned; ``rewards=False`` asks before they are."""
    return (native_cpu_kernels_enabled() and trajectory.state_index is not None and trajectory.num_states > 0
            and (not rewards or (trajectory.step_rewards is not None and trajectory.final_reward is not None))
            and native_runs(trajectory.values))


def qlearning_return_loss(trajectory, gamma: float, batch_mean: str) -> Tensor:
    """The loss of :class:`~nli_routing.routing.learners.qlearning.QLearner` with return targets as one
    operator: ``0.5 * sum(w * (Q(s_t, a_t) - G_t) ** 2)`` with ``G_t`` the return from step t and ``w`` the batch
    mean's ``1 / n(state)`` (``batch_mean="state"``) or ``1 / n(state, action)``; the gradient reaches the
    trajectory's values at the taken actions, or, where the trajectory carries the router's table unchanged since
    the decisions (:meth:`Trajectory.table_unchanged <nli_routing.routing.trajectory.Trajectory.table_unchanged>`),
    the table's rows directly (no ``[B, d, A]`` gradient and no row gather's backward). Same value and gradient as
    the learner's own loss (tested)."""
    if _state["module"] is None:
        raise RuntimeError(f"qlearning_return_loss: {native_kernel_reason()}")
    t = trajectory

    def as_type(x: Tensor, dtype: torch.dtype) -> Tensor:  # no dispatch when it already is
        return x if x.dtype == dtype else x.to(dtype)

    # the table the values were read from, while it is unchanged: the gradient lands on its [S, A] rows directly
    # (no [B, d, A] gradient, no row gather's backward)
    from_table = t.table is not None and t.table.dtype == torch.float32 and t.table_unchanged()
    return _apply_qlearning_loss(t.table if from_table else t.values, as_type(t.actions, torch.int64), t.active,
                                 as_type(t.state_index, torch.int64), as_type(t.step_rewards, torch.float32),
                                 as_type(t.final_reward, torch.float32), float(gamma), batch_mean == "state-action",
                                 int(t.num_states), from_table)


def greedy_rows_native_runs(table: Tensor, rows: Tensor) -> bool:
    """Whether :func:`epsilon_greedy_rows` decides for this table (the switch on, float32 CPU rows)."""
    return native_cpu_kernels_enabled() and native_runs(table) and rows.dtype == torch.int64 and rows.device.type == "cpu"


def epsilon_greedy_rows(table: Tensor, rows: Tensor, u: Tensor, epsilon: float, ties: str) -> tuple[Tensor, Tensor]:
    """:func:`nli_routing.routing.learners.base.epsilon_greedy_rows` after its random draws ``u [3, N]``, as one
    operator: the same actions and exploration flags for the same draws (tested)."""
    if _state["module"] is None:
        raise RuntimeError(f"epsilon_greedy_rows: {native_kernel_reason()}")
    actions, explored = _state["module"].epsilon_greedy_rows(table.detach(), rows, u, float(epsilon), ties == "random")
    return actions, explored
