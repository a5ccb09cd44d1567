"""The bfloat16 CPU matrix product (``cpu_matmul.cc``): AVX512-BF16, float32 accumulation, FFI.

XLA:CPU runs a bfloat16 dot at about the rate of a float32 one; the CPU's ``vdpbf16ps``
(AVX512-BF16: AMD Zen 4 and later, Intel Cooper Lake, Sapphire Rapids and later) does twice
the multiply-adds per instruction. ``matmul(x, w)`` computes x [..., K] . w [K, N] on it with
bfloat16 inputs (both cast at the call: parameters stay float32), float32 sums and the result
in ``out_dtype``; its gradient runs on the same kernel (dX = dY W^T, dW = X^T dY with dW
summed in float32 and returned in w's dtype).

The library is built on first use like the flash-attention kernel (``cpu_flash._build``: the
machine's C++ compiler, ``-O3 -march=native``, cached under a hash of source, flags,
compiler, jaxlib and CPU). ``available()`` says whether it can run here and, if not, why
(another platform, a CPU without avx512_bf16, no compiler, a failed build).

The model chooses it with ``ModelConfig.cpu_matmul`` (``choose``): "auto" takes it where it
can run and the compute dtype is bfloat16, else keeps XLA's dot and logs why once; "on"
where it cannot run is a ConfigError naming the reason; "off" never takes it. Under a mesh
of more than one device outside ``shard_map`` the product stays XLA's (the FFI call has no
partitioning rule), and "auto" says so.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import platform

import jax
import jax.numpy as jnp
from absl import logging

from rope_lab.errors import ConfigError
from rope_lab.model.kernels import cpu_flash

SOURCE = os.path.join(os.path.dirname(__file__), "cpu_matmul.cc")
TARGET = "rope_lab_cpu_matmul_bf16"
SYMBOL = "RopeLabCpuMatmulBf16"
MODES = ("auto", "on", "off")
_NOTED: set[str] = set()  # fallback reasons already logged


def _cpu_flags() -> set[str]:
  try:
    with open("/proc/cpuinfo") as f:
      line = next((line for line in f if line.startswith("flags")), "")
  except OSError:
    return set()
  return set(line.partition(":")[2].split())


@functools.cache
def available() -> tuple[bool, str]:
  """(True, library path) once the kernel is built, loaded and registered; else (False, why)."""
  if platform.machine() not in ("x86_64", "AMD64"):
    return False, f"the bfloat16 CPU kernel needs an x86-64 CPU with AVX512-BF16, not {platform.machine()}"
  if "avx512_bf16" not in _cpu_flags():
    return False, "this CPU lacks AVX512-BF16 (no avx512_bf16 in /proc/cpuinfo)"
  compiler = cpu_flash._compiler()  # pylint: disable=protected-access
  if compiler is None:
    return False, "no C++ compiler to build the bfloat16 CPU kernel (set $CXX or install g++/clang++)"
  try:
    library = cpu_flash._build(compiler, SOURCE)  # pylint: disable=protected-access
    handler = getattr(ctypes.cdll.LoadLibrary(library), SYMBOL)
  except (RuntimeError, OSError, AttributeError) as e:
    return False, f"the bfloat16 CPU kernel could not be built or loaded: {e}"
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handler), platform="cpu")
  return True, library


def missing_here() -> str | None:
  """Why the kernel cannot compute a product traced now (None: it can)."""
  backend = jax.default_backend()
  if backend != "cpu":
    return f"it runs on the CPU only; this platform is {backend!r}"
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and math.prod(n for a, n in mesh.shape.items() if a not in mesh.manual_axes) > 1:
    return f"a mesh of {mesh.size} devices is active (the kernel has no partitioning rule; it runs per shard only)"
  ready, detail = available()
  return None if ready else detail


def choose(mode: str, compute_dtype) -> bool:
  """Whether a product in ``compute_dtype`` runs on the kernel under ``ModelConfig.cpu_matmul=mode``."""
  if mode == "off" or jnp.dtype(compute_dtype) != jnp.dtype(jnp.bfloat16):
    return False
  why_not = missing_here()
  if why_not is None:
    return True
  if mode == "on":
    raise ConfigError(f"ModelConfig.cpu_matmul='on' cannot run: {why_not}; use cpu_matmul='auto' (XLA's dot "
                      "where the kernel cannot run) or 'off'")
  if why_not not in _NOTED:
    _NOTED.add(why_not)
    logging.warning("bfloat16 matmuls stay on XLA's dot: %s", why_not)
  return False


def _call(a, b, out_dtype, transpose_a: bool = False, transpose_b: bool = False):
  """The kernel on 2-D (or batched) bfloat16 operands."""
  rows, cols = a.shape[-1 if transpose_a else -2], b.shape[-2 if transpose_b else -1]
  out = jax.ShapeDtypeStruct(a.shape[:-2] + (rows, cols), out_dtype)
  return jax.ffi.ffi_call(TARGET, out, vmap_method="expand_dims")(
      a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), transpose_a=transpose_a, transpose_b=transpose_b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_2d(x_MxK, w_KxN, out_dtype):
  return _call(x_MxK, w_KxN, out_dtype)


def _matmul_fwd(x, w, out_dtype):
  return _call(x, w, out_dtype), (x, w)


def _matmul_bwd(out_dtype, residuals, dy_MxN):
  del out_dtype
  x, w = residuals
  dx = _call(dy_MxN, w, x.dtype, transpose_b=True)  # dY W^T
  dw = _call(x, dy_MxN, jnp.float32, transpose_a=True).astype(w.dtype)  # X^T dY, float32 sums
  return dx, dw


_matmul_2d.defvjp(_matmul_fwd, _matmul_bwd)


def reference(x, w, out_dtype=jnp.float32):
  """The same product by XLA: bfloat16 inputs, float32 accumulation (the fallback)."""
  y = jnp.dot(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
  return y.astype(out_dtype)


def matmul(x, w, out_dtype=jnp.float32):
  """x [..., K] . w [K, N] -> [..., N] in ``out_dtype``: bfloat16 inputs, float32 sums, on the
  kernel where it can run (else ``reference``). Differentiable in x and w."""
  if not available()[0]:
    return reference(x, w, out_dtype)
  lead = x.shape[:-1]
  y = _matmul_2d(x.astype(jnp.bfloat16).reshape(math.prod(lead), x.shape[-1]), w, jnp.dtype(out_dtype))
  return y.reshape(lead + (w.shape[-1],))
