"""PLT decoding (phd_jax/plt.py): loop 0's KV cache, the later loops' windows, and one
batched forward over every loop of the newest token.

A step runs the C = loops rows of the new token t through the blocks together (the paper's
cross-loop parallelism): row 0 is loop 0 on E(t), row l loop l on a*E(t) + b*H_{l-1}(t-1),
whose H the cache carries from the step before (`Cache.loop_outputs`). In every layer each
row has the two softmaxes of the training rule (`masks.plt_visible`), over the cached parts
and the new rows: the global one over loop 0's cache and row 0's new key (a later loop sees
loop 0's key of its own token), the local one over its loop's window entries and its own
new key; a later row mixes them by its gate, row 0 keeps the global one. Row 0's K/V join
the cache, the later rows' the window (oldest out); rows 0..L-2's outputs are carried to
the next step and row L-1's give the next token's logits.

Prefill of left-padded prompts: loop 0 on every token (`forward`: the training attention,
filling the cache), then each later loop in turn on the last `hidden_tokens` tokens
(`engine.later_loop_tokens`), over loop 0's cache and its own keys among those tokens.
Loop 1 reads loop 0's output of the token before them; a loop after it reads H = 0 there
(its previous loop did not run on that token), which spoils only outputs that neither the
next token's logits nor the carried state depend on: the choice of `hidden_tokens`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from phd_jax.attention.loops import gated_mix
from phd_jax.decode.attend import attend_parts, cached_masks, key_parts
from phd_jax.decode.cache import Cache, moved, write
from phd_jax.decode.forward import forward, new_positions
from phd_jax.layers import DTYPES
from phd_jax.masks import plt_visible
from phd_jax.plt import shift_to_next_token


def _blocks(model, cache: Cache, x_BNCD, start, limit: int, positions_BN, real_BN, loop_C):
  """The blocks on rows `x` of N new tokens (row c in loop `loop_C[c]`, numpy, loop 0's
  row first if any) over the cache's first `limit` slots (those below `start` filled):
  (`[B, N, C, D]`, their K and V `[L, B, N, C, G, Dh]`). A cache with a window needs a
  row per loop (a step): each later row reads its own loop's window entries only."""
  spec = model.spec
  later = int(loop_C[0] == 0)  # the first later loop's row: only they have local keys
  global_masks = cached_masks(spec, cache.replace(window=None), start, limit, positions_BN,
                              real_BN, loop_C, lambda *a: plt_visible(spec, *a)[0])
  # Global keys are loop 0's: without its row, the new rows' part is all masked, a
  # compile-time constant that XLA would fold (slowly) on the host, so it is left out.
  global_masks = global_masks[:1 + later]
  later_loops = spec.loops - 1
  local_rule = lambda *a: plt_visible(spec, *a)[1]
  local_masks = cached_masks(spec, cache.replace(window=None), start, limit, positions_BN,
                             real_BN, loop_C[later:], local_rule)[-1:]  # the new rows'
  if cache.window is not None:
    local_masks.insert(0, _window_masks(cache.window, later_loops, positions_BN, real_BN,
                                        local_rule))
  later_C = jnp.asarray(loop_C > 0)

  def attend(layer, q, k, v, gate=None):
    parts = key_parts(layer, limit, k, v)
    o = attend_parts(q, [parts[0], parts[-1]][:1 + later], global_masks, v.dtype)
    if gate is not None:  # loop 0's rows have no local keys: they keep the global part
      B, N, _, G, Dh = k.shape
      new_rows = lambda x: x[:, :, later:].reshape(B, -1, G, Dh)
      local = [(new_rows(k), new_rows(v))]
      if layer.window_keys is not None:
        local.insert(0, (_per_loop(layer.window_keys, later_loops),
                          _per_loop(layer.window_values, later_loops)))
      o_local = attend_parts(q[:, :, later:], local, local_masks, v.dtype)
      o_local = jnp.pad(o_local, [(0, 0), (0, 0), (later, 0), (0, 0), (0, 0)])
      o = gated_mix(o, o_local, jnp.where(later_C.reshape(1, 1, -1, 1), gate, 1.0))
    return o, (k, v)

  return model.loop_states_with(attend, x_BNCD, positions_BN, cache.per_layer())


def _per_loop(x_BE, later_loops: int):
  """The window's entries as `[B, W-1, loops-1, ...]`: they are stored token-major, one per
  later loop of each token (`cache.write` adds whole tokens), so [:, i, l-1] is loop l's."""
  return x_BE.reshape(x_BE.shape[0], -1, later_loops, *x_BE.shape[2:])


