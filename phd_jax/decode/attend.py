"""Attention of new tokens' copies over a cache: the PHD rules on (position, copy) pairs.

Keys come from three places (cached originals, the hidden window, the new tokens' own
copies), so the rule of `masks.visible`, which also builds the training mask, is evaluated
from each key's token position and copy index. PLT's rows are loops, and each of its two
softmaxes (`masks.plt_visible`) is this over its own parts.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from phd_jax.attention.band import MASKED
from phd_jax.decode.cache import Cache, LayerCache
from phd_jax.masks import PHDSpec, visible


def cached_masks(spec: PHDSpec, cache: Cache, start, limit: int, positions_BN, real_BN,
                 copy_C, rule=None):
  """Masks `[B, N*C, M]` of the new queries over each key part: cache[:limit], the window
  (if any), the new rows.

  copy_C: the copy (PLT: loop) index of each of the C rows a new token runs. rule:
  `rule(q_pos, q_copy, k_pos, k_copy)`, by default the spec's `visible`. Cache slots count
  only below `start` (the new tokens' first slot) and from each row's first slot on; they
  hold copy 0. Padding (`real_BN` False) sees only padding, and real tokens only real
  ones, as segment ids do in training.
  """
  rule = rule or functools.partial(visible, spec)
  N, C = positions_BN.shape[1], copy_C.shape[0]
  copy_Q = jnp.tile(copy_C, N)
  q_pos = jnp.repeat(positions_BN, C, axis=1)
  q_real = jnp.repeat(real_BN, C, axis=1)

  def mask(k_pos, k_copy, k_real, k_filled):
    allowed = rule(q_pos[:, :, None], copy_Q[None, :, None], k_pos[:, None, :],
                   k_copy[:, None, :])
    return allowed & k_filled[:, None, :] & (k_real[:, None, :] == q_real[:, :, None])

  slot_S = jnp.arange(limit)
  cache_pos = slot_S[None] - cache.first_slot[:, None]
  masks = [mask(jnp.maximum(cache_pos, 0), jnp.zeros_like(cache_pos), cache_pos >= 0,
                (slot_S < start)[None])]
  if cache.window is not None:
    w_pos = cache.window.positions
    masks.append(mask(w_pos, cache.window.copies, w_pos >= 0, w_pos >= 0))
  masks.append(mask(q_pos, copy_Q[None], q_real, jnp.ones_like(q_real)))
  return masks


def key_parts(layer: LayerCache, limit: int, k_BNCGDh, v_BNCGDh) -> list:
  """(keys, values) `[B, M, G, Dh]` of one layer's parts, in `cached_masks`' order."""
  B, N, C, G, Dh = k_BNCGDh.shape
  parts = [(layer.keys[:, :limit], layer.values[:, :limit])]
  if layer.window_keys is not None:
    parts.append((layer.window_keys, layer.window_values))
  parts.append((k_BNCGDh.reshape(B, N * C, G, Dh), v_BNCGDh.reshape(B, N * C, G, Dh)))
  return parts


def cached_attention(layer: LayerCache, limit: int, masks_BQM, q_BNCHDh, k_BNCGDh,
                     v_BNCGDh):
  """Grouped-query attention of the new copies over [cache[:limit] | window | new] of one
  layer, in one softmax."""
  return attend_parts(q_BNCHDh, key_parts(layer, limit, k_BNCGDh, v_BNCGDh), masks_BQM,
                      v_BNCGDh.dtype)


def attend_parts(q_BNCHDh, parts, masks_BQM, dtype):
  """Grouped-query attention of the new rows over key parts [(keys, values)] under their
  masks `[B, N*C, M]`, in `dtype`. A part's keys are `[B, M, G, Dh]`, read by every row, or
  `[B, M, C, G, Dh]`, row c reading only its own M keys `[:, :, c]` (PLT: a loop's window).

  One softmax over all keys, computed per key part (a joint max and sum) so that the
  cache is read in place rather than copied into a concatenation every step.
  """
  B, N, C, H, Dh = q_BNCHDh.shape
  G = parts[0][0].shape[-2]
  q_BNCGRDh = q_BNCHDh.reshape(B, N, C, G, H // G, Dh)

  kv_axes = lambda x: "bscgd" if x.ndim == 5 else "bsgd"  # per row, or shared

  def scores(k):
    s = jnp.einsum(f"bncgrd,{kv_axes(k)}->bgrncs", q_BNCGRDh, k.astype(q_BNCGRDh.dtype),
                   preferred_element_type=jnp.float32)
    return s.reshape(B, G, H // G, N * C, -1) * Dh**-0.5

  def weighted(p_BGRQM, v):
    p = p_BGRQM.reshape(B, G, H // G, N, C, -1).astype(dtype)
    return jnp.einsum(f"bgrncs,{kv_axes(v)}->bncgrd", p, v.astype(dtype))

  masked = [jnp.where(mask[:, None, None], scores(k), MASKED)
            for (k, _), mask in zip(parts, masks_BQM)]
  top = functools.reduce(jnp.maximum, [s.max(-1) for s in masked])
  exps = [jnp.exp(s - top[..., None]) for s in masked]
  inv_total = 1.0 / sum(e.sum(-1) for e in exps)[..., None]
  out = sum(weighted(e * inv_total, v) for e, (_, v) in zip(exps, parts))
  return out.reshape(B, N, C, H, Dh)
