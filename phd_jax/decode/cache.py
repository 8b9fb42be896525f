"""Static-shape inference caches.

`Cache.keys/values` hold copy 0 (the original) of every token so far, every layer stacked
on a leading L axis (the model's scan over layers slices them): exactly the cache of a
vanilla model of the same shape, whatever K. Plain PHD keeps nothing else: hidden copies'
K/V are used within their own token's forward pass and dropped. PHD-SWA/CSWA add a
`HiddenWindow`: the most recent hidden K/V (W entries with window_unit="tokens",
W*(K-1) with "positions"), which is all the window rule can reach.

PLT (phd_jax/plt.py): `keys/values` are loop 0's, the window holds the later loops' K/V of
the last W-1 tokens (an entry's `copies` is its loop), and `loop_outputs` the last token's
output of every loop but the last, which the next token's later loops read.

Rows are left-padded: row b's first token sits in slot `first_slot[b]`, so every row
writes its next token to the same slot `length` and one `dynamic_update_slice` serves the
batch. A slot's token position is `slot - first_slot[b]`. Only the padding that shorter
rows need stays: prefill drops what every row shares (`moved`).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import NamedSharding, PartitionSpec

from phd_jax import config as config_lib
from phd_jax import sharding
from phd_jax.flops import window_entries
from phd_jax.layers import DTYPES
from phd_jax.masks import PHDSpec, PLTSpec
from phd_jax.model import ModelConfig


@flax.struct.dataclass
class HiddenWindow:
  keys: jax.Array  # [L, B, W, G, Dh], oldest entry first
  values: jax.Array
  positions: jax.Array  # [B, W] int32 token position of each entry, -1 = empty
  copies: jax.Array  # [B, W] int32 copy index (1..K-1; PLT: loop) of each entry


@flax.struct.dataclass
class LayerCache:
  """The K/V one layer attends to: a Cache's stacked arrays, sliced by the layer scan."""
  keys: jax.Array  # [B, S, G, Dh] (with a leading L axis before slicing)
  values: jax.Array
  window_keys: jax.Array | None = None  # [B, W, G, Dh]
  window_values: jax.Array | None = None


@flax.struct.dataclass
class Cache:
  keys: jax.Array  # [L, B, S, G, Dh]: copy 0 of every token
  values: jax.Array
  first_slot: jax.Array  # [B] int32: slot of each row's first token (left padding)
  length: jax.Array  # [] int32: slots filled, the same for every row
  window: HiddenWindow | None = None  # SWA/CSWA, and PLT with W > 1
  loop_outputs: jax.Array | None = None  # PLT: [B, loops-1, D], the last token's H_0..H_L-2

  @property
  def cache_len(self) -> int:
    return self.keys.shape[2]

  def per_layer(self) -> LayerCache:
    """Every layer's K/V, stacked on a leading L axis (the layer scan's inputs)."""
    if self.window is None:
      return LayerCache(self.keys, self.values)
    return LayerCache(self.keys, self.values, self.window.keys, self.window.values)


def init_cache(cfg: ModelConfig, spec: PHDSpec | PLTSpec, batch: int, cache_len: int,
               first_slot=None) -> Cache:
  """An empty cache of `cache_len` slots; `first_slot [B]` marks each row's left padding."""
  dtype = DTYPES[cfg.dtype]
  kv_shape = (cfg.num_layers, batch, cache_len, cfg.num_kv_heads, cfg.head_dim)
  zeros = lambda shape: jnp.zeros(shape, dtype)
  window = None
  entries = window_entries(spec)
  if entries:
    window = HiddenWindow(
        keys=zeros((cfg.num_layers, batch, entries, cfg.num_kv_heads, cfg.head_dim)),
        values=zeros((cfg.num_layers, batch, entries, cfg.num_kv_heads, cfg.head_dim)),
        positions=jnp.full((batch, entries), -1, jnp.int32),
        copies=jnp.zeros((batch, entries), jnp.int32))
  if first_slot is None:
    first_slot = jnp.zeros((batch,), jnp.int32)
  loop_outputs = None
  if isinstance(spec, PLTSpec):
    loop_outputs = zeros((batch, spec.loops - 1, cfg.d_model))
  return Cache(keys=zeros(kv_shape), values=zeros(kv_shape),
               first_slot=jnp.asarray(first_slot, jnp.int32), length=jnp.int32(0),
               window=window, loop_outputs=loop_outputs)


