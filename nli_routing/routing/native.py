"""A native CPU kernel for the grouped matmul of routed banks (opt-in, built once per machine).

On the CPU :func:`torch.nn.functional.grouped_mm` runs a loop over the groups inside torch: for every
group, empty ones included, a slice of the rows, a view of the weight, a host read of the offsets and
one ``mm`` through the dispatcher, and in the weight gradient a zero-filled slice for every empty group.
With 128 blocks that is about a thousand operators a training step (BENCHMARKS.md, issue 33). This
module compiles a small C++ extension whose loop calls the BLAS ``sgemm`` that PyTorch itself links
(MKL or OpenBLAS) directly, once per non-empty group, for the three products of a bank (forward,
input gradient, weight gradient), and skips empty groups.

It is opt-in because it needs a C++ compiler and ``ninja`` (``pip install nli_routing[native]``) and takes
20-30 s to build the first time (PyTorch's extension cache, ``TORCH_EXTENSIONS_DIR``, keeps it afterwards):
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
"""

_FUNCTIONS = ["segment_mm", "segment_weight_grad"]
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
                    "about 20-30 s the first time on a machine)")
        module = load_inline(EXTENSION_NAME, cpp_sources=_SOURCE, functions=_FUNCTIONS, extra_cflags=["-O2"])
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
