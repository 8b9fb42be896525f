"""The model-FLOP count of a training step and the peak FLOP/s of devices: MFU's inputs.

FLOPs are counted analytically the way MFU is usually defined (forward + backward =
3 x forward, rematerialisation not counted): every copy of every token goes through every
block (K x the dense matmuls), only the final copy through the output layer, and
attention costs the (query, key) pairs the variant's mask actually allows, not a dense
(K*T)^2 square.
"""

from __future__ import annotations

import numpy as np

from phd_jax.masks import PHDSpec, spec_mask

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


def peak_flops(device_kind: str) -> float | None:
  for name, flops in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return flops
  return None


def attention_pairs(spec: PHDSpec, num_tokens: int) -> int:
  """Visible (query, key) pairs of the variant's mask over one sequence of T tokens.

  Row counts of the mask are taken from `spec_mask` on a short prefix; from the token
  where the sliding window is full onward, token p sees exactly what token p - P sees
  plus K*P more originals (P = the chunk length, or 1): checked on the prefix itself, then
  used to extend the count to T without building a (K*T)^2 mask.
  """
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


def flops_per_sequence(model_cfg, spec: PHDSpec, seq_len: int) -> float:
  """Training FLOPs (forward + backward) of one sequence of `seq_len` original tokens."""
  c = model_cfg
  attn_params = c.d_model * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
  block_params = attn_params + 3 * c.d_model * c.mlp_dim
  matmul = 2 * (c.num_layers * block_params * spec.k + c.d_model * c.vocab_size) * seq_len
  attention = 4 * c.num_layers * c.num_heads * c.head_dim * attention_pairs(spec, seq_len)
  return 3.0 * (matmul + attention)
