"""The Parallel Loop Transformer (PLT, arXiv 2510.24824) forward of `PhdForCausalLM`, for
configs with `plt_num_loops` > 1: a reference over explicit masks, like the PHD forward of
`modeling_phd.py`, whose layers it runs. It keeps no KV cache.

For T tokens with embeddings E, the same layers run L = plt_num_loops times:
  loop 0     the vanilla model on E (causal attention); each layer keeps its keys and values.
  loop l>=1  input a*E(t) + b*H(t-1) (a = plt_emb_scale, b = plt_hidden_scale), H the
             output of loop l-1 after the final norm (plt_normalize_per_loop) or before it;
             a token that starts its segment (the sequence's first, or the first after
             padding) gets a*E(t). Each layer's attention mixes, per head,
               global  the query over loop 0's keys and values at tokens t' <= t
               local   the query over its own loop's at t - W < t' <= t (W = plt_window)
             as o = g * global + (1 - g) * local, g the layer's `plt_gate` (modeling_phd.py)
             of the post-RoPE query or of the layer's input; without a window o = global.
  output     the final norm of loop L-1's output: the only loop that gives logits.
Every loop runs at the tokens' own RoPE positions, and nothing is visible across segments
(`attention_mask` 0 marks padding). This file imports nothing of phd_jax.
"""

import functools

import torch


def plt_masks(window, segment_ids):
  """(global, local) boolean masks `[B, T, T]` (True = may attend) over the tokens: causal
  within a segment, and the local one only over the last `window` tokens."""
  T = segment_ids.shape[1]
  idx = torch.arange(T, device=segment_ids.device)
  behind = idx[:, None] - idx[None, :]  # query token - key token
  causal = (behind >= 0) & (segment_ids[:, :, None] == segment_ids[:, None, :])
  return causal, causal & (behind < window)


def shift_to_next_token(h, segment_ids):
  """`h [B, T, D]` one token on: token t gets h(t-1), a token starting its segment zeros."""
  shifted = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
  continues = torch.cat([torch.zeros_like(segment_ids[:, :1], dtype=torch.bool),
                         segment_ids[:, 1:] == segment_ids[:, :-1]], dim=1)
  return torch.where(continues[..., None], shifted, torch.zeros_like(shifted))


def _first_loop_attention(attention, causal, kept, q, k, v):
  """Loop 0: causal attention; the layer's keys and values go to the later loops."""
  kept.append((k, v))
  return attention.attend(q, k, v, causal)


def _later_loop_attention(attention, loop0_kv, layer_input, masks, q, k, v):
  """Loop l >= 1: the global part over loop 0's keys and values, gated with the local part
  over the loop's own (module docstring)."""
  (k0, v0), (global_mask, local_mask) = loop0_kv, masks
  o = attention.attend(q, k0, v0, global_mask)
  if not hasattr(attention, "plt_gate"):  # no window: the global part alone
    return o
  g = attention.plt_gate(q, layer_input)[..., None]
  return (g * o + (1 - g) * attention.attend(q, k, v, local_mask)).to(o.dtype)


def plt_hidden_states(model, input_ids, segment_ids, positions):
  """Final-normed hidden states `[B, T, D]` of the last loop of `model` (a PhdModel)."""
  config = model.config
  masks = plt_masks(config.plt_window, segment_ids)
  e = model.embed_tokens(input_ids)
  loop0_kv = []
  x = e
  for layer in model.layers:
    x = layer(x, positions, functools.partial(_first_loop_attention, layer.self_attn,
                                              masks[0], loop0_kv))
  for _ in range(1, config.plt_num_loops):
    h = model.norm(x) if config.plt_normalize_per_loop else x
    x = config.plt_emb_scale * e + config.plt_hidden_scale * shift_to_next_token(h, segment_ids)
    for layer, kv in zip(model.layers, loop0_kv):
      x = layer(x, positions, functools.partial(_later_loop_attention, layer.self_attn, kv, x,
                                                masks))
  return model.norm(x)
