"""The OLMo2-style decoder with Parallel Hidden Decoding.

Token ids `[B, T]` -> embeddings repeated K times on their own axis `[B, T, K, D]` (copy 0
the original, copies 1..K-1 the hidden decoding tokens: the same token through the same
weights, no new parameters) -> blocks whose attention follows the variant's PHD mask ->
final norm and output layer on the last copy only -> logits `[B, T, V]` in float32.

With K = 1 this is exactly a vanilla OLMo2 model: RMSNorm, QK-norm, SwiGLU, RoPE, GQA,
no biases, norms after each sublayer ("reordered", OLMo2) or before it ("pre", Llama).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from phd_jax import attention as attention_lib
from phd_jax.layers import DTYPES, Embed, RMSNorm, SwiGLU, constrain, param, rope
from phd_jax.masks import PHDSpec

NORM_STYLES = ("reordered", "pre")
ACTIVATION_BTKD = ("activation_batch", "activation_length", None, "activation_embed")
ACTIVATION_BTV = ("activation_batch", "activation_length", "activation_vocab")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int  # hidden size of each of the gate and up projections
  rope_theta: float = 500_000.0
  norm_eps: float = 1e-6
  norm_style: str = "reordered"
  qk_norm: bool = True
  tie_embeddings: bool = False
  init_std: float = 0.02
  dtype: str = "float32"  # compute dtype; parameters stay float32
  attention_impl: str = "auto"
  remat: str = "none"


def copy_positions(spec: PHDSpec, positions_BT):
  """RoPE position of every copy, `[B, T, K]`: shared pos(p), or expanded K*pos(p) + a."""
  copies = jnp.arange(spec.k)
  if spec.positions == "shared":
    return jnp.broadcast_to(positions_BT[..., None], (*positions_BT.shape, spec.k))
  return positions_BT[..., None] * spec.k + copies


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, spec: PHDSpec, *, rngs: nnx.Rngs):
    D, H, G, Dh = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.cfg, self.spec = cfg, spec
    self.wq = param(rngs, (D, H, Dh), ("embed", "q_heads", "head_dim"), cfg.init_std)
    self.wk = param(rngs, (D, G, Dh), ("embed", "kv_heads", "head_dim"), cfg.init_std)
    self.wv = param(rngs, (D, G, Dh), ("embed", "kv_heads", "head_dim"), cfg.init_std)
    self.wo = param(rngs, (H, Dh, D), ("q_heads", "head_dim", "embed"), cfg.init_std)
    if cfg.qk_norm:  # OLMo2 normalises the whole projected q and k, across heads
      self.q_norm = RMSNorm((H, Dh), ("q_heads", "head_dim"), cfg.norm_eps, rngs=rngs)
      self.k_norm = RMSNorm((G, Dh), ("kv_heads", "head_dim"), cfg.norm_eps, rngs=rngs)

  def qkv(self, x_BTKD, rope_positions_BTK):
    """Projected, normed and rotated q `[B,T,K,H,Dh]`, k and v `[B,T,K,G,Dh]`."""
    dtype = x_BTKD.dtype
    q = jnp.einsum("btkd,dhe->btkhe", x_BTKD, self.wq[...].astype(dtype))
    k = jnp.einsum("btkd,dge->btkge", x_BTKD, self.wk[...].astype(dtype))
    v = jnp.einsum("btkd,dge->btkge", x_BTKD, self.wv[...].astype(dtype))
    if self.cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q = rope(q, rope_positions_BTK, self.cfg.rope_theta)
    k = rope(k, rope_positions_BTK, self.cfg.rope_theta)
    return q, k, v

  def out(self, o_BTKHD):
    return jnp.einsum("btkhe,hed->btkd", o_BTKHD, self.wo[...].astype(o_BTKHD.dtype))

  def __call__(self, x_BTKD, rope_positions_BTK, segment_ids_BT, positions_BT, attend=None):
    """`attend(q, k, v) -> o`, when given, replaces the configured implementation."""
    q, k, v = self.qkv(x_BTKD, rope_positions_BTK)
    if attend is None:
      o = attention_lib.attention(self.cfg.attention_impl, q, k, v, self.spec, segment_ids_BT,
                                  positions_BT)
    else:
      o = attend(q, k, v)
    return self.out(o)


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, spec: PHDSpec, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.attn = Attention(cfg, spec, rngs=rngs)
    self.mlp = SwiGLU(cfg.d_model, cfg.mlp_dim, cfg.init_std, cfg.init_std, rngs=rngs)
    self.attn_norm = RMSNorm((cfg.d_model,), ("norm",), cfg.norm_eps, rngs=rngs)
    self.mlp_norm = RMSNorm((cfg.d_model,), ("norm",), cfg.norm_eps, rngs=rngs)

  def __call__(self, x_BTKD, rope_positions_BTK, segment_ids_BT, positions_BT, attend=None):
    def attn(h):
      return self.attn(h, rope_positions_BTK, segment_ids_BT, positions_BT, attend)
    if self.cfg.norm_style == "reordered":  # OLMo2: x + norm(f(x))
      x_BTKD = x_BTKD + self.attn_norm(attn(x_BTKD))
      return x_BTKD + self.mlp_norm(self.mlp(x_BTKD))
    x_BTKD = x_BTKD + attn(self.attn_norm(x_BTKD))  # pre-norm (Llama): x + f(norm(x))
    return x_BTKD + self.mlp(self.mlp_norm(x_BTKD))


class Transformer(nnx.Module):
  """`model(tokens_BT, segment_ids_BT=None, positions_BT=None) -> logits_BTV` (float32).

  segment_ids: packed documents (0 = padding); positions: in-document positions, which
  feed RoPE and CSWA chunks (default 0..T-1).
  """

  def __init__(self, cfg: ModelConfig, spec: PHDSpec, *, rngs: nnx.Rngs):
    self.cfg, self.spec = cfg, spec
    self.embed = Embed(cfg.vocab_size, cfg.d_model, cfg.init_std, rngs=rngs)
    self.blocks = nnx.List([Block(cfg, spec, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm((cfg.d_model,), ("norm",), cfg.norm_eps, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                           cfg.init_std)

  def hidden_states(self, tokens_BT, segment_ids_BT=None, positions_BT=None, *, copies=None,
                    attend=None):
    """Output of the last block for every copy, `[B, T, K, D]` (before the final norm).

    Inference (`phd_jax.decode`) runs the same blocks with caches: `copies` keeps only the
    first copies of each token (1 = originals only), and `attend(layer, q, k, v) -> o`
    replaces the attention implementation in every layer.
    """
    B, T = tokens_BT.shape
    copies = self.spec.k if copies is None else copies
    if copies != self.spec.k and attend is None:
      raise ValueError(f"copies={copies} (of k={self.spec.k}) needs an `attend` function: the "
                       "configured attention expects all copies")
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
    x_BTD = self.embed(tokens_BT, DTYPES[self.cfg.dtype])
    x_BTKD = jnp.broadcast_to(x_BTD[:, :, None], (B, T, copies, self.cfg.d_model))
    rope_positions_BTK = copy_positions(self.spec, positions_BT)[..., :copies]
    policy = REMAT_POLICIES[self.cfg.remat]
    x_BTKD = constrain(x_BTKD, ACTIVATION_BTKD)
    for layer, block in enumerate(self.blocks):
      if attend is not None:  # inference: no backward pass, so nothing to rematerialise
        x_BTKD = block(x_BTKD, rope_positions_BTK, segment_ids_BT, positions_BT,
                       functools.partial(attend, layer))
      elif self.cfg.remat == "none":
        x_BTKD = block(x_BTKD, rope_positions_BTK, segment_ids_BT, positions_BT)
      else:
        x_BTKD = nnx.remat(lambda b, x: b(x, rope_positions_BTK, segment_ids_BT, positions_BT),
                           policy=policy)(block, x_BTKD)
      x_BTKD = constrain(x_BTKD, ACTIVATION_BTKD)
    return x_BTKD

  def logits(self, x_BTD):
    """Float32 logits from last-block states of the final copies."""
    x_BTD = self.final_norm(x_BTD)
    if self.cfg.tie_embeddings:
      logits_BTV = self.embed.unembed(x_BTD)
    else:
      logits_BTV = jnp.einsum("btd,dv->btv", x_BTD, self.lm_head[...].astype(x_BTD.dtype),
                              preferred_element_type=jnp.float32)
    return constrain(logits_BTV, ACTIVATION_BTV)

  def __call__(self, tokens_BT, segment_ids_BT=None, positions_BT=None):
    x_BTKD = self.hidden_states(tokens_BT, segment_ids_BT, positions_BT)
    return self.logits(x_BTKD[:, :, -1])
