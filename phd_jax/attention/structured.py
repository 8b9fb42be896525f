"""Exact PHD attention in plain JAX at about K times the cost of vanilla causal attention.

Keys come in two kinds. The T originals are seen by all K*T queries, causally by token: one
causal attention with the K copies folded into the query heads. The hidden copies are
seen only by hidden queries, and only within the small `HiddenBand` (own token, window,
chunk). Both sets of scores share ONE softmax (a joint log-sum-exp), so the result is the
reference's up to rounding; no (K*T)^2 mask is ever built.

Long sequences run in query blocks (`block_size` tokens, at most MAX_BLOCKS of them): block
i scores only the originals up to its own last token (the causal triangle, not the square)
and is recomputed in the backward pass, so memory holds one block's K*block*T scores.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from phd_jax.attention.band import MASKED, HiddenBand
from phd_jax.masks import PHDSpec

BLOCK_SIZE = 256  # query tokens per block: small blocks skip more of the square
MAX_BLOCKS = 32  # blocks are unrolled; beyond this, longer blocks keep compiles short


def joint_softmax(a, b):
  """softmax(concatenate([a, b], -1)) returned as its two parts, without the concatenation.

  Written through the joint log-sum-exp and left to autodiff: on XLA:CPU this backward runs
  an order of magnitude faster than `jax.nn.softmax`'s custom rule.
  """
  lse = jnp.logaddexp(jax.nn.logsumexp(a, axis=-1, keepdims=True),
                      jax.nn.logsumexp(b, axis=-1, keepdims=True))
  return jnp.exp(a - lse), jnp.exp(b - lse)


def _pad_copy_axis(x, axis: int, value=0.0):
  """Prepend copy 0 (the original, which has no hidden keys) along `axis`."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (1, 0)
  return jnp.pad(x, pad, constant_values=value)


def _query_block(spec: PHDSpec, start: int, stop: int, q_BTKGRD, k_BTKGD, v_BTKGD,
                 segment_ids_BT, positions_BT):
  """Outputs `[B, stop-start, K, G, R, Dh]` of the queries of tokens [start, stop)."""
  T, Dh = q_BTKGRD.shape[1], q_BTKGRD.shape[-1]
  q = q_BTKGRD[:, start:stop]
  k0, v0 = k_BTKGD[:, :stop, 0], v_BTKGD[:, :stop, 0]  # originals up to the block's end
  s_orig = jnp.einsum("bqkgrd,bsgd->bgqkrs", q, k0,
                      preferred_element_type=jnp.float32) * Dh**-0.5
  mask = (jnp.arange(stop) <= jnp.arange(start, stop)[:, None])[None]  # causal by token
  if segment_ids_BT is not None:
    mask = mask & (segment_ids_BT[:, start:stop, None] == segment_ids_BT[:, None, :stop])
  s_orig = jnp.where(mask[:, None, :, None, None, :], s_orig, MASKED)
  if spec.k == 1:
    # through the log-sum-exp, as joint_softmax
    p_orig = jnp.exp(s_orig - jax.nn.logsumexp(s_orig, axis=-1, keepdims=True))
    return jnp.einsum("bgqkrs,bsgd->bqkgrd", p_orig.astype(v0.dtype), v0)
  band = HiddenBand(spec, T, segment_ids_BT, positions_BT)
  s_hidden = band.scores(q[:, :, 1:], k_BTKGD[:, :, 1:], start, stop)
  p_orig, p_hidden = joint_softmax(s_orig, _pad_copy_axis(s_hidden, 3, MASKED))
  out = jnp.einsum("bgqkrs,bsgd->bqkgrd", p_orig.astype(v0.dtype), v0)
  out_hidden = band.outputs(p_hidden[:, :, :, 1:], v_BTKGD[:, :, 1:], start, stop)
  return out + _pad_copy_axis(out_hidden, 2)


def structured_attention(q_BTKHD, k_BTKGD, v_BTKGD, spec: PHDSpec, segment_ids_BT=None,
                         positions_BT=None, *, block_size: int | None = None):
  """PHD attention, `[B, T, K, H, Dh]`; exact on any backend, differentiable."""
  B, T, K, H, Dh = q_BTKHD.shape
  G = k_BTKGD.shape[3]
  block_size = block_size or max(BLOCK_SIZE, -(-T // MAX_BLOCKS))
  q = q_BTKHD.reshape(B, T, K, G, H // G, Dh)
  starts = range(0, T, block_size)
  outs = []
  for start in starts:
    fn = functools.partial(_query_block, spec, start, min(start + block_size, T))
    if len(starts) > 1:  # recompute each block's scores in the backward pass
      fn = jax.checkpoint(fn)
    outs.append(fn(q, k_BTKGD, v_BTKGD, segment_ids_BT, positions_BT))
  return jnp.concatenate(outs, axis=1).reshape(B, T, K, H, Dh)
