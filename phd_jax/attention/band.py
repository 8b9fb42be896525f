"""The hidden band: the hidden keys a hidden query may see, in blocks along the sequence.

Besides the originals (causal by token, handled elsewhere), a hidden query (copy a >= 1
of token p) sees only hidden keys of its own token (R2: copies 1..a) and, with a window,
hidden copies of tokens at most `lookback` before it (SWA, CSWA). So the hidden stream is
cut into blocks of `size >= lookback` tokens, and each block of queries scores only the
hidden keys of its own and the previous block: (K-1)*T*2*size*(K-1) scores instead of
(K*T)^2, whatever the sequence length.

Layouts: hidden queries `[B, Q, A, G, R, Dh]` (A = K-1 hidden copies, R = query heads per
key/value head), hidden keys/values `[B, T, A, G, Dh]`; scores `[B, G, Q, A, R, J]` with
J = span * A candidate keys per query block. The queries are the Q tokens from `start`,
which may be traced (a scan over query blocks): every shape depends only on Q.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from phd_jax.masks import PHDSpec, visible

MASKED = -1e30  # the reference's value, so masked scores agree bit for bit


def lookback(spec: PHDSpec) -> int:
  """How many tokens back a hidden query may find a visible hidden key (0: own token)."""
  if spec.window == 0:
    return 0
  if spec.window_unit == "tokens":  # W hidden tokens span ceil(W / (K-1)) earlier tokens
    return -(-spec.window // (spec.k - 1))
  return spec.window


class HiddenBand:
  """Scores and outputs of hidden queries against the hidden keys their rules allow.

  Built once per call from the spec and the token metadata; `scores` and `outputs` work
  on the queries of any Q tokens [start, start+Q) of the sequence.
  """

  def __init__(self, spec: PHDSpec, num_tokens: int, segment_ids_BT=None,
               positions_BT=None):
    self.spec, self.num_tokens = spec, num_tokens
    reach = lookback(spec)
    self.size = max(reach, 1)
    self.halo = self.size if reach else 0  # keys of the previous block, when a window exists
    self.span = self.size + self.halo
    self.segment_ids = segment_ids_BT
    if spec.chunk is not None and positions_BT is None:
      positions_BT = jnp.arange(num_tokens)[None]
    self.chunk_positions = None if spec.chunk is None else positions_BT

  def _num_blocks(self, length: int) -> int:
    return -(-length // self.size)

  def _key_blocks(self, x, start, length: int):
    """Per query block, the token-axis slice of `x` [B, T, ...] its keys come from:
    `[B, nb, span, ...]`, zero-padded outside the sequence."""
    nb = self._num_blocks(length)
    pad = [(0, 0)] * x.ndim
    pad[1] = (self.halo, nb * self.size)  # token t sits at t + halo; start < T
    piece = jax.lax.dynamic_slice_in_dim(jnp.pad(x, pad), start, nb * self.size + self.halo,
                                         axis=1)  # tokens [start - halo, start + nb*size)
    blocks = piece.reshape(x.shape[0], -1, self.size, *x.shape[2:])
    if self.halo:  # block n's keys: tokens of blocks n-1 and n
      blocks = jnp.concatenate([blocks[:, :-1], blocks[:, 1:]], axis=2)
    return blocks

  def _query_blocks(self, x_BQ_):
    """Per-query values `[B, Q, ...]` padded and cut into `[B, nb, size, ...]`."""
    nb = self._num_blocks(x_BQ_.shape[1])
    pad = [(0, 0)] * x_BQ_.ndim
    pad[1] = (0, nb * self.size - x_BQ_.shape[1])
    return jnp.pad(x_BQ_, pad).reshape(x_BQ_.shape[0], nb, self.size, *x_BQ_.shape[2:])

  def _queries_of(self, x_BT, start, length: int):
    """Tokens [start, start+length) of per-token values `[B, T]`, in query blocks."""
    padded = jnp.pad(x_BT, ((0, 0), (0, length)))
    return self._query_blocks(jax.lax.dynamic_slice_in_dim(padded, start, length, axis=1))

  def _mask(self, start, length: int):
    """Allowed (query, key) pairs, `[B|1, nb, size, A, span * A]`."""
    spec, kh = self.spec, self.spec.k - 1
    nb = self._num_blocks(length)
    block = jnp.arange(nb).reshape(1, nb, 1, 1, 1, 1) * self.size
    q_tok = start + block + jnp.arange(self.size).reshape(1, 1, -1, 1, 1, 1)
    k_tok = start - self.halo + block + jnp.arange(self.span).reshape(1, 1, 1, 1, -1, 1)
    q_copy = jnp.arange(1, kh + 1).reshape(1, 1, 1, -1, 1, 1)
    k_copy = jnp.arange(1, kh + 1).reshape(1, 1, 1, 1, 1, -1)
    q_chunk_pos = k_chunk_pos = None
    if self.chunk_positions is not None:
      q_chunk_pos = self._queries_of(self.chunk_positions, start, length)
      k_chunk_pos = self._key_blocks(self.chunk_positions, start, length)
      q_chunk_pos = q_chunk_pos[..., :, None, None, None]
      k_chunk_pos = k_chunk_pos[..., None, None, :, None]
    allowed = visible(spec, q_tok, q_copy, k_tok, k_copy, q_chunk_pos, k_chunk_pos)
    allowed = allowed & (k_tok >= 0) & (k_tok < self.num_tokens)
    if self.segment_ids is not None:
      q_seg = self._queries_of(self.segment_ids, start, length)
      k_seg = self._key_blocks(self.segment_ids, start, length)
      allowed = allowed & (q_seg[..., :, None, None, None] == k_seg[..., None, None, :, None])
    return allowed.reshape(*allowed.shape[:-2], -1)

  def scores(self, q_BQAGRDh, k_BTAGDh, start):
    """Masked float32 scores `[B, G, Q, A, R, J]` of the hidden queries of tokens
    [start, start+Q) against their candidate hidden keys."""
    B, Q, kh, G, R, Dh = q_BQAGRDh.shape
    q = self._query_blocks(q_BQAGRDh)
    k = self._key_blocks(k_BTAGDh, start, Q)
    k = k.reshape(B, k.shape[1], -1, G, Dh)  # [B, nb, J, G, Dh]
    s = jnp.einsum("bnsagrd,bnjgd->bgnsarj", q, k,
                   preferred_element_type=jnp.float32) * Dh**-0.5
    mask = self._mask(start, Q)[:, None, :, :, :, None, :]
    s = jnp.where(mask, s, MASKED)
    return s.reshape(B, G, -1, kh, R, s.shape[-1])[:, :, :Q]

  def outputs(self, probs_BGQARJ, v_BTAGDh, start):
    """Probability-weighted hidden values, `[B, Q, A, G, R, Dh]`."""
    B, G, Q, kh, R, J = probs_BGQARJ.shape
    p = self._query_blocks(jnp.swapaxes(probs_BGQARJ, 1, 2))  # [B, nb, size, G, ...]
    v = self._key_blocks(v_BTAGDh, start, Q)
    v = v.reshape(B, v.shape[1], J, G, v.shape[-1])
    out = jnp.einsum("bnsgarj,bnjgd->bnsagrd", p.astype(v.dtype), v)
    return out.reshape(B, -1, kh, G, R, out.shape[-1])[:, :Q]
