"""Attention implementations, selected by the config's `attention_impl`.

Each takes `q [B, T, K, H, Dh]`, `k, v [B, T, K, G, Dh]` (copies on their own axis, copy 0
the original; H query heads share G key/value heads), the `PHDSpec`, and optional
`segment_ids [B, T]` and in-document `positions [B, T]`; each returns `[B, T, K, H, Dh]`
and is exact: it equals `dense` up to floating-point rounding.
"""

from __future__ import annotations

from phd_jax.attention.dense import dense_attention

IMPLEMENTATIONS = {
    "dense": dense_attention,
}


def resolve(impl: str) -> str:
  """The concrete implementation `impl` stands for on this backend."""
  if impl == "auto":
    return "dense"
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"attention_impl must be 'auto' or one of {sorted(IMPLEMENTATIONS)}; "
                     f"got {impl!r}")
  return impl


def attention(impl: str, q_BTKHD, k_BTKGD, v_BTKGD, spec, segment_ids_BT=None,
              positions_BT=None):
  return IMPLEMENTATIONS[resolve(impl)](q_BTKHD, k_BTKGD, v_BTKGD, spec, segment_ids_BT,
                                        positions_BT)
