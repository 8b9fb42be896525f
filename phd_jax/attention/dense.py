"""The reference: one softmax over the interleaved K*T sequence with the explicit PHD mask.

Costs (K*T)^2 in compute and memory, K^2 times vanilla attention: exact and simple, the
yardstick every faster implementation is tested against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from phd_jax.masks import PHDSpec, spec_mask

MASKED = -1e30  # finite, so fully masked rows (never produced by PHD) could not make NaNs


def masked_attention(q_BQHDh, k_BSGDh, v_BSGDh, mask_BQS):
  """Grouped-query attention of Q queries over S keys in one softmax under an explicit
  boolean mask `[B|1, Q, S]` or `[Q, S]`; returns `[B, Q, H, Dh]`."""
  B, Q, H, Dh = q_BQHDh.shape
  S, G = k_BSGDh.shape[1], k_BSGDh.shape[2]
  q = q_BQHDh.reshape(B, Q, G, H // G, Dh)
  logits_BGRQS = jnp.einsum("bqgrd,bsgd->bgrqs", q, k_BSGDh,
                            preferred_element_type=jnp.float32) * Dh**-0.5
  mask_BQS = jnp.broadcast_to(mask_BQS, (B, Q, S))
  logits_BGRQS = jnp.where(mask_BQS[:, None, None], logits_BGRQS, MASKED)
  probs = jax.nn.softmax(logits_BGRQS, axis=-1).astype(v_BSGDh.dtype)
  out = jnp.einsum("bgrqs,bsgd->bqgrd", probs, v_BSGDh)
  return out.reshape(B, Q, H, Dh)


def dense_attention(q_BTKHDh, k_BTKGDh, v_BTKGDh, spec: PHDSpec, segment_ids_BT=None,
                    positions_BT=None):
  """Grouped-query attention under `phd_mask`; returns `[B, T, K, H, Dh]`."""
  B, T, K, H, Dh = q_BTKHDh.shape
  G = k_BTKGDh.shape[3]
  mask = spec_mask(spec, T, segment_ids=segment_ids_BT, positions=positions_BT)
  out = masked_attention(q_BTKHDh.reshape(B, T * K, H, Dh), k_BTKGDh.reshape(B, T * K, G, Dh),
                         v_BTKGDh.reshape(B, T * K, G, Dh), mask)
  return out.reshape(B, T, K, H, Dh)
