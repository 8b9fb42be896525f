"""The OLMo2-style decoder with Parallel Hidden Decoding.

Token ids `[B, T]` -> embeddings repeated K times on their own axis `[B, T, K, D]` (copy 0
the original, copies 1..K-1 the hidden decoding tokens: the same token through the same
weights, no new parameters) -> blocks whose attention follows the variant's PHD mask ->
final norm and output layer on the last copy only -> logits `[B, T, V]` in float32.

With K = 1 this is exactly a vanilla OLMo2 model: RMSNorm, QK-norm, SwiGLU, RoPE, GQA,
no biases, norms after each sublayer ("reordered", OLMo2) or before it ("pre", Llama).
The PLT variants (`masks.PLTSpec`) run these blocks in loops instead: `phd_jax.plt`;
their attention layers also hold the gate of the later loops (`attention.loops.LoopGate`).

Layers. With `scan_layers=True` (the default) the blocks are ONE `Block` whose parameters
carry a leading layer axis (logical name "layers", replicated), run by `jax.lax.scan`: the
program holds one block whatever the depth, so compile time does not grow with it.
`scan_layers=False` keeps a Python list of blocks (per-layer parameters `blocks/0/...`),
unrolled into the program; it computes the same function. `stack_layers` and
`unstack_layers` convert parameters (and anything shaped like them, such as optimizer
moments) between the two layouts; checkpoints convert on restore.

Shape suffixes (`x_BTKD`, `q_BTKHDh`, ...) name each axis of an array by these letters:
  B   batch rows                         L   layers
  T   tokens of a sequence               V   vocabulary
  K   copies per token (1 + K-1 hidden)  D   model width (d_model)
  A   hidden copies of a token (K-1)     Dh  head width (head_dim)
  H   query heads                        G   key/value heads
  R   query heads per key/value head (H / G)
  Hc  query heads with the copies folded in (K*H), as fused kernels see them; Rc = Hc / G
  S   key positions (attention) or cache slots (decoding)
  Q   query positions (of a block, or N*C in decoding); J  candidate keys of a band block
  N   new tokens of a decoding forward;  C  copies it runs (1 or K);  M  keys of a part
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from phd_jax import attention as attention_lib
from phd_jax.attention.loops import LoopGate
from phd_jax.layers import DTYPES, Embed, RMSNorm, SwiGLU, constrain, param, rope
from phd_jax.masks import PHDSpec, PLTSpec

NORM_STYLES = ("reordered", "pre")
ACTIVATION_BTKD = ("activation_batch", "activation_length", None, "activation_embed")
ACTIVATION_BTV = ("activation_batch", "activation_length", "activation_vocab")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
LAYERS = "layers"  # logical name of the stacked parameters' leading axis


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The decoder's settings: a config's `model` fields, whose defaults are these
  (`phd_jax.defaults` adds only the shape)."""
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int  # hidden size of each of the gate and up projections
  rope_theta: float = 500_000.0
  norm_eps: float = 1e-6
  norm_style: str = "reordered"  # OLMo2 norms after each sublayer; "pre": Llama-style
  qk_norm: bool = True
  qk_norm_per_head: bool = False  # True: each head's q and k normed alone (Qwen3)
  tie_embeddings: bool = False
  init_std: float = 0.02
  dtype: str = "float32"  # compute dtype: float32 or bfloat16 (parameters stay float32)
  attention_impl: str = "auto"  # see phd_jax/attention/__init__.py
  remat: str = "none"  # none | full | dots: activation rematerialisation per block
  scan_layers: bool = True  # one program whatever the depth; False: a Python loop (debugging)


