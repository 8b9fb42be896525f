"""The pure cost model: training FLOPs and MFU's peak, and the inference costs of a variant.

Training FLOPs are counted the way MFU is usually defined (forward + backward = 3 x forward,
rematerialisation not counted): every copy of every token goes through every block (K x
the dense matmuls), only the final copy through the output layer, and attention costs the
(query, key) pairs the variant's mask actually allows, not a dense (K*T)^2 square. A
matmul of an `m`-vector with an `m x n` weight is 2mn FLOPs; attention 4 * H * Dh per
visible pair (scores and the weighted sum of values).

Inference, as `phd_jax.decode` runs it (forward only):
  parameters        every weight, norm scales included; held in float32 (`model.dtype`
                    is the compute dtype only).
  KV cache          K and V of every context token's original (copy 0), every layer,
                    G heads of Dh, in `model.dtype`: a vanilla model's cache, whatever K.
                    SWA/CSWA add a fixed window of hidden K/V (`window_entries`), which
                    does not grow with the context. Slot and position indices (a few
                    int32 per row) are left out.
  decode            one new token after T cached ones: K copies through every block,
                    the output layer on the last copy, and attention over the pairs the
                    rule allows that token (T originals, its own lower copies, the
                    window's hidden entries).
  prefill           a T-token prompt: every block on the T originals and on all K copies
                    of the last `hidden_tokens` tokens (`decode.hidden_prefill_tokens`:
                    1 for PHD, the window's reach for SWA, the last chunk for CSWA),
                    attention over the pairs among those rows, the output layer once.
Where the paper (PAPER.md, "Inference") counts differently: its SWA prefill runs every
prompt token's copies (`hidden_tokens = T` gives that count); its window holds the W most
recent hidden tokens, as ours does with window_unit="tokens" (W*(K-1) entries with
"positions"), and CSWA empties it at each chunk boundary, where ours keeps W entries and
masks those of earlier chunks (the bytes count the W entries, the FLOPs only the visible
pairs); its "K x the FLOPs of vanilla" is the matmuls', while here the output layer runs
once and attention costs what each copy sees. The decoder's step multiplies against every
allocated cache slot under a mask, so the FLOPs it executes exceed this count by the empty
slots' share: the count is the work the variant requires, as for training.

PLT (`masks.PLTSpec`, phd_jax/plt.py) in the same terms, with its `k` = loops: every token
runs through the blocks once per loop, the output layer once; each later loop adds the
gate's weights (`gate_weights`) and attends over loop 0's keys up to its token and its own
loop's W-token window. Its KV cache is loop 0's, a vanilla model's; the window entries
are the later loops' K/V of the W-1 tokens before the next one (its own K/V are computed
in its step), (loops-1)*(W-1) per layer; the previous token's loop outputs a decoding step
also carries ((loops-1) x D numbers per row) are left out, as the indices are. Decoding
one token runs all its loops (one batched pass, the paper's cross-loop parallelism);
prefill runs loop 0 on every prompt token and the later loops on the last `hidden_tokens`.
"""

from __future__ import annotations

import numpy as np

from phd_jax.layers import DTYPES
from phd_jax.masks import PHDSpec, PLTSpec, spec_mask, visible

