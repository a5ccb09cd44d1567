"""The CPU flash-attention kernel (``cpu_attention.cc``): built on first use, called through XLA's FFI.

The C++ source is compiled with the machine's C++ compiler (``$CXX``, else ``c++``/``g++``/
``clang++``) against the FFI headers jaxlib ships, with ``-O3 -march=native``, into
``$ROPE_LAB_KERNEL_DIR`` (default ``~/.cache/rope_lab/kernels``); the file name carries a
hash of the source, the flags, the compiler (its file), jaxlib's version and the CPU, so a change to
any of them builds anew and a cached build is never used on a machine it was not built for.
Building takes a few seconds once per machine.

``available()`` says whether the kernel can run here and, if not, why (no compiler, a failed
build, another platform): the ``fused`` attention then falls back to ``chunked`` and logs the
reason. ``attention(q, k, v, scale)`` is causal attention over whole rows; the kernel is forward
only, so its gradient is that of ``blockwise_reference``, the same function in plain JAX.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

SOURCE = os.path.join(os.path.dirname(__file__), "cpu_attention.cc")
TARGET = "rope_lab_cpu_flash_forward"
SYMBOL = "RopeLabCpuFlashForward"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC")
LANES = 16
MAX_HEAD_DIM = 256
HEAD_DIMS = tuple(range(LANES, 8 * LANES + 1, LANES)) + (MAX_HEAD_DIM,)  # the kernel's instantiations


def _compiler() -> str | None:
  found = (shutil.which(name) for name in (os.environ.get("CXX"), "c++", "g++", "clang++") if name)
  return next((path for path in found if path), None)


def _cpu_identity() -> str:
  """The CPU model and feature flags (what -march=native compiles for)."""
  text = platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
    text += "".join(sorted(set(lines)))
  except OSError:
    pass
  return text


def _kernel_dir() -> str:
  return os.environ.get("ROPE_LAB_KERNEL_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "rope_lab",
                                                               "kernels")


def _build(compiler: str, source_path: str | None = None, flags: tuple[str, ...] | None = None) -> str:
  """Path of the library built from ``source_path`` (default ``SOURCE``; building it unless a
  matching build is cached); the other CPU kernels of this package are built by it too."""
  source_path, flags = source_path or SOURCE, flags or FLAGS
  with open(source_path, "rb") as f:
    source = f.read()
  for header in sorted(glob.glob(os.path.join(os.path.dirname(source_path), "*.h"))):  # what it may include
    with open(header, "rb") as f:
      source += b"\0" + f.read()
  # The compiler by its resolved path, size and time stamp: no subprocess unless building.
  real = os.path.realpath(compiler)
  stat = os.stat(real)
  version = f"{real}:{stat.st_size}:{stat.st_mtime_ns}"
  key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode(),
                                    jaxlib.__version__.encode(), _cpu_identity().encode()])).hexdigest()[:16]
  directory = _kernel_dir()
  stem = os.path.splitext(os.path.basename(source_path))[0]
  library = os.path.join(directory, f"{stem}_{key}.so")
  if os.path.exists(library):
    return library
  os.makedirs(directory, exist_ok=True)
  # Built under a temporary name and renamed: concurrent builds (test workers) never load a
  # half-written library.
  fd, partial = tempfile.mkstemp(suffix=".so", dir=directory)
  os.close(fd)
  command = [compiler, *flags, f"-I{jax.ffi.include_dir()}", source_path, "-o", partial]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    os.unlink(partial)
    raise RuntimeError(f"building {source_path} failed ({' '.join(command)}):\n{result.stderr[-2000:]}")
  os.replace(partial, library)
  return library


@functools.cache
def available() -> tuple[bool, str]:
  """(True, library path) once the kernel is built, loaded and registered; else (False, why)."""
  if os.environ.get("ROPE_LAB_CPU_KERNEL", "1") == "0":
    return False, "the CPU kernel is switched off (ROPE_LAB_CPU_KERNEL=0)"
  compiler = _compiler()
  if compiler is None:
    return False, "no C++ compiler to build the CPU kernel (set $CXX or install g++/clang++)"
  try:
    library = _build(compiler)
    handler = getattr(ctypes.cdll.LoadLibrary(library), SYMBOL)
  except (RuntimeError, OSError, AttributeError) as e:
    return False, f"the CPU kernel could not be built or loaded: {e}"
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handler), platform="cpu")
  return True, library


def unsupported(*, head_dim: int, n_heads: int, n_kv_heads: int) -> str | None:
  """Why the kernel cannot take these shapes (None: it can)."""
  if head_dim not in HEAD_DIMS:
    return f"head_dim {head_dim} is not one of the CPU kernel's {HEAD_DIMS}"
  if n_heads % n_kv_heads:
    return f"{n_heads} query heads do not share {n_kv_heads} kv heads evenly"
  return None


def _forward(q, k, v, scale: float):
  ready, detail = available()
  if not ready:
    raise RuntimeError(f"rope_lab's CPU attention kernel cannot run: {detail}")
  out_type = jax.ShapeDtypeStruct(q.shape, jnp.float32)
  call = jax.ffi.ffi_call(TARGET, out_type, vmap_method="sequential")
  return call(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
              scale=np.float32(scale)).astype(q.dtype)


def blockwise_reference(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, scale: float, block: int = 512):
  """The kernel's function in plain JAX, differentiable, one block of queries at a time against
  every key (each block rematerialised in the backward pass, so memory stays O(block x L))."""
  b, length, n_heads, head_dim = q_BxLxHxD.shape
  n_kv = k_BxLxKxD.shape[2]
  block = min(block, length)
  n_blocks = -(-length // block)
  q = jnp.pad(q_BxLxHxD, [(0, 0), (0, n_blocks * block - length), (0, 0), (0, 0)])
  q = q.reshape(b, n_blocks, block, n_kv, n_heads // n_kv, head_dim).astype(jnp.float32)
  k, v = k_BxLxKxD.astype(jnp.float32), v_BxLxKxD.astype(jnp.float32)

  @jax.checkpoint
  def one_block(args):
    q_block, first = args  # [B, C, K, G, Dh], index of its first query
    scores = jnp.einsum("bckgd,bskd->bkgcs", q_block, k, precision="highest") * scale
    visible = first + jnp.arange(block)[:, None] >= jnp.arange(length)[None, :]
    probs = jax.nn.softmax(jnp.where(visible, scores, -jnp.inf), axis=-1)
    return jnp.einsum("bkgcs,bskd->bckgd", probs, v, precision="highest")

  out = jax.lax.map(one_block, (jnp.moveaxis(q, 1, 0), jnp.arange(n_blocks) * block))
  out = jnp.moveaxis(out, 0, 1).reshape(b, n_blocks * block, n_heads, head_dim)
  return out[:, :length].astype(q_BxLxHxD.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def attention(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, scale: float):
  """Causal softmax(scale q.k^T) v over whole rows by the kernel, out [B, L, H, D] in q's
  dtype (float32 inside). The gradient is ``blockwise_reference``'s: the kernel is forward only."""
  return _forward(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, scale)


def _attention_fwd(q, k, v, scale):
  return _forward(q, k, v, scale), (q, k, v)


def _attention_bwd(scale, residuals, out_cotangent):
  _, vjp = jax.vjp(lambda q, k, v: blockwise_reference(q, k, v, scale), *residuals)
  return vjp(out_cotangent)


attention.defvjp(_attention_fwd, _attention_bwd)