def copy_positions(spec: PHDSpec, positions_BT):
  """RoPE position of every copy, `[B, T, K]`: shared pos(p), or expanded K*pos(p) + a."""
  copies = jnp.arange(spec.k)
  if spec.positions == "shared":
    return jnp.broadcast_to(positions_BT[..., None], (*positions_BT.shape, spec.k))
  return jnp.add.outer(positions_BT * spec.k, copies)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, spec: PHDSpec | PLTSpec, *, rngs: nnx.Rngs):
    D, H, G, Dh = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.cfg, self.spec = cfg, spec
    self.wq = param(rngs, (D, H, Dh), ("embed", "q_heads", "head_dim"), cfg.init_std)
    self.wk = param(rngs, (D, G, Dh), ("embed", "kv_heads", "head_dim"), cfg.init_std)
    self.wv = param(rngs, (D, G, Dh), ("embed", "kv_heads", "head_dim"), cfg.init_std)
    self.wo = param(rngs, (H, Dh, D), ("q_heads", "head_dim", "embed"), cfg.init_std)
    if cfg.qk_norm:  # OLMo2 normalises the whole projected q and k, across heads; Qwen3
      # (qk_norm_per_head) each head alone: RMSNorm reduces over the axes of its scale
      per_head = cfg.qk_norm_per_head
      self.q_norm = RMSNorm((Dh,) if per_head else (H, Dh),
                            ("head_dim",) if per_head else ("q_heads", "head_dim"),
                            cfg.norm_eps, rngs=rngs)
      self.k_norm = RMSNorm((Dh,) if per_head else (G, Dh),
                            ("head_dim",) if per_head else ("kv_heads", "head_dim"),
                            cfg.norm_eps, rngs=rngs)
    gated = isinstance(spec, PLTSpec) and spec.gated
    self.gate = LoopGate(cfg, spec, rngs=rngs) if gated else None

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

  def out(self, o_BTKHDh):
    return jnp.einsum("btkhe,hed->btkd", o_BTKHDh, self.wo[...].astype(o_BTKHDh.dtype))

  def __call__(self, x_BTKD, rope_positions_BTK, segment_ids_BT, positions_BT, attend=None,
               residual_BTKD=None):
    """(output `[B,T,K,D]`, aux). `attend(q, k, v) -> (o, aux)`, when given, replaces the
    configured implementation (aux: whatever the caller wants back, e.g. k and v); in a
    layer with a PLT gate it is `attend(q, k, v, gate)`, the gate read from `q` or the
    block input `residual_BTKD`."""
    q, k, v = self.qkv(x_BTKD, rope_positions_BTK)
    if attend is None:
      o, aux = attention_lib.attention(self.cfg.attention_impl, q, k, v, self.spec,
                                       segment_ids_BT, positions_BT), None
    elif self.gate is None:
      o, aux = attend(q, k, v)
    else:
      o, aux = attend(q, k, v, self.gate(q, residual_BTKD))
    return self.out(o), aux


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, spec: PHDSpec | PLTSpec, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.attn = Attention(cfg, spec, rngs=rngs)
    self.mlp = SwiGLU(cfg.d_model, cfg.mlp_dim, cfg.init_std, cfg.init_std, rngs=rngs)
    self.attn_norm = RMSNorm((cfg.d_model,), ("norm",), cfg.norm_eps, rngs=rngs)
    self.mlp_norm = RMSNorm((cfg.d_model,), ("norm",), cfg.norm_eps, rngs=rngs)

  def __call__(self, x_BTKD, rope_positions_BTK, segment_ids_BT, positions_BT, attend=None):
    """(new `x_BTKD`, the attention's aux: None unless `attend` returns one)."""
    attn = functools.partial(self.attn, rope_positions_BTK=rope_positions_BTK,
                             segment_ids_BT=segment_ids_BT, positions_BT=positions_BT,
                             attend=attend, residual_BTKD=x_BTKD)
    if self.cfg.norm_style == "reordered":  # OLMo2: x + norm(f(x))
      h_BTKD, aux = attn(x_BTKD)
      x_BTKD = x_BTKD + self.attn_norm(h_BTKD)
      return x_BTKD + self.mlp_norm(self.mlp(x_BTKD)), aux
    h_BTKD, aux = attn(self.attn_norm(x_BTKD))  # pre-norm (Llama): x + f(norm(x))
    x_BTKD = x_BTKD + h_BTKD
    return x_BTKD + self.mlp(self.mlp_norm(x_BTKD)), aux


def stacked_blocks(cfg: ModelConfig, spec: PHDSpec | PLTSpec, rngs: nnx.Rngs) -> Block:
  """`cfg.num_layers` blocks as one Block with a leading "layers" axis on every parameter,
  each layer initialised from its own split of `rngs`."""
  @nnx.split_rngs(splits=cfg.num_layers)
  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS})
  def create(rngs):
    return Block(cfg, spec, rngs=rngs)
  return create(rngs)