def moved(cache: Cache, slots: int, shift=0) -> Cache:
  """`cache` in `slots` slots, every row's tokens `shift` slots lower (zeros past its end).

  A token's position is its slot minus its row's first slot, and both move, so no later
  step sees a difference: prefill drops this way the left padding every row shares (a
  prompt bucket's), and only real tokens take slots.
  """
  def move(x):
    grown = jnp.pad(x, [(0, 0), (0, 0), (0, slots), (0, 0), (0, 0)])
    return jax.lax.dynamic_slice_in_dim(grown, shift, slots, axis=2)
  return cache.replace(keys=move(cache.keys), values=move(cache.values),
                       first_slot=cache.first_slot - shift, length=cache.length - shift)


def shard_cache(cache: Cache, mesh) -> Cache:
  """`cache` placed on the physical `mesh` (None: as it is): rows over the data-parallel
  axes, as the batch; key/value heads over "tensor", as their projections (replicated when
  the tensor axis does not divide them)."""
  if mesh is None:
    return cache
  rows = sharding.BATCH_AXES
  heads = "tensor" if cache.keys.shape[3] % mesh.shape["tensor"] == 0 else None
  on_mesh = lambda *axes: NamedSharding(mesh, PartitionSpec(*axes))
  kv = on_mesh(None, rows, None, heads, None)
  specs = Cache(keys=kv, values=kv, first_slot=on_mesh(rows), length=on_mesh(),
                window=None if cache.window is None else HiddenWindow(
                    keys=kv, values=kv, positions=on_mesh(rows, None),
                    copies=on_mesh(rows, None)),
                loop_outputs=None if cache.loop_outputs is None else on_mesh(rows, None, None))
  return jax.lax.with_sharding_constraint(cache, specs)


def write(cache: Cache, start, k_LBNCGDh, v_LBNCGDh, positions_BN, real_BN) -> Cache:
  """Store the K/V of N tokens computed in slots [start, start+N), every layer at once.

  k, v: the first C copies of each new token. Copy 0 goes into the originals' cache;
  hidden copies (if any) enter the window in hidden-stream order (token-major), pushing
  out the oldest entries; padding enters as empty entries.
  """
  L, B, N, C = k_LBNCGDh.shape[:4]
  originals = lambda old, new: jax.lax.dynamic_update_slice_in_dim(
      old, new[:, :, :, 0].astype(old.dtype), start, axis=2)
  window = cache.window
  if window is not None and C > 1:
    entries = window.positions.shape[1]
    slide = lambda old, new, axis: jax.lax.slice_in_dim(
        jnp.concatenate([old, new.astype(old.dtype)], axis=axis), -entries, None, axis=axis)
    hidden = lambda x: x[:, :, :, 1:].reshape(L, B, N * (C - 1), *x.shape[4:])
    window = HiddenWindow(
        keys=slide(window.keys, hidden(k_LBNCGDh), 2),
        values=slide(window.values, hidden(v_LBNCGDh), 2),
        positions=slide(window.positions,
                        jnp.repeat(jnp.where(real_BN, positions_BN, -1), C - 1, axis=1), 1),
        copies=slide(window.copies, jnp.tile(jnp.arange(1, C, dtype=jnp.int32), (B, N)), 1))
  return cache.replace(keys=originals(cache.keys, k_LBNCGDh),
                       values=originals(cache.values, v_LBNCGDh),
                       length=jnp.asarray(start + N, jnp.int32), window=window)


def kv_cache_bytes(config, seq_len: int, batch: int) -> dict:
  """Bytes of the inference cache of `config`'s model for `batch` rows of `seq_len` slots.

  Keys: "variant", "originals" (the K/V every variant keeps: a vanilla model's whole
  cache), "hidden_window" (SWA/CSWA's rolling hidden K/V, PLT's later loops'),
  "bookkeeping" (slot and position indices; PLT: the last token's loop outputs), "total".
  """
  cfg, spec = config_lib.model_config(config), config_lib.phd_spec(config)
  for name, value in (("seq_len", seq_len), ("batch", batch)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be a positive integer; got {value!r}")
  abstract = jax.eval_shape(lambda: init_cache(cfg, spec, batch, seq_len))
  nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  originals = nbytes((abstract.keys, abstract.values))
  hidden = 0 if abstract.window is None else nbytes((abstract.window.keys,
                                                     abstract.window.values))
  total = nbytes(abstract)
  return {"variant": spec.name, "originals": originals, "hidden_window": hidden,
          "bookkeeping": total - originals - hidden, "total": total}