def _window_masks(window, later_loops: int, positions_BN, real_BN, rule):
  """Masks `[B, N*(loops-1), W-1]` of the later rows (loop-minor) over their own loop's
  window entries (`_per_loop`), under `rule`; empty entries (position -1) are never seen,
  nor anything by padding."""
  k_pos_BMC, k_loop_BMC = (_per_loop(x, later_loops) for x in (window.positions,
                                                                 window.copies))
  to_rows = lambda x_BMC: jnp.swapaxes(x_BMC, 1, 2)[:, None]  # [B, 1, C, M]
  q_loop_C1 = jnp.arange(1, later_loops + 1)[:, None]
  allowed_BNCM = rule(positions_BN[:, :, None, None], q_loop_C1, to_rows(k_pos_BMC),
                      to_rows(k_loop_BMC))
  seen_BNCM = allowed_BNCM & to_rows(k_pos_BMC >= 0) & real_BN[:, :, None, None]
  B, N = positions_BN.shape
  return seen_BNCM.reshape(B, N * later_loops, -1)


def _embeddings(model, tokens_BN):
  return model.embed(tokens_BN, DTYPES[model.cfg.dtype])[:, :, None]  # [B, N, 1, D]


def _loop0_rows(x_LBSGDh, first: int, num_tokens: int):
  """Loop 0's cached K or V of slots [first, first+N) as row 0 `[L, B, N, 1, G, Dh]`."""
  return jax.lax.dynamic_slice_in_dim(x_LBSGDh, first, num_tokens, axis=2)[:, :, :, None]


def prefill(model, cache: Cache, tokens_BT, hidden_tokens: int):
  """Last-loop logits `[B, V]` of each prompt's last token, and the filled cache."""
  spec = model.spec
  T, cache_len = tokens_BT.shape[1], cache.cache_len
  cache = moved(cache, T)
  x_BT1D, cache = forward(model, cache, tokens_BT, 0, copies=1)  # loop 0: the KV cache
  if spec.loops > 1:
    first = T - hidden_tokens
    positions_BN, real_BN = new_positions(cache, first, hidden_tokens)
    e_BN1D = _embeddings(model, tokens_BT[:, first:])
    h_BT1D = model.loop_output(x_BT1D)  # loop 1 reads loop 0's, known at every token
    segments_BT = new_positions(cache, 0, T)[1].astype(jnp.int32)  # 0: left padding
    h_previous_BN1D = shift_to_next_token(h_BT1D, segments_BT)[:, first:]
    carried, keys, values = [h_BT1D[:, -1]], [], []
    # The window is still empty: leaving it out keeps its all-false mask from being a
    # compile-time constant that XLA would fold (slowly) on the host.
    no_window = cache.replace(window=None)
    for loop in range(1, spec.loops):
      x_BN1D, (k, v) = _blocks(model, no_window, model.loop_input(e_BN1D, h_previous_BN1D),
                               T, T, positions_BN, real_BN, np.array([loop]))
      keys.append(k)
      values.append(v)
      if loop < spec.loops - 1:
        h_BN1D = model.loop_output(x_BN1D)
        carried.append(h_BN1D[:, -1])
        h_previous_BN1D = shift_to_next_token(h_BN1D, segments_BT[:, first:])
    cache = write(cache, first,
                  jnp.concatenate([_loop0_rows(cache.keys, first, hidden_tokens), *keys], 3),
                  jnp.concatenate([_loop0_rows(cache.values, first, hidden_tokens), *values],
                                  3), positions_BN, real_BN)
    cache = cache.replace(loop_outputs=jnp.concatenate(carried, axis=1).astype(
        cache.loop_outputs.dtype))
    x_BT1D = x_BN1D  # the last loop's, of the last hidden_tokens tokens
  logits_BV = model.logits(x_BT1D[:, -1:, 0])[:, 0]
  return logits_BV, moved(cache, cache_len, cache.first_slot.min())


def step(model, cache: Cache, tokens_B):
  """Feed one token per row, all its loops in one forward: its last-loop logits `[B, V]`
  and the updated cache."""
  spec = model.spec
  start = cache.length
  positions_B1, real_B1 = new_positions(cache, start, 1)
  e_B11D = _embeddings(model, tokens_B[:, None])
  x_B1CD = jnp.concatenate([e_B11D, model.loop_input(e_B11D, cache.loop_outputs[:, None])],
                           axis=2)
  x_B1CD, (k, v) = _blocks(model, cache, x_B1CD, start, cache.cache_len, positions_B1,
                           real_B1, np.arange(spec.loops))
  cache = write(cache, start, k, v, positions_B1, real_B1)
  cache = cache.replace(loop_outputs=model.loop_output(x_B1CD[:, 0, :-1]).astype(
      cache.loop_outputs.dtype))
  return model.logits(x_B1CD[:, :, -1])[:, 0], cache