# Dense bfloat16 peak FLOP/s per device (chip for TPU, GPU for GPU), matched as substrings
# of `device.device_kind`, most specific first.
PEAK_FLOPS = (
    ("TPU v6", 918e12),  # v6e (Trillium)
    ("TPU v5p", 459e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5e", 197e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
)
PARAM_BYTES = 4  # parameters stay float32 whatever the compute dtype


def peak_flops(device_kind: str) -> float | None:
  for name, flops in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return flops
  return None


def _causal_pairs(num_tokens: int) -> int:
  return num_tokens * (num_tokens + 1) // 2


def _window_pairs(window: int, first: int, last: int) -> int:
  """Pairs of a W-token window (own token included) for the queries at tokens
  [first, last) whose keys start at token 0."""
  t = np.arange(first, last)
  return int(np.minimum(t + 1, window).sum())


def attention_pairs(spec: PHDSpec | PLTSpec, num_tokens: int) -> int:
  """Visible (query, key) pairs of the variant's mask over one sequence of T tokens.

  PLT: loop 0's causal pairs, and each later loop's global (causal) and local ones.

  Row counts of the mask are taken from `spec_mask` on a short prefix; from the token
  where the sliding window is full onward, token p sees exactly what token p - P sees
  plus K*P more originals (P = the chunk length, or 1): checked on the prefix itself, then
  used to extend the count to T without building a (K*T)^2 mask.
  """
  if isinstance(spec, PLTSpec):
    local = _window_pairs(spec.window, 0, num_tokens)
    return _causal_pairs(num_tokens) + (spec.loops - 1) * (_causal_pairs(num_tokens) + local)
  period = spec.chunk or 1
  prefix = min(num_tokens, spec.window + 3 * period + 2)
  per_token = np.asarray(spec_mask(spec, prefix)).reshape(prefix, spec.k, -1).sum((1, 2))
  if prefix == num_tokens:
    return int(per_token.sum())
  step = per_token[-period:] - per_token[-2 * period:-period]
  if not np.all(step == step[0]):
    raise AssertionError(f"{spec.name}: mask rows are not periodic after {prefix} tokens")
  # token p >= prefix: per_token[r] + step * n, with p = r + n * period, r in the last period
  p = np.arange(prefix, num_tokens)
  offset = (p - (prefix - period)) // period
  base = per_token[prefix - period + (p - (prefix - period)) % period]
  return int(per_token.sum() + (base + step[0] * offset).sum())


def _block_weights(c) -> int:
  """Matmul weights of one block: q, k, v, o projections and the three SwiGLU matrices."""
  return c.d_model * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads) \
      + 3 * c.d_model * c.mlp_dim


def gate_weights(model_cfg, spec: PHDSpec | PLTSpec) -> int:
  """Matmul weights of one layer's PLT gate (0: none), which each later loop runs."""
  if not (isinstance(spec, PLTSpec) and spec.gated):
    return 0
  c = model_cfg
  return c.num_heads * (c.head_dim if spec.gate == "query" else c.d_model)


def _gate_flops(model_cfg, spec, tokens: int) -> float:
  """The gates of the later loops of `tokens` tokens, every layer."""
  later_loops = spec.loops - 1 if isinstance(spec, PLTSpec) else 0
  return 2.0 * model_cfg.num_layers * gate_weights(model_cfg, spec) * later_loops * tokens


def flops_per_sequence(model_cfg, spec: PHDSpec | PLTSpec, seq_len: int) -> float:
  """Training FLOPs (forward + backward) of one sequence of `seq_len` original tokens."""
  c = model_cfg
  matmul = 2 * (c.num_layers * _block_weights(c) * spec.k + c.d_model * c.vocab_size) * seq_len
  matmul += _gate_flops(c, spec, seq_len)
  attention = 4 * c.num_layers * c.num_heads * c.head_dim * attention_pairs(spec, seq_len)
  return 3.0 * (matmul + attention)


def parameter_count(model_cfg, spec: PHDSpec | PLTSpec | None = None) -> int:
  """Every parameter of the model (K and loops add none): embedding, blocks with their norm
  scales (and QK-norm's), final norm, output layer unless tied to the embedding; and a
  gated PLT `spec`'s gates (weights, one bias per head, "hidden": the gate's norm)."""
  c = model_cfg
  qk_norm = 0
  if c.qk_norm:  # OLMo2 scales every head's features, Qwen3 (per head) one shared Dh
    qk_norm = 2 * c.head_dim if c.qk_norm_per_head else \
        (c.num_heads + c.num_kv_heads) * c.head_dim
  block = _block_weights(c) + 2 * c.d_model + qk_norm
  if gate_weights(c, spec):
    block += gate_weights(c, spec) + c.num_heads + (c.d_model if spec.gate == "hidden" else 0)
  output = 0 if c.tie_embeddings else c.d_model * c.vocab_size
  return c.vocab_size * c.d_model + c.num_layers * block + c.d_model + output


def kv_bytes_per_token(model_cfg) -> int:
  """Cache bytes of one context token: its original's K and V, every layer."""
  c = model_cfg
  return 2 * c.num_layers * c.num_kv_heads * c.head_dim * np.dtype(DTYPES[c.dtype]).itemsize


def window_entries(spec: PHDSpec | PLTSpec) -> int:
  """K/V entries besides the originals' that the window can reach from the next token (0:
  no window): SWA/CSWA's W hidden tokens, or every hidden copy of W tokens with
  window_unit="positions"; PLT's W-1 earlier tokens of each later loop."""
  if spec.window == 0:
    return 0
  if isinstance(spec, PLTSpec):
    return (spec.loops - 1) * (spec.window - 1)
  return spec.window if spec.window_unit == "tokens" else spec.window * (spec.k - 1)


