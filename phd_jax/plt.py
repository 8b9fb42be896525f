"""The Parallel Loop Transformer (PLT) on this project's decoder: PHD's sibling that spends
its extra compute in depth (the same blocks run `loops` times) rather than in width.

Sources: the paper (Wu et al., "Parallel Loop Transformer for Efficient Test-Time
Computation Scaling", arXiv 2510.24824) and the released model configuration
(`IQuestPLTCoderConfig`: plt_num_loops, plt_window_size, plt_normalize_per_loop,
plt_emb_scale, plt_hidden_scale, plt_gate_use_hidden_states) with the inference code
published for it. `PLTSpec` fields map onto those: loops, window, norm_per_loop, emb_scale
(a), hidden_scale (b), gate ("hidden" for plt_gate_use_hidden_states).

The forward, for token ids `[B, T]` (activations `[B, T, 1, D]`: one row per token, the
copy axis of `phd_jax.model` of size 1):
  loop 0     the vanilla stack on the embeddings E; each layer keeps its keys and values
             (the only KV cache a decoder stores; stacked `[L, B, T, 1, G, Dh]` and fed
             to the later loops' layers through the scan's layer inputs).
  loop l>=1  input a*E(t) + b*H_{l-1}(t-1), H_{l-1} loop l-1's output after the shared
             final norm (`norm_per_loop`, the release's default) or before it. Then the
             same blocks, whose attention mixes a global part (loop 0's keys at t' <= t)
             and a local one (loop l's own keys at t - W < t' <= t) by a learned gate per
             layer and head (phd_jax/attention/loops.py; the rules: phd_jax/masks.py).
  output     final norm and output layer on the last loop only; the loss is on it alone.
Every loop runs at the token's own RoPE position. Parameters: a vanilla model's plus one
gate per layer when W > 0; `PLT-1` is exactly Vanilla.

Where this follows the release: a = b = 1 and "query" gates by default (its config's
defaults); the gate sigmoid(q_h . w_h + b_h) on the post-RoPE query, or
sigmoid(RMSNorm(x) W + b) from the block's (pre-norm) input, mixing o = g * global +
(1 - g) * local; a later loop's global part sees loop 0's key of its own token (the
release's cache holds it when the later loops read it).
Where it chooses: W counts the query's own token. The release's window `[64, 0]` is a
(left, right) pair that reads either way: as FlashAttention's window_size, 64 earlier
tokens and the query's own (here PLT-L-65); as the sliding window of the serving code's
cache, 64 tokens with the query's own (here PLT-L-64). The release's configuration says
`a * E + b * shift(H)` and the paper's cross-loop parallelism needs the shift (loop l of
token t runs beside loop l+1 of token t-1, so one decoding pass serves every loop), while
the published serving code runs the loops one after another; here the shift is always
on. A token with no predecessor in its document (its first token, or a packed
document's) gets a*E(t) + 0, as the release's zero-filled shift gives the sequence's first
token; documents never see each other. The blocks keep this project's norm placement
(`model.norm_style`; the release is pre-norm) and QK-norm; the looped blocks are scanned
over layers, one scan per loop. `PLT-L` (no window) is the paper's KV sharing without the
gated window: later loops attend to loop 0's keys alone.

Decoding (phd_jax/decode/loops.py) keeps loop 0's KV cache, each later loop's last W-1
K/V and the last token's loop outputs, and runs every loop of a new token in one forward.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from phd_jax import attention as attention_lib
from phd_jax.attention.loops import VANILLA, loop_attention
from phd_jax.layers import constrain
from phd_jax.masks import PLTSpec
from phd_jax.model import ACTIVATION_BTKD, Transformer


def shift_to_next_token(h_BTKD, segment_ids_BT=None):
  """`h` moved one token on: token t gets h(t-1), and a token with no predecessor in its
  document (t = 0, or where the segment id changes) gets zeros."""
  shifted = jnp.pad(h_BTKD, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]
  if segment_ids_BT is None:
    return shifted
  continues_BT = jnp.pad(segment_ids_BT[:, 1:] == segment_ids_BT[:, :-1], ((0, 0), (1, 0)))
  return jnp.where(continues_BT[:, :, None, None], shifted, 0.0).astype(h_BTKD.dtype)


class PLTTransformer(Transformer):
  """`model(tokens_BT, segment_ids_BT=None, positions_BT=None) -> logits_BTV` of a PLT
  variant: the Transformer's parameters and blocks, run in loops (module docstring)."""

  SPEC_TYPE = PLTSpec

  def _rope_positions(self, positions_BT, copies: int):
    del copies  # one row per token, at its own position, in every loop
    return positions_BT[..., None]

  def loop_output(self, x_BTKD):
    """H: what the next loop reads of a loop's last-block output."""
    return self.final_norm(x_BTKD) if self.spec.norm_per_loop else x_BTKD

  def loop_input(self, e_BTKD, h_previous_BTKD):
    """A later loop's input a*E(t) + b*H(t-1), given each token's previous H."""
    x_BTKD = self.spec.emb_scale * e_BTKD + self.spec.hidden_scale * h_previous_BTKD
    return constrain(x_BTKD, ACTIVATION_BTKD)

  def next_loop_input(self, e_BTKD, x_BTKD, segment_ids_BT=None):
    """A later loop's input from the embeddings and the previous loop's output."""
    return self.loop_input(e_BTKD, shift_to_next_token(self.loop_output(x_BTKD),
                                                       segment_ids_BT))

  def hidden_states(self, tokens_BT, segment_ids_BT=None, positions_BT=None):
    """Output of the last block in the last loop, `[B, T, 1, D]` (before the final norm)."""
    spec, impl = self.spec, self.cfg.attention_impl
    e_BTKD, rope_positions_BTK, positions_BT = self._embed(tokens_BT, positions_BT, 1)
    blocks = functools.partial(self._layers, rope_positions_BTK=rope_positions_BTK,
                               segment_ids_BT=segment_ids_BT, positions_BT=positions_BT)

    def first_loop(_, q, k, v, gate=None):  # vanilla attention; its K/V go to the later loops
      del gate
      return attention_lib.attention(impl, q, k, v, VANILLA, segment_ids_BT,
                                     positions_BT), (k, v)

    def later_loop(kv0, q, k, v, gate=None):
      return loop_attention(impl, q, k, v, *kv0, gate, spec, segment_ids_BT,
                            positions_BT), None

    x_BTKD, kv0_L = blocks(e_BTKD, attend=first_loop)
    for _ in range(1, spec.loops):
      x_BTKD = self.next_loop_input(e_BTKD, x_BTKD, segment_ids_BT)
      x_BTKD, _ = blocks(x_BTKD, attend=later_loop, layer_inputs=kv0_L)
    return x_BTKD

  def loop_states_with(self, attend, x_BNCD, positions_BN, layer_inputs=None):
    """Inference (`phd_jax.decode.loops`): the blocks on C rows per token, given as their
    inputs `x` (e.g. every loop of a new token), at the tokens' positions, with
    `attend(layer_input, q, k, v[, gate])` in place of every layer's attention.
    Returns (`[B, N, C, D]`, aux `[L, ...]`)."""
    rope_positions_BNC = jnp.broadcast_to(positions_BN[..., None], x_BNCD.shape[:3])
    return self._layers(constrain(x_BNCD, ACTIVATION_BTKD), rope_positions_BNC, None,
                        positions_BN, attend, layer_inputs, inference=True)


def model_class(spec) -> type[Transformer]:
  """The decoder class of a variant's settings: PLTTransformer for a PLT spec, else
  Transformer (PHD and Vanilla)."""
  return PLTTransformer if isinstance(spec, PLTSpec) else Transformer
