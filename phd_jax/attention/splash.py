"""TPU: splash attention (Pallas) for the originals, merged exactly with the hidden band.

In the regrouped layout [originals | hidden stream] the PHD mask has two non-empty key
column blocks. The originals' block is causal by token for every copy: with the K copies
folded into the query heads it is splash's computable `CausalMask` over T x T, so splash
skips every tile above the diagonal and the work is K times vanilla's. The hidden block is
the narrow `HiddenBand`, run in plain JAX and merged by log-sum-exp (split.py). The band
stays out of splash because CSWA chunks follow in-document positions, which are data, and
splash masks are fixed at trace time.

Splash's own VJP drops the log-sum-exp's cotangent, so the backward calls splash's
backward kernels directly with the merged output and log-sum-exp. Under a mesh the
kernels run per shard (`jax.shard_map`) over the batch and key/value-head axes.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax.core import spmd
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
from jax.sharding import PartitionSpec as P

from phd_jax.attention.split import split_attention
from phd_jax.masks import PHDSpec

LANES = 128  # splash tiles are multiples of the TPU lane width
PAD_SEGMENT = -1  # segment of the padding appended to reach whole tiles


@functools.lru_cache(maxsize=None)
def _causal_kernel(heads: int, length: int, block: int, interpret: bool):
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                        block_q_dq=block, block_kv_dq=block)
  mask = sm.MultiHeadMask([sm.CausalMask((length, length))] * heads)
  with jax.ensure_compile_time_eval():  # concrete mask tables, safe to cache across traces
    return sk.make_splash_mqa(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              save_residuals=True, interpret=interpret)


def backward_call(kernel, residuals: tuple, do) -> tuple:
  """(function, keyword arguments) of splash's private backward rule, the one place this
  module calls it: with the kernel's own settings (those its forward ran with), and
  `residuals` = (q, k, v, segment_ids, sinks, output, log-sum-exp, dq mask info, dkv mask
  info). tests/test_private_apis.py binds them to its signature, so that a JAX release
  that renames, drops or adds a parameter fails there, naming the JAX version."""
  return sk._splash_attention_bwd, dict(  # pylint: disable=protected-access
      **kernel.kwargs, res=residuals, do=do)


def _pad_tokens(x, axis: int, length: int, value=0):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


@dataclasses.dataclass(frozen=True)
class SplashCausal:
  """The split.py kernel contract on splash: causal grouped-query attention per kv head."""

  block: int = 512
  interpret: bool = False  # Pallas interpret mode: runs (slowly) on CPU, for tests

  def _setup(self, q_BTHcDh, k_BTGDh, segment_ids_BT):
    """The kernel, tile-padded length, and layout changes in and out of splash."""
    B, T, Hc, Dh = q_BTHcDh.shape
    G = k_BTGDh.shape[2]
    block = min(self.block, -(-T // LANES) * LANES)
    length = -(-T // block) * block
    kernel = _causal_kernel(Hc // G, length, block, self.interpret)
    segments = None
    if segment_ids_BT is not None:
      seg = _pad_tokens(segment_ids_BT.astype(jnp.int32), 1, length, PAD_SEGMENT)
      segments = sk.SegmentIds(q=seg, kv=seg)

    def q_in(x_BTHc_):  # [B, T, Hc, ...] -> [B, G, Rc, length, ...]
      x = x_BTHc_.reshape(B, T, G, Hc // G, *x_BTHc_.shape[3:])
      return _pad_tokens(jnp.moveaxis(x, 1, 3), 3, length)

    def kv_in(x_BTGDh):
      return _pad_tokens(jnp.moveaxis(x_BTGDh, 1, 2), 2, length)

    def q_out(x):
      return jnp.moveaxis(x[:, :, :, :T], 3, 1).reshape(B, T, Hc, *x.shape[4:])

    return kernel, segments, q_in, kv_in, q_out

  @staticmethod
  def _per_head_group(fn, segments, num_per_query: int):
    """vmap `fn(q, k, v, segment_ids, *per_query)` over kv heads, then over the batch."""
    seg_axes = None if segments is None else sk.SegmentIds(q=0, kv=0)
    inner = jax.vmap(fn, in_axes=(0, 0, 0, None) + (0,) * num_per_query)
    return jax.vmap(inner, in_axes=(0, 0, 0, seg_axes) + (0,) * num_per_query)

  def forward(self, q, k, v, segment_ids):
    kernel, segments, q_in, kv_in, q_out = self._setup(q, k, segment_ids)
    scale = q.shape[-1] ** -0.5  # splash does not scale: fold it into q
    o, (lse,) = self._per_head_group(kernel, segments, 0)(
        q_in(q * scale), kv_in(k), kv_in(v), segments)
    return q_out(o), q_out(lse).astype(jnp.float32)

  def backward(self, q, k, v, segment_ids, o, lse, do):
    kernel, segments, q_in, kv_in, q_out = self._setup(q, k, segment_ids)
    scale = q.shape[-1] ** -0.5

    def run(q, k, v, seg, o, lse, do):
      residuals = (q, k, v, seg, None, o, lse, kernel.dq_mask_info, kernel.dkv_mask_info)
      fn, kwargs = backward_call(kernel, residuals, do)
      return fn(**kwargs)[3:6]  # (dq, dk, dv) after the three mask infos

    dq, dk, dv = self._per_head_group(run, segments, 3)(
        q_in(q * scale), kv_in(k), kv_in(v), segments, q_in(o), q_in(lse), q_in(do))
    unpad = lambda x: jnp.moveaxis(x[:, :, :q.shape[1]], 2, 1)
    return q_out(dq) * scale, unpad(dk), unpad(dv)


def _shard_axes(mesh, axes, size: int):
  """`axes` if they split `size` evenly on `mesh`, else None (replicate)."""
  if axes is None:
    return None
  names = (axes,) if isinstance(axes, str) else tuple(axes)
  if any(a not in mesh.shape for a in names):
    return None
  return axes if size % math.prod(mesh.shape[a] for a in names) == 0 else None


def splash_attention(q_BTKHDh, k_BTKGDh, v_BTKGDh, spec: PHDSpec, segment_ids_BT=None,
                     positions_BT=None, *, interpret: bool = False):
  """PHD attention `[B, T, K, H, Dh]` with splash kernels (TPU, or interpret mode)."""
  kernel = SplashCausal(interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return split_attention(kernel, q_BTKHDh, k_BTKGDh, v_BTKGDh, spec, segment_ids_BT,
                           positions_BT)
  # Pallas calls are not partitioned by XLA: run them per shard.
  rules = dict(spmd.get_logical_axis_rules() or ())
  batch = _shard_axes(mesh, rules.get("activation_batch"), q_BTKHDh.shape[0])
  heads = _shard_axes(mesh, rules.get("kv_heads"), k_BTKGDh.shape[3])
  per_token = [x for x in (segment_ids_BT, positions_BT) if x is not None]

  def local(q, k, v, *tokens):
    it = iter(tokens)
    seg = next(it) if segment_ids_BT is not None else None
    pos = next(it) if positions_BT is not None else None
    return split_attention(kernel, q, k, v, spec, seg, pos)

  qkv_spec = P(batch, None, None, heads, None)
  return jax.shard_map(local, in_specs=(qkv_spec,) * 3 + (P(batch, None),) * len(per_token),
                       out_specs=qkv_spec, check_vma=False)(
                           q_BTKHDh, k_BTKGDh, v_BTKGDh, *per_token)