class Transformer(nnx.Module):
  """`model(tokens_BT, segment_ids_BT=None, positions_BT=None) -> logits_BTV` (float32).

  segment_ids: packed documents (0 = padding); positions: in-document positions, which
  feed RoPE and CSWA chunks (default 0..T-1).
  """
  SPEC_TYPE = PHDSpec  # the variants this class builds (`state.new_model` picks the class)

  def __init__(self, cfg: ModelConfig, spec: PHDSpec, *, rngs: nnx.Rngs):
    if not isinstance(spec, self.SPEC_TYPE):
      raise ValueError(f"{type(self).__name__} builds {self.SPEC_TYPE.__name__} variants, "
                       f"not {spec.name}; phd_jax.state.new_model picks a variant's model")
    self.cfg, self.spec = cfg, spec
    self.embed = Embed(cfg.vocab_size, cfg.d_model, cfg.init_std, rngs=rngs)
    if cfg.scan_layers:
      self.blocks = stacked_blocks(cfg, spec, rngs)
    else:
      self.blocks = nnx.List([Block(cfg, spec, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm((cfg.d_model,), ("norm",), cfg.norm_eps, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                           cfg.init_std)

  def _embed(self, tokens_BT, positions_BT, copies: int):
    B, T = tokens_BT.shape
    if positions_BT is None:
      positions_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
    x_BTD = self.embed(tokens_BT, DTYPES[self.cfg.dtype])
    x_BTKD = jnp.broadcast_to(x_BTD[:, :, None], (B, T, copies, self.cfg.d_model))
    rope_positions_BTK = self._rope_positions(positions_BT, copies)
    return constrain(x_BTKD, ACTIVATION_BTKD), rope_positions_BTK, positions_BT

  def _rope_positions(self, positions_BT, copies: int):
    return copy_positions(self.spec, positions_BT)[..., :copies]

  def _layers(self, x_BTKD, rope_positions_BTK, segment_ids_BT, positions_BT, attend=None,
              layer_inputs=None, *, inference: bool = False):
    """All blocks: (last-block states, per-layer attention aux stacked on a leading L axis).

    `layer_inputs`: arrays with a leading L axis; layer l's slice goes to its `attend`.
    The scan and the loop run the same `layer` function, rematerialised alike unless
    `inference` (no backward pass).
    """
    def layer(graphdef, x_BTKD, block_state, layer_input):
      block = nnx.merge(graphdef, block_state)
      layer_attend = None if attend is None else functools.partial(attend, layer_input)
      x_BTKD, aux = block(x_BTKD, rope_positions_BTK, segment_ids_BT, positions_BT,
                          layer_attend)
      return constrain(x_BTKD, ACTIVATION_BTKD), aux

    if not inference and self.cfg.remat != "none":
      layer = jax.checkpoint(layer, policy=REMAT_POLICIES[self.cfg.remat], static_argnums=0,
                             prevent_cse=not self.cfg.scan_layers)  # scan needs no CSE guard
    if self.cfg.scan_layers:
      graphdef, stacked = nnx.split(self.blocks)
      return jax.lax.scan(lambda x, xs: layer(graphdef, x, *xs), x_BTKD,
                          (stacked, layer_inputs))
    auxes = []
    for index, block in enumerate(self.blocks):
      graphdef, state = nnx.split(block)
      layer_input = jax.tree.map(lambda a, i=index: a[i], layer_inputs)
      x_BTKD, aux = layer(graphdef, x_BTKD, state, layer_input)
      auxes.append(aux)
    return x_BTKD, jax.tree.map(lambda *a: jnp.stack(a), *auxes)

  def hidden_states(self, tokens_BT, segment_ids_BT=None, positions_BT=None):
    """Output of the last block for every copy, `[B, T, K, D]` (before the final norm)."""
    x_BTKD, rope_positions_BTK, positions_BT = self._embed(tokens_BT, positions_BT,
                                                           self.spec.k)
    return self._layers(x_BTKD, rope_positions_BTK, segment_ids_BT, positions_BT)[0]

  def hidden_states_with(self, attend, tokens_BN, positions_BN, copies: int,
                         layer_inputs=None):
    """Inference (`phd_jax.decode`): the blocks on the first `copies` copies of each token
    (1 = originals only), with `attend(layer_input, q, k, v) -> (o, aux)` in place of the
    attention of every layer; `layer_inputs` (e.g. the caches) and the returned aux carry
    a leading layer axis. Returns (`[B, N, C, D]`, aux `[L, ...]`)."""
    x_BNCD, rope_positions_BNC, positions_BN = self._embed(tokens_BN, positions_BN, copies)
    return self._layers(x_BNCD, rope_positions_BNC, None, positions_BN, attend, layer_inputs,
                        inference=True)

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


# ---------------------------------------------------------------------------------------------
# Converting parameters between the stacked and the per-layer layout.


def _holds_blocks(node) -> bool:
  return isinstance(node, Mapping) and "blocks" in node


def _is_per_layer(blocks) -> bool:
  return all(str(key).isdigit() for key in blocks)


def is_stacked(params) -> bool:
  """Whether `params` (or the first params-like mapping in a pytree) holds stacked blocks."""
  found = [n for n in jax.tree.leaves(params, is_leaf=_holds_blocks) if _holds_blocks(n)]
  if not found:
    raise ValueError("no 'blocks' entry in the tree: not the parameters of a Transformer")
  return not _is_per_layer(found[0]["blocks"])


def _layer_sharding(sharding, ndim: int, add: bool):
  """A NamedSharding with the (replicated) layer axis added in front or dropped."""
  if not isinstance(sharding, NamedSharding):
    return sharding
  spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
  return NamedSharding(sharding.mesh, PartitionSpec(*((None, *spec) if add else spec[1:])))


def _stack_leaves(*leaves):
  first = leaves[0]
  if isinstance(first, nnx.Variable):
    axes = first.get_metadata().get("out_sharding")
    metadata = {"out_sharding": (LAYERS, *axes)} if axes else {}
    return first.replace(_stack_leaves(*(v.get_value() for v in leaves)), **metadata)
  if isinstance(first, jax.ShapeDtypeStruct):  # restore targets
    return jax.ShapeDtypeStruct((len(leaves), *first.shape), first.dtype,
                                sharding=_layer_sharding(first.sharding, first.ndim, True))
  return jnp.stack(leaves)


def _layer_leaf(leaf, index: int):
  if isinstance(leaf, nnx.Variable):
    axes = leaf.get_metadata().get("out_sharding")
    metadata = {"out_sharding": tuple(axes[1:])} if axes else {}
    return leaf.replace(_layer_leaf(leaf.get_value(), index), **metadata)
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype,
                                sharding=_layer_sharding(leaf.sharding, leaf.ndim, False))
  return leaf[index]


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def _mapping_like(like, items):
  """A mapping of `like`'s type (nnx.State stores nested States as plain dicts)."""
  out = type(like)({})
  for key, value in items:
    out[key] = value
  return out


def _with_blocks(params, blocks):
  return _mapping_like(params, [*((k, v) for k, v in params.items() if k != "blocks"),
                                ("blocks", blocks)])


def _stack(params):
  blocks = params["blocks"]
  if not _is_per_layer(blocks):
    raise ValueError("stack_layers: the parameters are already stacked")
  layers = [blocks[key] for key in sorted(blocks, key=int)]
  return _with_blocks(params, jax.tree.map(_stack_leaves, *layers, is_leaf=_is_variable))


def _unstack(params):
  blocks = params["blocks"]
  if _is_per_layer(blocks):
    raise ValueError("unstack_layers: the parameters are already per layer")
  first = jax.tree.leaves(blocks)[0]
  per_layer = [(index, jax.tree.map(functools.partial(_layer_leaf, index=index), blocks,
                                    is_leaf=_is_variable))
               for index in range(first.shape[0])]
  return _with_blocks(params, _mapping_like(blocks, per_layer))


def stack_layers(tree):
  """Per-layer parameters (`blocks/<l>/...`) -> stacked (`blocks/...` with a leading L axis).

  `tree` is an nnx.State or plain dict of parameters, or any pytree holding such mappings
  (a TrainState, whose optimizer moments mirror the parameters): every mapping with a
  "blocks" entry is converted. Arrays, nnx Variables (whose `out_sharding` gains "layers")
  and ShapeDtypeStructs (restore targets; their NamedSharding gains a replicated axis).
  """
  return jax.tree.map(lambda n: _stack(n) if _holds_blocks(n) else n, tree,
                      is_leaf=_holds_blocks)


def unstack_layers(tree):
  """Stacked parameters -> per layer: the inverse of `stack_layers`."""
  return jax.tree.map(lambda n: _unstack(n) if _holds_blocks(n) else n, tree,
                      is_leaf=_holds_blocks)