def hidden_window_bytes(model_cfg, spec: PHDSpec | PLTSpec) -> int:
  """SWA/CSWA's (PLT's) extra cache: the window's hidden (later loops') K/V, a fixed size
  whatever the context."""
  return window_entries(spec) * kv_bytes_per_token(model_cfg)


def inference_memory_bytes(model_cfg, spec: PHDSpec | PLTSpec, context: int) -> int:
  """Parameters and the KV cache of one sequence of `context` tokens."""
  return (PARAM_BYTES * parameter_count(model_cfg, spec)
          + context * kv_bytes_per_token(model_cfg)
          + hidden_window_bytes(model_cfg, spec))


def _forward_flops(c, rows: int, pairs: int) -> float:
  """A forward over `rows` copies with `pairs` visible attention pairs, every layer, and
  the output layer on one row."""
  return 2.0 * c.num_layers * (_block_weights(c) * rows + 2 * c.num_heads * c.head_dim * pairs) \
      + 2.0 * c.d_model * c.vocab_size


def decode_flops(model_cfg, spec: PHDSpec | PLTSpec, context: int) -> float:
  """Forward FLOPs of one decoding step: the K copies of the token at position `context`.

  Its queries see all `context` originals, their own token's lower copies and (SWA/CSWA)
  the earlier hidden copies in reach; the window reaches at most W tokens back in either
  unit, so the rule is evaluated on those tokens alone. PLT: the token's loops, each
  over loop 0's context + 1 keys, the later ones also over their window.
  """
  if isinstance(spec, PLTSpec):
    pairs = _causal_pairs(context + 1) - _causal_pairs(context)  # loop 0: context + 1
    pairs += (spec.loops - 1) * (pairs + _window_pairs(spec.window, context, context + 1))
    return _forward_flops(model_cfg, spec.loops, pairs) + _gate_flops(model_cfg, spec, 1)
  k, pos = spec.k, context
  same_token = k * (k + 1) // 2
  window = 0
  if spec.window:
    q_copy = np.arange(1, k)[:, None]
    k_pos = np.repeat(np.arange(max(0, pos - spec.window), pos), k - 1)[None]
    k_copy = np.tile(np.arange(1, k), k_pos.size // (k - 1))[None]
    window = int(visible(spec, pos, q_copy, k_pos, k_copy).sum())
  return _forward_flops(model_cfg, k, k * context + same_token + window)


def prefill_flops(model_cfg, spec: PHDSpec | PLTSpec, prompt_len: int,
                  hidden_tokens: int) -> float:
  """Forward FLOPs a prefill must spend: every block on the T originals and on the K-1
  hidden copies of the last `hidden_tokens` tokens (PLT: the later loops of those
  tokens), attention over the (query, key) pairs the mask allows among those rows, the
  output layer on the last token only."""
  rows = prompt_len + hidden_tokens * (spec.k - 1)
  if isinstance(spec, PLTSpec):  # a later loop's window starts at its first computed token
    first = prompt_len - hidden_tokens
    later = (_causal_pairs(prompt_len) - _causal_pairs(first)
             + _window_pairs(spec.window, 0, hidden_tokens))
    pairs = _causal_pairs(prompt_len) + (spec.loops - 1) * later
    return _forward_flops(model_cfg, rows, pairs) + _gate_flops(model_cfg, spec, hidden_tokens)
  pairs = prompt_len * (prompt_len + 1) // 2  # the originals, causal
  if spec.k > 1:  # hidden queries against the computed keys they may see, in row blocks
    first = prompt_len - hidden_tokens
    q_pos = np.repeat(np.arange(first, prompt_len), spec.k - 1)
    q_copy = np.tile(np.arange(1, spec.k), hidden_tokens)
    k_pos = np.concatenate([np.arange(prompt_len), q_pos])[None]
    k_copy = np.concatenate([np.zeros(prompt_len, int), q_copy])[None]
    for lo in range(0, len(q_pos), 512):
      pairs += int(visible(spec, q_pos[lo:lo + 512, None], q_copy[lo:lo + 512, None], k_pos,
                           k_copy).sum())
  return _forward_flops(model_cfg, rows, pairs)
