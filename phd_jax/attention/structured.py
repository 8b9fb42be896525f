"""Exact PHD attention in plain JAX at about K times the cost of vanilla causal attention.

Keys come in two kinds. The T originals are seen by all K*T queries, causally by token: one
causal attention with the K copies folded into the query heads. The hidden copies are
seen only by hidden queries, and only within the small `HiddenBand` (own token, window,
chunk). Both sets of scores share ONE softmax (a joint log-sum-exp), so the result is the
reference's up to rounding; no (K*T)^2 mask is ever built.

Long sequences run in query blocks, each recomputed in the backward pass, so memory holds
one block's K*block*T scores; blocks get smaller as K grows (`default_block_size`), which
on a CPU keeps the scores in cache. A block scores only the originals up
to the end of its GROUP: the blocks are cut into at most MAX_GROUPS contiguous groups, and
the blocks of a group, all of one shape, run as one `lax.map`. So the program holds at
most MAX_GROUPS block bodies whatever T, and the scores cover (G+1)/(2G) of the T x T
square for G equal groups: 56% for G = 8, where the exact causal triangle is 50%.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from phd_jax.attention.band import MASKED, HiddenBand
from phd_jax.masks import PHDSpec

# Measured on a CPU (`bench/attention.py`, T = 2048): Vanilla ran fastest with blocks of 128
# tokens (256: +15%), PHD-K with 64 (K = 3 at 256: 1.4*K instead of 1.0*K); 32 was slower.
BLOCK_ROWS = 128  # query rows (tokens x copies) per block, at most
MIN_BLOCK = 64  # query tokens per block, at least
MAX_GROUPS = 8  # key lengths (hence block bodies in the program) per attention call


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


def _query_block(spec: PHDSpec, length: int, key_len: int, q_BTKGRDh, k_BTKGDh, v_BTKGDh,
                 segment_ids_BT, positions_BT, start):
  """Outputs `[B, length, K, G, R, Dh]` of the queries of tokens [start, start+length),
  which see at most the originals [0, key_len). `start` may be traced; q, the originals and
  segment ids are padded to whole blocks (the padding is causally out of every real
  query's reach), the hidden keys are not."""
  T, Dh = k_BTKGDh.shape[1], q_BTKGRDh.shape[-1]
  q = jax.lax.dynamic_slice_in_dim(q_BTKGRDh, start, length, axis=1)
  k0, v0 = _pad_tokens(k_BTKGDh[:, :, 0], key_len), _pad_tokens(v_BTKGDh[:, :, 0], key_len)
  s_orig = jnp.einsum("bqkgrd,bsgd->bgqkrs", q, k0,
                      preferred_element_type=jnp.float32) * Dh**-0.5
  q_tok = start + jnp.arange(length)
  mask = (jnp.arange(key_len)[None, :] <= q_tok[:, None])[None]  # causal by token
  if segment_ids_BT is not None:
    padded = _pad_tokens(segment_ids_BT, max(key_len, T + length))
    q_seg = jax.lax.dynamic_slice_in_dim(padded, start, length, axis=1)
    mask = mask & (q_seg[:, :, None] == padded[:, None, :key_len])
  s_orig = jnp.where(mask[:, None, :, None, None, :], s_orig, MASKED)
  if spec.k == 1:
    # through the log-sum-exp, as joint_softmax
    p_orig = jnp.exp(s_orig - jax.nn.logsumexp(s_orig, axis=-1, keepdims=True))
    return jnp.einsum("bgqkrs,bsgd->bqkgrd", p_orig.astype(v0.dtype), v0)
  band = HiddenBand(spec, T, segment_ids_BT, positions_BT)
  s_hidden = band.scores(q[:, :, 1:], k_BTKGDh[:, :, 1:], start)
  p_orig, p_hidden = joint_softmax(s_orig, _pad_copy_axis(s_hidden, 3, MASKED))
  out = jnp.einsum("bgqkrs,bsgd->bqkgrd", p_orig.astype(v0.dtype), v0)
  out_hidden = band.outputs(p_hidden[:, :, :, 1:], v_BTKGDh[:, :, 1:], start)
  return out + _pad_copy_axis(out_hidden, 2)


def _pad_tokens(x, length: int):
  """`x` [B, T, ...] zero-padded (or cut) to `length` tokens."""
  pad = [(0, 0)] * x.ndim
  pad[1] = (0, max(length - x.shape[1], 0))
  return jnp.pad(x, pad)[:, :length]


def default_block_size(k: int) -> int:
  """Query tokens per block: the largest power of two with at most BLOCK_ROWS rows
  (tokens x copies), and at least MIN_BLOCK tokens."""
  return max(1 << max(BLOCK_ROWS // k, 1).bit_length() - 1, MIN_BLOCK)


def query_groups(num_blocks: int) -> list[tuple[int, int]]:
  """Contiguous [first, last) ranges of blocks, at most MAX_GROUPS, later ones no longer
  (their blocks score more keys)."""
  groups = np.array_split(np.arange(num_blocks), min(num_blocks, MAX_GROUPS))
  return [(int(g[0]), int(g[-1]) + 1) for g in groups]


def structured_attention(q_BTKHDh, k_BTKGDh, v_BTKGDh, spec: PHDSpec, segment_ids_BT=None,
                         positions_BT=None, *, block_size: int | None = None):
  """PHD attention, `[B, T, K, H, Dh]`; exact on any backend, differentiable."""
  B, T, K, H, Dh = q_BTKHDh.shape
  G = k_BTKGDh.shape[3]
  block_size = min(block_size or default_block_size(K), T)
  num_blocks = -(-T // block_size)
  q = _pad_tokens(q_BTKHDh.reshape(B, T, K, G, H // G, Dh), num_blocks * block_size)
  args = (q, k_BTKGDh, v_BTKGDh, segment_ids_BT, positions_BT)
  if num_blocks == 1:
    out = _query_block(spec, T, T, *args, 0)
    return out.reshape(B, T, K, H, Dh)
  outs = []  # [blocks of the group, B, block_size, K, G, R, Dh] per group
  for first, last in query_groups(num_blocks):
    # recompute each block's scores in the backward pass
    block = jax.checkpoint(functools.partial(_query_block, spec, block_size,
                                             last * block_size))
    starts = jnp.arange(first, last) * block_size
    outs.append(jax.lax.map(lambda start, block=block: block(*args, start), starts))
  out = jnp.moveaxis(jnp.concatenate(outs), 0, 1)
  return out.reshape(B, -1, K, H, Dh)[:, :T]
