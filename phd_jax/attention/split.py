"""PHD attention from a fused causal kernel plus the hidden band, merged exactly.

A fused kernel (cuDNN on GPU, splash on TPU) runs the bulk: all K*T queries, the copies
folded into the query heads, causally against the T originals. The small hidden band runs
in plain JAX. The two partial softmaxes merge through their log-sum-exps.

The kernels' own VJPs ignore the log-sum-exp's cotangent, so the merge has its own VJP: each
part's backward runs with the MERGED output O and log-sum-exp L. FlashAttention-2's
identity dS = P * (dO.V - rowsum(dO * O)) then holds part by part, because P = exp(S - L)
restricted to a part is that part's share of the one softmax. No extra kernel pass.

A kernel is an object with
  forward(q_BTHcDh, k_BTGDh, v_BTGDh, segment_ids_BT) -> (o_BTHcDh, lse_BTHc float32)
  backward(q, k, v, segment_ids, o, lse, do) -> (dq, dk, dv)   # o, lse: the merged ones
for causal grouped-query attention (query head n uses key/value head n // (Hc // G)).
`XlaCausal` is the plain-JAX kernel that makes the merge testable on any backend.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from phd_jax.attention.band import MASKED, HiddenBand
from phd_jax.masks import PHDSpec


def residual_grads(attend, primals, o, lse, do):
  """Gradients of one part of a merged softmax from the merged output and log-sum-exp.

  `attend(*primals, lse)` returns (sum_j p_ij v_j, sum_j p_ij) with p = exp(s - lse): the
  VJP of sum_j p_ij (v_j - o_i) is exactly this part's share of the full backward.
  `attend` must weigh the values in float32 (`_precise`): dP = dO.V and D = rowsum(dO * O)
  are then float32, as in FlashAttention's backward. Rounded to bfloat16 before their
  difference dS = P * (dP - D), they cost dq and dk several times bfloat16's own error.
  """
  o = jax.lax.stop_gradient(o).astype(jnp.float32)

  def residual(*args):
    weighted, mass = attend(*args, lse)
    return weighted - mass[..., None] * o

  _, vjp = jax.vjp(residual, *primals)
  return vjp(do.astype(jnp.float32))


def _precise(v):
  """Values in float32 for a backward's residual (their gradient returns in v's dtype)."""
  return v.astype(jnp.float32)


def _causal_scores(q_BTHcDh, k_BTGDh, segment_ids_BT):
  """Masked float32 scores `[B, G, Rc, T, S]` of causal grouped-query attention."""
  B, T, Hc, Dh = q_BTHcDh.shape
  G = k_BTGDh.shape[2]
  q = q_BTHcDh.reshape(B, T, G, Hc // G, Dh)
  s = jnp.einsum("btgnd,bsgd->bgnts", q, k_BTGDh, preferred_element_type=jnp.float32)
  mask = (jnp.arange(T)[None, :] <= jnp.arange(T)[:, None])[None]
  if segment_ids_BT is not None:
    mask = mask & (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])
  return jnp.where(mask[:, None, None], s * Dh**-0.5, MASKED)


def _causal_values(p_BGRcTS, v_BTGDh):
  out = jnp.einsum("bgnts,bsgd->btgnd", p_BGRcTS.astype(v_BTGDh.dtype), v_BTGDh)
  return out.reshape(*out.shape[:2], -1, out.shape[-1])  # [B, T, Hc, Dh]


def _heads_last(x_BGRcT):
  return jnp.moveaxis(x_BGRcT.reshape(x_BGRcT.shape[0], -1, x_BGRcT.shape[-1]), 1, -1)


def _causal_attend(q, k, v, segment_ids, lse_BTHc):
  B, T, Hc, _ = q.shape
  lse = jnp.moveaxis(lse_BTHc, 1, -1).reshape(B, k.shape[2], -1, T)  # [B, G, Rc, T]
  p = jnp.exp(_causal_scores(q, k, segment_ids) - lse[..., None])
  return _causal_values(p, _precise(v)), _heads_last(p.sum(-1))


@dataclasses.dataclass(frozen=True)
class XlaCausal:
  """The kernel contract in plain JAX (materialises the T x T scores)."""

  def forward(self, q, k, v, segment_ids):
    s = _causal_scores(q, k, segment_ids)
    lse = jax.nn.logsumexp(s, axis=-1, keepdims=True)
    return _causal_values(jnp.exp(s - lse), v), _heads_last(lse[..., 0])

  def backward(self, q, k, v, segment_ids, o, lse, do):
    attend = lambda q, k, v, lse: _causal_attend(q, k, v, segment_ids, lse)
    return residual_grads(attend, (q, k, v), o, lse, do)


def _fold(x_BTKGR_):
  """`[B, T, K, G, R, ...]` -> `[B, T, G*K*R, ...]`: copies join the heads of their group."""
  x = jnp.swapaxes(x_BTKGR_, 2, 3)
  return x.reshape(*x.shape[:2], -1, *x.shape[5:])


def _unfold(x_BTHc_, K: int, G: int):
  x = x_BTHc_.reshape(*x_BTHc_.shape[:2], G, K, -1, *x_BTHc_.shape[3:])
  return jnp.swapaxes(x, 2, 3)


def _band_layout(x_BGTAR):  # the band's [B, G, T, K-1, R] -> the model's [B, T, K-1, G, R]
  return jnp.transpose(x_BGTAR, (0, 2, 3, 1, 4))


def _band_attend(band: HiddenBand, q_h, k_h, v_h, lse_BTAGR):
  """(sum_j p_ij v_j, sum_j p_ij) over the hidden band, p = exp(s - lse)."""
  lse_BGTAR = jnp.transpose(lse_BTAGR, (0, 3, 1, 2, 4))
  p = jnp.exp(band.scores(q_h, k_h, 0) - lse_BGTAR[..., None])
  return band.outputs(p, _precise(v_h), 0), _band_layout(p.sum(-1))


def _split_fwd(kernel, spec: PHDSpec, q_BTKHDh, k_BTKGDh, v_BTKGDh, segment_ids_BT,
               positions_BT):
  B, T, K, H, Dh = q_BTKHDh.shape
  G = k_BTKGDh.shape[3]
  q = q_BTKHDh.reshape(B, T, K, G, H // G, Dh)
  o_orig, lse_orig = kernel.forward(_fold(q), k_BTKGDh[:, :, 0], v_BTKGDh[:, :, 0],
                                    segment_ids_BT)
  o, lse = _unfold(o_orig, K, G), _unfold(lse_orig, K, G)  # [B, T, K, G, R, ...]
  if K > 1:
    band = HiddenBand(spec, T, segment_ids_BT, positions_BT)
    s = band.scores(q[:, :, 1:], k_BTKGDh[:, :, 1:], 0)
    lse_band = jax.nn.logsumexp(s, axis=-1, keepdims=True)
    o_band = band.outputs(jnp.exp(s - lse_band), v_BTKGDh[:, :, 1:], 0)
    lse_band = _band_layout(lse_band[..., 0])
    lse_hidden = jnp.logaddexp(lse[:, :, 1:], lse_band)
    o_hidden = (jnp.exp(lse[:, :, 1:] - lse_hidden)[..., None] * o[:, :, 1:] +
                jnp.exp(lse_band - lse_hidden)[..., None] * o_band)
    o = jnp.concatenate([o[:, :, :1], o_hidden.astype(o.dtype)], axis=2)
    lse = jnp.concatenate([lse[:, :, :1], lse_hidden], axis=2)
  residuals = (q, k_BTKGDh, v_BTKGDh, segment_ids_BT, positions_BT, o, lse)
  return o.reshape(B, T, K, H, Dh), residuals


def _split_bwd(kernel, spec: PHDSpec, residuals, do_BTKHDh):
  q, k, v, segment_ids_BT, positions_BT, o, lse = residuals
  B, T, K, G, R, Dh = q.shape
  do = do_BTKHDh.reshape(q.shape)
  dq, dk0, dv0 = kernel.backward(_fold(q), k[:, :, 0], v[:, :, 0], segment_ids_BT,
                                 _fold(o), _fold(lse), _fold(do))
  dq = _unfold(dq, K, G)
  dk, dv = dk0[:, :, None], dv0[:, :, None]
  if K > 1:
    band = HiddenBand(spec, T, segment_ids_BT, positions_BT)
    dq_h, dk_h, dv_h = residual_grads(functools.partial(_band_attend, band),
                                      (q[:, :, 1:], k[:, :, 1:], v[:, :, 1:]),
                                      o[:, :, 1:], lse[:, :, 1:], do[:, :, 1:])
    dq = dq.at[:, :, 1:].add(dq_h)
    dk = jnp.concatenate([dk, dk_h], axis=2)
    dv = jnp.concatenate([dv, dv_h], axis=2)
  return dq.reshape(do_BTKHDh.shape), dk, dv, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _split(kernel, spec, q_BTKHDh, k_BTKGDh, v_BTKGDh, segment_ids_BT, positions_BT):
  return _split_fwd(kernel, spec, q_BTKHDh, k_BTKGDh, v_BTKGDh, segment_ids_BT,
                    positions_BT)[0]


_split.defvjp(_split_fwd, _split_bwd)


def split_attention(kernel, q_BTKHDh, k_BTKGDh, v_BTKGDh, spec: PHDSpec, segment_ids_BT=None,
                    positions_BT=None):
  """PHD attention `[B, T, K, H, Dh]`: `kernel` on the originals, the band in JAX, merged."""
  return _split(kernel, spec, q_BTKHDh, k_BTKGDh, v_BTKGDh, segment_ids_BT, positions_BT)
