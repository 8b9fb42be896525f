"""Attention of new tokens' copies over a cache: the PHD rules on (position, copy) pairs.

The training mask (`masks.phd_mask`) is laid out over one contiguous interleaved sequence.
Here keys come from three places (cached originals, the hidden window, the new tokens'
own copies), so the same rules are evaluated pairwise from each key's token position and
copy index; `tests/test_decode.py` checks the two forms agree on whole sequences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from phd_jax.decode.cache import Cache
from phd_jax.masks import PHDSpec


def visible(spec: PHDSpec, q_pos, q_copy, k_pos, k_copy):
  """Whether copy `q_copy` of the token at `q_pos` may attend to copy `k_copy` at `k_pos`.

  Arguments broadcast against each other; positions are in-document token positions.
  """
  allowed = ((k_copy == 0) & (k_pos < q_pos)) | ((k_pos == q_pos) & (k_copy <= q_copy))
  if spec.window:
    if spec.window_unit == "tokens":  # distance in the hidden stream
      dist = (q_pos - k_pos) * (spec.k - 1) + (q_copy - k_copy)
    else:
      dist = q_pos - k_pos
    in_window = (q_copy > 0) & (k_copy > 0) & (k_pos < q_pos) & (dist > 0) & (dist <= spec.window)
    if spec.chunk is not None:  # CSWA: as if the window were emptied at each chunk start
      in_window &= (q_pos // spec.chunk) == (k_pos // spec.chunk)
    allowed |= in_window
  return allowed


def cached_mask(spec: PHDSpec, cache: Cache, start, limit: int, positions_BN, real_BN,
                copies: int):
  """`[B, N*C, M]` mask of the new queries over keys [cache[:limit] | window | new].

  Cache slots count only below `start` (the new tokens' first slot) and from each row's
  first slot on. Padding (`real_BN` False) sees only padding, and real tokens only real
  ones, as segment ids do in training.
  """
  B, N = positions_BN.shape
  copy_C = jnp.arange(copies)
  q_pos = jnp.repeat(positions_BN, copies, axis=1)[:, :, None]
  q_copy = jnp.tile(copy_C, N)[None, :, None]
  q_real = jnp.repeat(real_BN, copies, axis=1)[:, :, None]

  slot_S = jnp.arange(limit)
  cache_pos = slot_S[None] - cache.first_slot[:, None]
  parts = [(jnp.maximum(cache_pos, 0), jnp.zeros_like(cache_pos), cache_pos >= 0,
            jnp.broadcast_to(slot_S < start, cache_pos.shape))]
  if cache.window is not None:
    w_pos = cache.window.positions
    parts.append((w_pos, cache.window.copies, w_pos >= 0, w_pos >= 0))
  new_pos = jnp.repeat(positions_BN, copies, axis=1)
  parts.append((new_pos, jnp.broadcast_to(jnp.tile(copy_C, N), new_pos.shape),
                jnp.repeat(real_BN, copies, axis=1), jnp.ones_like(new_pos, bool)))
  k_pos, k_copy, k_real, k_filled = (jnp.concatenate(p, axis=1)[:, None, :] for p in zip(*parts))
  return k_filled & (k_real == q_real) & visible(spec, q_pos, q_copy, k_pos, k_copy)


def cached_attention(cache: Cache, layer: int, limit: int, mask_BQM, q_BNCHD, k_BNCGD,
                     v_BNCGD):
  """Grouped-query attention of the new copies over [cache[:limit] | window | new]."""
  B, N, C, H, Dh = q_BNCHD.shape
  G = k_BNCGD.shape[3]
  def keys_of(cached, windowed, new):
    parts = [cached[layer][:, :limit].astype(new.dtype)]
    if windowed is not None:
      parts.append(windowed[layer].astype(new.dtype))
    parts.append(new.reshape(B, N * C, G, Dh))
    return jnp.concatenate(parts, axis=1)
  window = cache.window
  keys = keys_of(cache.keys, None if window is None else window.keys, k_BNCGD)
  values = keys_of(cache.values, None if window is None else window.values, v_BNCGD)
  o = jax.nn.dot_product_attention(q_BNCHD.reshape(B, N * C, H, Dh), keys, values,
                                   mask=mask_BQM[:, None])
  return o.reshape(B, N, C, H, Dh)
