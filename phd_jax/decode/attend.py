"""Attention of new tokens' copies over a cache: the PHD rules on (position, copy) pairs.

Keys come from three places (cached originals, the hidden window, the new tokens' own
copies), so the rule of `masks.visible`, which also builds the training mask, is evaluated
from each key's token position and copy index.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from phd_jax.attention.band import MASKED
from phd_jax.decode.cache import Cache, LayerCache
from phd_jax.masks import PHDSpec, visible


def cached_masks(spec: PHDSpec, cache: Cache, start, limit: int, positions_BN, real_BN,
                 copies: int):
  """Masks `[B, N*C, M]` of the new queries over each key part: cache[:limit], the window
  (if any), the new copies.

  Cache slots count only below `start` (the new tokens' first slot) and from each row's
  first slot on. Padding (`real_BN` False) sees only padding, and real tokens only real
  ones, as segment ids do in training.
  """
  N = positions_BN.shape[1]
  copy_Q = jnp.tile(jnp.arange(copies), N)
  q_pos = jnp.repeat(positions_BN, copies, axis=1)
  q_real = jnp.repeat(real_BN, copies, axis=1)

  def mask(k_pos, k_copy, k_real, k_filled):
    rule = visible(spec, q_pos[:, :, None], copy_Q[None, :, None], k_pos[:, None, :],
                   k_copy[:, None, :])
    return rule & k_filled[:, None, :] & (k_real[:, None, :] == q_real[:, :, None])

  slot_S = jnp.arange(limit)
  cache_pos = slot_S[None] - cache.first_slot[:, None]
  masks = [mask(jnp.maximum(cache_pos, 0), jnp.zeros_like(cache_pos), cache_pos >= 0,
                (slot_S < start)[None])]
  if cache.window is not None:
    w_pos = cache.window.positions
    masks.append(mask(w_pos, cache.window.copies, w_pos >= 0, w_pos >= 0))
  masks.append(mask(q_pos, copy_Q[None], q_real, jnp.ones_like(q_real)))
  return masks


def cached_attention(layer: LayerCache, limit: int, masks_BQM, q_BNCHDh, k_BNCGDh,
                     v_BNCGDh):
  """Grouped-query attention of the new copies over [cache[:limit] | window | new] of one
  layer.

  One softmax over all keys, computed per key part (a joint max and sum) so that the
  cache is read in place rather than copied into a concatenation every step.
  """
  B, N, C, H, Dh = q_BNCHDh.shape
  G = k_BNCGDh.shape[3]
  q_BQGRDh = q_BNCHDh.reshape(B, N * C, G, H // G, Dh)
  parts = [(layer.keys[:, :limit], layer.values[:, :limit])]
  if layer.window_keys is not None:
    parts.append((layer.window_keys, layer.window_values))
  parts.append((k_BNCGDh.reshape(B, N * C, G, Dh), v_BNCGDh.reshape(B, N * C, G, Dh)))
  scores = [jnp.where(mask[:, None, None], jnp.einsum(
      "bqgrd,bsgd->bgrqs", q_BQGRDh, k.astype(q_BQGRDh.dtype),
      preferred_element_type=jnp.float32) * Dh**-0.5, MASKED)
            for (k, _), mask in zip(parts, masks_BQM)]
  top = functools.reduce(jnp.maximum, [s.max(-1) for s in scores])
  exps = [jnp.exp(s - top[..., None]) for s in scores]
  inv_total = 1.0 / sum(e.sum(-1) for e in exps)[..., None]
  out = sum(jnp.einsum("bgrqs,bsgd->bqgrd", (e * inv_total).astype(v_BNCGDh.dtype),
                       v.astype(v_BNCGDh.dtype)) for e, (_, v) in zip(exps, parts))
  return out.reshape(B, N, C, H, Dh)
