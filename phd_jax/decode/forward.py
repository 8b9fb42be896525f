"""One forward of new tokens through the model's blocks over a cache: the step that prefill
and decoding are made of (phd_jax/decode/engine.py; PLT's: phd_jax/decode/loops.py)."""

from __future__ import annotations

import jax.numpy as jnp

from phd_jax import attention as attention_lib
from phd_jax.attention.loops import VANILLA
from phd_jax.decode.attend import cached_attention, cached_masks
from phd_jax.decode.cache import Cache, write
from phd_jax.masks import PHDSpec


def new_positions(cache: Cache, start, num_tokens: int):
  """Token positions `[B, N]` of N tokens in slots [start, start+N) (0 on left padding),
  and whether each is a real token rather than padding."""
  positions_BN = start + jnp.arange(num_tokens)[None, :] - cache.first_slot[:, None]
  return jnp.maximum(positions_BN, 0), positions_BN >= 0


def forward(model, cache: Cache, tokens_BN, start, copies: int):
  """Last-block states `[B, N, C, D]` of the first `copies` copies, and the updated cache.

  `start` is a Python int in prefill (keys: `cache[:start]`, or the training attention
  when the cache is still empty) and a traced scalar in decoding (the whole cache, masked).
  Every layer's attention returns its new K/V, which the layer scan stacks for `write`.
  A PLT model runs its loop 0 here (copies=1; its gates unused).
  """
  spec = model.spec
  positions_BN, real_BN = new_positions(cache, start, tokens_BN.shape[1])
  if isinstance(start, int) and start == 0:  # nothing cached: the training attention
    whole = isinstance(spec, PHDSpec) and copies == spec.k
    sub_spec = spec if whole else VANILLA  # originals (or loop 0) alone: vanilla
    segment_ids_BN = real_BN.astype(jnp.int32)  # padding is segment 0, as in training
    layer_inputs = None

    def attend(_, q, k, v, gate=None):
      del gate
      return attention_lib.attention(model.cfg.attention_impl, q, k, v, sub_spec,
                                     segment_ids_BN, positions_BN), (k, v)
  else:
    limit = start if isinstance(start, int) else cache.cache_len
    masks = cached_masks(spec, cache, start, limit, positions_BN, real_BN,
                         jnp.arange(copies))
    layer_inputs = cache.per_layer()

    def attend(layer, q, k, v, gate=None):
      del gate
      return cached_attention(layer, limit, masks, q, k, v), (k, v)
  x_BNCD, (k_LBNCGDh, v_LBNCGDh) = model.hidden_states_with(attend, tokens_BN, positions_BN,
                                                            copies, layer_inputs)
  return x_BNCD, write(cache, start, k_LBNCGDh, v_LBNCGDh, positions_BN, real_BN)
