"""Where training metrics go: TensorBoard (scalars and the run's hyperparameters),
`metrics.jsonl` and a console progress line with throughput, MFU and ETA (process 0 only).
The FLOP model behind MFU is `phd_jax.flops`.
"""

from __future__ import annotations

import json
import math
import sys
import time

import jax
from etils import epath

from phd_jax.flops import flops_per_sequence, peak_flops


class Writer:
  """Scalars to TensorBoard and `metrics.jsonl` in the workdir, and to `tracker` if given
  (`phd_jax.tracking.open_wandb`); silent off process 0. As a context, it closes on exit
  and tells the tracker whether an exception ended the run.

  The workdir may be local or remote (gs://). Object stores cannot append, so there the
  JSONL file is rewritten whole at each write (a few hundred KB for a long run).
  """

  def __init__(self, workdir: str, enabled: bool = True, tracker=None):
    self.enabled = enabled
    self._tracker = tracker
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
    if self._tracker is not None:
      self._tracker.write(step, scalars, prefix)

  def write_hparams(self, fields: dict) -> None:
    """The run's flattened config ({"optim.lr": 4e-4, ...}) as TensorBoard hyperparameters
    (HPARAMS tab: one row per run, beside its train/loss and eval/loss) and as a text table
    (TEXT tab)."""
    if not self.enabled:
      return
    from tensorboardX.summary import hparams
    values = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
              for k, v in fields.items()}
    for summary in hparams(values, {"train/loss": None, "eval/loss": None}):
      self._tb.file_writer.add_summary(summary)
    table = "\n".join(f"| {k} | {v} |" for k, v in sorted(values.items()))
    self._tb.add_text("config", "| field | value |\n|---|---|\n" + table)

  def close(self, failed: bool = False) -> None:
    if self.enabled:
      self._tb.close()
    if self._tracker is not None:
      self._tracker.close(failed)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    self.close(failed=exc_type is not None)


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
