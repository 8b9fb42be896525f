"""GPU: cuDNN flash attention for the originals, merged exactly with the hidden band.

cuDNN runs causal attention of all K*T queries (copies folded into the query heads) against
the T originals, skipping the tiles above the diagonal; packed documents enter as an
additive bias. The hidden band runs in plain JAX and the two merge by log-sum-exp
(split.py). `jax.nn.dot_product_attention(implementation="cudnn")` rounds the log-sum-exp
to the input dtype and its VJP ignores the log-sum-exp's cotangent, so this module calls
the forward and backward rules beneath it: the forward for the float32 log-sum-exp, the
backward with the merged output and log-sum-exp.

cuDNN takes bfloat16/float16 inputs with head_dim a multiple of 8 up to 128 and, for
training, an even length (jax passes it a placeholder bias); anything else runs
`structured`, which is exact everywhere.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from phd_jax.attention.split import split_attention
from phd_jax.attention.structured import structured_attention
from phd_jax.masks import PHDSpec

CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


# JAX's private cuDNN functions: every call to them is built here, by keyword, and
# tests/test_private_apis.py binds these arguments to their signatures, so that a JAX
# release that renames, drops or adds a parameter fails there, naming the JAX version.


def _private():
  from jax._src.cudnn import fused_attention_stablehlo  # pylint: disable=g-import-not-at-top
  return fused_attention_stablehlo


# The forward's inputs, in the order its residuals repeat them (then activation, output).
INPUTS = ("query", "key", "value", "bias", "q_seqlen", "kv_seqlen", "q_offsets", "kv_offsets",
          "page_table_k", "page_table_v")


def _inputs(q, k, v, segment_ids_BT) -> tuple[dict, dict]:
  """Causal attention in layout BTNH, no dropout; packed documents as a bias (no bias
  gradient): 0 within a document, very negative across."""
  fa = _private()
  unused = jnp.zeros(0, q.dtype)
  bias = unused
  if segment_ids_BT is not None:  # -> [B, 1, T, T]
    same = segment_ids_BT[:, None, :, None] == segment_ids_BT[:, None, None, :]
    bias = fa.combine_bias_and_mask(bias=None, mask=same, dtype=q.dtype)
  inputs = dict(query=q, key=k, value=v, bias=bias, q_seqlen=unused, kv_seqlen=unused,
                q_offsets=unused, kv_offsets=unused, page_table_k=unused, page_table_v=unused)
  static = dict(scale=q.shape[-1] ** -0.5, seed=0, dropout_rate=0.0,
                variadic_args=(segment_ids_BT is not None, False),
                mask_type=fa.MaskType.CAUSAL, layout=fa.AttentionLayout.BTNH.value,
                sliding_window_length=None)
  return inputs, static


def forward_call(q, k, v, segment_ids_BT) -> tuple:
  """(function, keyword arguments) of cuDNN's forward that returns the log-sum-exp too."""
  fa = _private()
  inputs, static = _inputs(q, k, v, segment_ids_BT)
  return fa._dot_product_attention_fwd, dict(  # pylint: disable=protected-access
      **inputs, **static, cudnn_version=fa.check_cudnn_version(), return_residual=True)


def backward_call(q, k, v, segment_ids_BT, o, stats_BHcT, do) -> tuple:
  """(function, keyword arguments) of cuDNN's backward rule from the output and the
  log-sum-exp (`stats`) we give it, rather than the forward's."""
  inputs, static = _inputs(q, k, v, segment_ids_BT)
  residuals = (*(inputs[name] for name in INPUTS), stats_BHcT, o)
  return _private()._dot_product_attention_bwd_rule, dict(  # pylint: disable=protected-access
      **static, is_training=True, return_residual=False, res=residuals, grad_output=do)


@dataclasses.dataclass(frozen=True)
class CudnnCausal:
  """The split.py kernel contract on cuDNN (layout BTNH)."""

  def forward(self, q, k, v, segment_ids):
    fn, kwargs = forward_call(q, k, v, segment_ids)
    o, stats_BHcT = fn(**kwargs)
    return o, jnp.swapaxes(stats_BHcT, 1, 2)

  def backward(self, q, k, v, segment_ids, o, lse, do):
    fn, kwargs = backward_call(q, k, v, segment_ids, o, jnp.swapaxes(lse, 1, 2), do)
    return fn(**kwargs)[:3]


def cudnn_supports(q_BTKHDh) -> bool:
  """Whether cuDNN flash attention takes these inputs."""
  T, Dh = q_BTKHDh.shape[1], q_BTKHDh.shape[-1]
  return q_BTKHDh.dtype in CUDNN_DTYPES and Dh % 8 == 0 and Dh <= 128 and T % 2 == 0


def cudnn_attention(q_BTKHDh, k_BTKGDh, v_BTKGDh, spec: PHDSpec, segment_ids_BT=None,
                    positions_BT=None):
  """PHD attention `[B, T, K, H, Dh]`: cuDNN where it applies, else `structured`."""
  if not cudnn_supports(q_BTKHDh):
    return structured_attention(q_BTKHDh, k_BTKGDh, v_BTKGDh, spec, segment_ids_BT,
                                positions_BT)
  return split_attention(CudnnCausal(), q_BTKHDh, k_BTKGDh, v_BTKGDh, spec, segment_ids_BT,
                         positions_BT)
