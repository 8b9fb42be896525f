"""An independent decoder in NumPy (float64) over a model's raw arrays: the vanilla OLMo2
transformer, and the PLT loops around it written from the paper's and the release's
description (phd_jax/plt.py), one explicit loop over layers and loops, no shared code."""

import jax
import numpy as np
from flax import nnx

from phd_jax.masks import PLTSpec
from phd_jax.model import unstack_layers


def reference_logits(model, toks, segment_ids=None):
  """Logits `[B, T, V]` of a Vanilla or PLT `model` on token ids `toks` `[B, T]`;
  `segment_ids` packs documents (in-document positions follow from them)."""
  cfg, spec = model.cfg, model.spec
  plt = isinstance(spec, PLTSpec)
  loops = spec.loops if plt else 1
  params = nnx.state(model, nnx.Param)
  if cfg.scan_layers:
    params = unstack_layers(params)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(params))

  toks = np.asarray(toks)
  B, T = toks.shape
  seg = np.ones((B, T), int) if segment_ids is None else np.asarray(segment_ids)
  pos = np.zeros((B, T))
  for b in range(B):
    for t in range(1, T):
      pos[b, t] = pos[b, t - 1] + 1 if seg[b, t] == seg[b, t - 1] else 0
  delta = np.arange(T)[:, None] - np.arange(T)[None, :]  # query token - key token
  same_doc = seg[:, :, None] == seg[:, None, :]
  causal = (delta >= 0) & same_doc  # [B, T, T]
  window = causal & (delta < (spec.window if plt else 0))
  group = cfg.num_heads // cfg.num_kv_heads

  def rms(x, scale, axes):
    return x / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + cfg.norm_eps) * scale

  def rot(x):  # x [B, T, N, Dh] at the in-document positions
    half = cfg.head_dim // 2
    freq = cfg.rope_theta ** (-np.arange(half) * 2.0 / cfg.head_dim)
    ang = pos[:, :, None, None] * freq
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang),
                           x2 * np.cos(ang) + x1 * np.sin(ang)], -1)

  def softmax_attend(q, k, v, mask):  # q [B,T,H,Dh], k v [B,T,G,Dh] -> [B,T,H,Dh]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    s = np.einsum("bqhe,bshe->bhqs", q, k) / np.sqrt(cfg.head_dim)
    s = np.where(mask[:, None], s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhqs,bshe->bqhe", w / w.sum(-1, keepdims=True), v)

  def block(blk, x, loop, loop0_kv):
    """(block output, its attention's keys and values)."""
    a = blk["attn"]

    def attn(h):
      q = np.einsum("btd,dhe->bthe", h, a["wq"])
      k = np.einsum("btd,dhe->bthe", h, a["wk"])
      v = np.einsum("btd,dhe->bthe", h, a["wv"])
      qk_axes = (-1,) if cfg.qk_norm_per_head else (-2, -1)  # Qwen3 or OLMo2
      q = rot(rms(q, a["q_norm"]["scale"], qk_axes))
      k = rot(rms(k, a["k_norm"]["scale"], qk_axes))
      if loop == 0:
        o = softmax_attend(q, k, v, causal)
      else:  # later loop: loop 0's keys up to the token, gated with the own loop's window
        o = softmax_attend(q, *loop0_kv, causal)
        if spec.window:
          gate = a["gate"]
          if spec.gate == "query":
            logit = np.einsum("bthe,he->bth", q, gate["weight"])
          else:  # from the block input x
            logit = rms(x, gate["norm"]["scale"], -1) @ gate["weight"]
          g = 1 / (1 + np.exp(-(logit + gate["bias"])))
          o = g[..., None] * o + (1 - g[..., None]) * softmax_attend(q, k, v, window)
      return np.einsum("bqhe,hed->bqd", o, a["wo"]), (k, v)

    def mlp(h):
      gt = h @ blk["mlp"]["gate"]
      return (gt / (1 + np.exp(-gt)) * (h @ blk["mlp"]["up"])) @ blk["mlp"]["down"]

    an, mn = blk["attn_norm"]["scale"], blk["mlp_norm"]["scale"]
    if cfg.norm_style == "reordered":
      out, kv = attn(x)
      x = x + rms(out, an, -1)
      return x + rms(mlp(x), mn, -1), kv
    out, kv = attn(rms(x, an, -1))
    x = x + out
    return x + mlp(rms(x, mn, -1)), kv

  embeddings = p["embed"]["table"][toks]
  final_scale = p["final_norm"]["scale"]
  blocks = [p["blocks"][key] for key in sorted(p["blocks"], key=int)]
  x, loop0_kvs = embeddings, None
  for loop in range(loops):
    if loop:
      h = rms(x, final_scale, -1) if spec.norm_per_loop else x
      previous = np.zeros_like(h)
      for b in range(B):
        for t in range(1, T):
          if seg[b, t] == seg[b, t - 1]:  # a document's first token has no previous token
            previous[b, t] = h[b, t - 1]
      x = spec.emb_scale * embeddings + spec.hidden_scale * previous
    kvs = []
    for i, blk in enumerate(blocks):
      x, kv = block(blk, x, loop, loop0_kvs[i] if loop else None)
      kvs.append(kv)
    if loop == 0:
      loop0_kvs = kvs
  return rms(x, final_scale, -1) @ p["lm_head"]
