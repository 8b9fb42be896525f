"""PLT attention of the later loops: a global softmax over loop 0's keys and a local one over
the loop's own window, mixed per head by a learned gate (rules: phd_jax/masks.py, PLT).

For the query of token t in loop l >= 1, with W = spec.window:
  o = g * softmax-attention(q; loop 0's keys at t' <= t)
      + (1 - g) * softmax-attention(q; loop l's keys at t - W < t' <= t)
  g = sigmoid(q . w_h + b_h) on the post-RoPE query of head h (gate "query"), or
      sigmoid(RMSNorm(x) . w_h + b_h) on the block's input x (gate "hidden"),
one gate per layer and head, shared by the later loops. Without a window (PLT-L) there is
no gate and o is the global part alone.

`dense_loop_attention` is the reference: two softmaxes under `plt_mask`'s explicit masks.
`loop_attention` runs every other `attention_impl`: the global part IS causal attention of
the loop's queries over loop 0's keys and values, so it runs on the implementation the
originals use (structured, splash, cuDNN, and their backward passes); the local part is
`HiddenBand` of a PHD-SWA-2-(W-1) spec, whose hidden copy 1 of token t sees copy 1 of t
(R2) and of the W-1 tokens before it: exactly the window, in O(T*W), in plain JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from phd_jax import attention as attention_lib
from phd_jax.attention.band import HiddenBand
from phd_jax.attention.dense import masked_attention
from phd_jax.layers import RMSNorm, param
from phd_jax.masks import PHDSpec, PLTSpec, plt_mask

VANILLA = PHDSpec()  # loop 0, and the global part: causal attention by token


class LoopGate(nnx.Module):
  """The per-head gate of a PLT layer's later loops: the global part's share, in [0, 1].

  Weights start as the projections do (normal, init_std), the bias at 0: a gate near 1/2.
  """

  def __init__(self, cfg, spec: PLTSpec, *, rngs: nnx.Rngs):
    H = cfg.num_heads
    self.reads = spec.gate
    if spec.gate == "query":
      self.weight = param(rngs, (H, cfg.head_dim), ("q_heads", "head_dim"), cfg.init_std)
    else:
      self.norm = RMSNorm((cfg.d_model,), ("norm",), cfg.norm_eps, rngs=rngs)
      self.weight = param(rngs, (cfg.d_model, H), ("embed", "q_heads"), cfg.init_std)
    self.bias = nnx.Param(jnp.zeros((H,), jnp.float32), out_sharding=("q_heads",),
                          eager_sharding=False)

  def __call__(self, q_BTKHDh, x_BTKD):
    """Gates `[B, T, K, H]` (float32) of the queries `q` of the block input `x`."""
    if self.reads == "query":
      logits = jnp.einsum("btkhe,he->btkh", q_BTKHDh, self.weight[...].astype(q_BTKHDh.dtype),
                          preferred_element_type=jnp.float32)
    else:
      x = self.norm(x_BTKD)
      logits = jnp.einsum("btkd,dh->btkh", x, self.weight[...].astype(x.dtype),
                          preferred_element_type=jnp.float32)
    return jax.nn.sigmoid(logits + jax.lax.broadcast_to_rank(self.bias[...], logits.ndim))


def gated_mix(o_global_BTKHDh, o_local_BTKHDh, gate_BTKH):
  """g * global + (1 - g) * local, per head, in the global part's dtype."""
  g = gate_BTKH[..., None]
  return (g * o_global_BTKHDh + (1.0 - g) * o_local_BTKHDh).astype(o_global_BTKHDh.dtype)


def dense_loop_attention(q_BT1HDh, k_BT1GDh, v_BT1GDh, k0_BT1GDh, v0_BT1GDh, gate_BT1H,
                         spec: PLTSpec, segment_ids_BT=None):
  """The reference for the queries of one later loop, `[B, T, 1, H, Dh]`: the rows of
  loop 1 in `plt_mask` (every later loop's), two explicit softmaxes, the gate."""
  T = q_BT1HDh.shape[1]
  global_mask, local_mask = plt_mask(spec, T, segment_ids_BT)
  rows = slice(T, 2 * T)  # loop 1's queries; loop 0's keys are columns [0, T)
  o = masked_attention(q_BT1HDh[:, :, 0], k0_BT1GDh[:, :, 0], v0_BT1GDh[:, :, 0],
                       global_mask[..., rows, :T])[:, :, None]
  if not spec.gated:
    return o
  o_local = masked_attention(q_BT1HDh[:, :, 0], k_BT1GDh[:, :, 0], v_BT1GDh[:, :, 0],
                             local_mask[..., rows, rows])[:, :, None]
  return gated_mix(o, o_local, gate_BT1H)


def local_attention(q_BT1HDh, k_BT1GDh, v_BT1GDh, window: int, segment_ids_BT=None):
  """The local part, `[B, T, 1, H, Dh]`: each query over its own loop's keys of the last
  `window` tokens (its own included), in one softmax over the band."""
  B, T, _, H, Dh = q_BT1HDh.shape
  G = k_BT1GDh.shape[3]
  band = HiddenBand(PHDSpec(k=2, window=window - 1), T, segment_ids_BT)
  s = band.scores(q_BT1HDh.reshape(B, T, 1, G, H // G, Dh), k_BT1GDh, 0)
  p = jnp.exp(s - jax.nn.logsumexp(s, axis=-1, keepdims=True))
  return band.outputs(p, v_BT1GDh, 0).reshape(B, T, 1, H, Dh)


def loop_attention(impl: str, q_BT1HDh, k_BT1GDh, v_BT1GDh, k0_BT1GDh, v0_BT1GDh, gate_BT1H,
                   spec: PLTSpec, segment_ids_BT=None, positions_BT=None):
  """Attention of one later loop's queries `[B, T, 1, H, Dh]` over loop 0's keys and
  values (k0, v0) and their own loop's (k, v): `impl` "dense" runs the reference, any
  other the global part on that implementation and the local part on the band."""
  if attention_lib.resolve(impl) == "dense":
    return dense_loop_attention(q_BT1HDh, k_BT1GDh, v_BT1GDh, k0_BT1GDh, v0_BT1GDh,
                                gate_BT1H, spec, segment_ids_BT)
  o = attention_lib.attention(impl, q_BT1HDh, k0_BT1GDh, v0_BT1GDh, VANILLA, segment_ids_BT,
                              positions_BT)
  if not spec.gated:
    return o
  o_local = local_attention(q_BT1HDh, k_BT1GDh, v_BT1GDh, spec.window, segment_ids_BT)
  return gated_mix(o, o_local, gate_BT1H)
