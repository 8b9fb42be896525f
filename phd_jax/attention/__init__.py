"""Attention implementations, selected by the config's `attention_impl`.

Each takes `q [B, T, K, H, Dh]`, `k, v [B, T, K, G, Dh]` (copies on their own axis, copy 0
the original; H query heads share G key/value heads), the `PHDSpec`, and optional
`segment_ids [B, T]` and in-document `positions [B, T]`; each returns `[B, T, K, H, Dh]`
and is exact: it equals `dense` up to floating-point rounding.

  dense       the reference: one softmax under the explicit (K*T)^2 mask (K^2 x vanilla)
  structured  plain JAX, any backend: originals + hidden band in one softmax (~K x vanilla)
  splash      TPU: splash kernels on the originals, merged with the hidden band
  cudnn       NVIDIA GPU: cuDNN flash attention on the originals, merged with the band
              (bfloat16/float16; other inputs run structured)
  auto        splash on TPU, cudnn on CUDA GPUs, structured elsewhere

PLT's later loops (`loops.py`) run their global part, causal attention over loop 0's keys,
on the same implementation, and their local window as a band in JAX ("dense": the
explicit two-softmax reference).
"""

from __future__ import annotations

import jax

from phd_jax.attention.cudnn import cudnn_attention
from phd_jax.attention.dense import dense_attention
from phd_jax.attention.splash import splash_attention
from phd_jax.attention.structured import structured_attention

IMPLEMENTATIONS = {
    "dense": dense_attention,
    "structured": structured_attention,
    "splash": splash_attention,
    "cudnn": cudnn_attention,
}
BACKENDS = {"splash": "tpu", "cudnn": "gpu"}  # implementations tied to one backend


def _backend() -> str:
  backend = jax.default_backend()
  if backend == "gpu" and "cuda" not in jax.devices()[0].client.platform_version.lower():
    return "rocm"  # no cuDNN
  return backend


def resolve(impl: str) -> str:
  """The concrete implementation `impl` stands for on this backend."""
  backend = _backend()
  if impl == "auto":
    return {"tpu": "splash", "gpu": "cudnn"}.get(backend, "structured")
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"attention_impl must be 'auto' or one of {sorted(IMPLEMENTATIONS)}; "
                     f"got {impl!r}")
  if BACKENDS.get(impl, backend) != backend:
    raise ValueError(f"attention_impl={impl!r} needs a {BACKENDS[impl]} backend; this one "
                     f"is {backend} (use 'auto' or 'structured')")
  return impl


def attention(impl: str, q_BTKHDh, k_BTKGDh, v_BTKGDh, spec, segment_ids_BT=None,
              positions_BT=None):
  return IMPLEMENTATIONS[resolve(impl)](q_BTKHDh, k_BTKGDh, v_BTKGDh, spec, segment_ids_BT,
                                        positions_BT)
