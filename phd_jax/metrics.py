"""Model FLOPs and MFU, and where training metrics go: TensorBoard, `metrics.jsonl` and a
console progress line with ETA (process 0 only).

FLOPs are counted analytically the way MFU is usually defined (forward + backward =
3 x forward, rematerialisation not counted): every copy of every token goes through every
block (K x the dense matmuls), only the final copy through the output layer, and
attention costs the (query, key) pairs the variant's mask actually allows, not a dense
(K*T)^2 square.
"""

from __future__ import annotations

import json
import math
import sys
import time

import jax
import numpy as np
from etils import epath

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


class Writer:
  """Scalars to TensorBoard and `metrics.jsonl` in the workdir; silent off process 0.

  The workdir may be local or remote (gs://). Object stores cannot append, so there the
  JSONL file is rewritten whole at each write (a few hundred KB for a long run).
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    if enabled:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(logdir=workdir)
      self._path = epath.Path(workdir) / "metrics.jsonl"
      self._path.parent.mkdir(parents=True, exist_ok=True)
      if not self._path.exists():
        self._path.write_text("")
      self._remote = "://" in workdir
      self._lines = self._path.read_text() if self._remote else ""

  def write(self, step: int, scalars: dict, prefix: str = "train") -> None:
    if not self.enabled:
      return
    for name, value in scalars.items():
      if value is not None:
        self._tb.add_scalar(f"{prefix}/{name}", value, step)
    line = json.dumps({"step": step, **_prefixed(scalars, prefix)}) + "\n"
    if self._remote:
      self._lines += line
      self._path.write_text(self._lines)
    else:
      with open(self._path, "a") as f:
        f.write(line)

  def close(self) -> None:
    if self.enabled:
      self._tb.close()


def _prefixed(scalars, prefix):
  return scalars if prefix == "train" else {f"{prefix}_{k}": v for k, v in scalars.items()}


class Progress:
  """Step-time bookkeeping between logs, throughput/MFU and a console line with ETA."""

  def __init__(self, config, model_cfg, spec, start_step: int, enabled: bool = True):
    self.enabled = enabled
    self.num_steps = config.num_steps
    self.tokens_per_step = config.batch_size * config.seq_len
    self.k = spec.k
    self.flops_per_step = config.batch_size * flops_per_sequence(model_cfg, spec,
                                                                config.seq_len)
    devices = jax.devices()
    peak = peak_flops(devices[0].device_kind)
    self.peak_total = peak * len(devices) if peak else None
    self._mark(start_step)

  def _mark(self, step):
    self._step, self._time = step, time.perf_counter()

  def restart_clock(self, step: int) -> None:
    """Exclude pauses (compilation, evaluation, checkpoint saves) from step times."""
    self._mark(step)

  def measure(self, step: int) -> dict:
    """Throughput over the steps since the last call."""
    now = time.perf_counter()
    step_time = (now - self._time) / max(step - self._step, 1)
    self._mark(step)
    flops_per_s = self.flops_per_step / step_time
    return {
        "step_time": step_time,
        "tokens_per_s": self.tokens_per_step / step_time,
        "copies_per_s": self.k * self.tokens_per_step / step_time,
        "model_flops_per_step": self.flops_per_step,
        "flops_per_s": flops_per_s,
        "mfu": flops_per_s / self.peak_total if self.peak_total else None,
    }

  def print(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    eta = (self.num_steps - step) * scalars["step_time"]
    mfu = f" mfu {scalars['mfu']:.1%}" if scalars.get("mfu") is not None else ""
    print(f"step {step:>{len(str(self.num_steps))}}/{self.num_steps} "
          f"[{_bar(step / self.num_steps)}] loss {scalars['loss']:.4f} "
          f"ppl {scalars['perplexity']:.2f} |g| {scalars['grad_norm']:.3f} "
          f"lr {scalars['lr']:.2e} {scalars['step_time'] * 1e3:.0f} ms/step "
          f"{scalars['tokens_per_s']:,.0f} tok/s {_si(scalars['flops_per_s'])}FLOP/s{mfu} "
          f"eta {_duration(eta)}", flush=True, file=sys.stdout)


def _bar(fraction: float, width: int = 20) -> str:
  filled = int(round(min(max(fraction, 0.0), 1.0) * width))
  return "#" * filled + "." * (width - filled)


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  h, rest = divmod(seconds, 3600)
  return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def _si(value: float) -> str:
  exponent = min(int(math.log10(max(value, 1.0)) // 3), 5)
  return f"{value / 10 ** (3 * exponent):.2f} " + " kMGTP"[exponent].strip()
