"""Put training runs side by side: a markdown table and held-out loss curves.

  python -m phd_jax.compare DIR [DIR ...] [--output_dir=OUT] [--name=comparison]
      [--baseline=Vanilla]

Each DIR is a run's workdir or any folder above runs (a sweep's workdir): every folder
holding a `metrics.jsonl`, `config.json` or `sweep_status.json` is a run. Runs are grouped
by variant: the sweep's variant spec (`sweep_status.json`), else the parent folder of
`seed<N>` folders, else the config's `phd.variant`. Everything reported comes from the runs'
files: `metrics.jsonl` (held-out loss and bits per byte at each evaluation, step times,
model FLOPs per step), `sweep_status.json` (failed or done, wall time), `chase.json`
(pointer-chasing answer accuracy) and `eval_step<N>.json` (`phd_jax.evaluate`'s
zero-shot tasks).

Writes `OUT/<name>.md` (per-variant mean ± standard error over the complete runs, Δ against
the baseline paired by seed, and one line per run with its state) and the plots
`OUT/<name>_loss_vs_tokens.png` and `OUT/<name>_loss_vs_flops.png`. A run that failed or
stopped early is listed as such and drawn dashed, never averaged in.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import re

import numpy as np

from phd_jax import data
from phd_jax.masks import parse_variant

RUN_FILES = ("metrics.jsonl", "config.json", "sweep_status.json")
HELDOUT_KEYS = ("eval_loss", "eval_perplexity", "eval_bits_per_byte")


@dataclasses.dataclass
class RunResult:
  path: str
  label: str  # the variant group
  seed: int | None
  state: str  # complete | incomplete | failed | empty
  target_steps: int | None
  steps: int  # last step logged
  tokens_per_step: int | None
  flops_per_step: float | None
  evals: list  # [(step, eval_loss, bits_per_byte or None)]
  train_time_s: float  # sum of measured step times (no compile, eval, checkpoint)
  wall_s: float | None
  tasks: dict  # zero-shot task -> reported metric at the last evaluation
  chase: dict | None

  @property
  def final_loss(self):
    return self.evals[-1][1] if self.evals else None

  @property
  def best_loss(self):
    return min(e[1] for e in self.evals) if self.evals else None

  @property
  def final_bpb(self):
    return self.evals[-1][2] if self.evals else None


def find_runs(paths) -> list[str]:
  """Every run folder under (or equal to) the given paths, sorted."""
  found = set()
  for path in paths:
    if not os.path.isdir(path):
      raise ValueError(f"no such directory: {path}")
    for root, dirs, files in os.walk(path):
      if any(f in files for f in RUN_FILES):
        found.add(os.path.normpath(root))
        dirs[:] = []  # checkpoints and profiles below a run are not runs
      else:
        dirs.sort()
  return sorted(found)


def _read_json(path):
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def _read_metrics(path) -> list[dict]:
  if not os.path.isfile(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          break  # a line cut short by a killed run: keep what came before
  return rows


def _label(path, config, status) -> str:
  if status and status.get("variant"):
    return status["variant"]
  if re.fullmatch(r"seed\d+", os.path.basename(path)):
    return os.path.basename(os.path.dirname(path))
  return (config or {}).get("phd", {}).get("variant") or os.path.basename(path)


def _task_results(path, last_eval: dict) -> dict:
  """Zero-shot results: the newest `eval_step<N>.json`, else the in-loop ones."""
  reports = glob.glob(os.path.join(path, "eval_step*.json"))
  if reports:
    newest = max(reports, key=lambda p: int(re.search(r"(\d+)\.json$", p).group(1)))
    results = (_read_json(newest) or {}).get("results", {})
    return {name: r[r["metric"]] for name, r in results.items()
            if isinstance(r, dict) and "metric" in r}
  return {k.removeprefix("eval_"): v for k, v in last_eval.items()
          if k.startswith("eval_") and k not in HELDOUT_KEYS and v is not None}


def read_run(path) -> RunResult:
  config = _read_json(os.path.join(path, "config.json"))
  status = _read_json(os.path.join(path, "sweep_status.json"))
  rows = _read_metrics(os.path.join(path, "metrics.jsonl"))
  evals, train_time, last_step, flops_per_step, last_eval = {}, 0.0, 0, None, {}
  previous = 0
  for row in rows:
    step = row["step"]
    if "eval_loss" in row:  # a resumed run may evaluate a step again: the last one counts
      evals[step] = (step, row["eval_loss"], row.get("eval_bits_per_byte"))
      last_eval = row
    if "step_time" in row:  # steps redone after a resume are not counted twice
      train_time += row["step_time"] * max(step - previous, 0)
      previous = max(previous, step)
      flops_per_step = row.get("model_flops_per_step", flops_per_step)
    last_step = max(last_step, step)
  target = config.get("num_steps") if config else None
  if status and status.get("status") == "failed":
    state = "failed"
  elif not rows:
    state = "empty"
  elif target is not None and last_step >= target and (
      not config.get("eval_every") or target in evals):
    state = "complete"
  else:
    state = "incomplete"
  if config and config.get("data", {}).get("source") in data.TOKEN_SOURCES:
    evals = {s: (s, loss, None) for s, (_, loss, _) in evals.items()}  # no text, no bytes
  seed = config.get("seed") if config else (status or {}).get("seed")
  return RunResult(
      path=path, label=_label(path, config, status), seed=seed, state=state,
      target_steps=target, steps=last_step,
      tokens_per_step=config["batch_size"] * config["seq_len"] if config else None,
      flops_per_step=flops_per_step, evals=sorted(evals.values()), train_time_s=train_time,
      wall_s=(status or {}).get("wall_s"), tasks=_task_results(path, last_eval),
      chase=_read_json(os.path.join(path, "chase.json")))


def mean_se(values) -> tuple[float, float | None]:
  """Mean and standard error (sample std / sqrt(n); None for one value)."""
  values = np.asarray(values, dtype=np.float64)
  if len(values) < 2:
    return float(values.mean()), None
  return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def _fmt(mean, se=None, digits=4, signed=False):
  if mean is None:
    return "–"
  text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
  return text + (f" ± {se:.{digits}f}" if se is not None else "")


def _si(value):
  if value is None:
    return "–"
  exponent = min(int(math.log10(max(value, 1.0)) // 3), 6)
  return f"{value / 10 ** (3 * exponent):.3g}" + " kMGTPE"[exponent].strip()


def _k(label) -> int:
  try:
    return parse_variant(label.split("@")[0]).k
  except ValueError:
    return 0


def group(runs, baseline) -> dict:
  """label -> runs, the baseline first, then by K and name."""
  labels = sorted({r.label for r in runs}, key=lambda l: (l != baseline, _k(l), l))
  return {label: [r for r in runs if r.label == label] for label in labels}


def _paired_delta(runs, base_runs, value):
  """Mean ± se over seeds of value(run) - value(baseline run of the same seed)."""
  base = {r.seed: value(r) for r in base_runs if r.state == "complete"}
  deltas = [value(r) - base[r.seed] for r in runs
            if r.state == "complete" and r.seed in base and value(r) is not None]
  return mean_se(deltas) + (len(deltas),) if deltas else (None, None, 0)


def summary_table(groups, baseline) -> list[str]:
  base_runs = groups.get(baseline, [])
  tasks = sorted({t for runs in groups.values() for r in runs for t in r.tasks})
  has_bpb = any(r.final_bpb is not None for runs in groups.values() for r in runs)
  has_chase = any(r.chase for runs in groups.values() for r in runs)
  head = ["variant", "K", "complete runs", "original tokens", "train FLOPs",
          "final held-out loss", "best held-out loss", f"Δ final vs {baseline} (paired)"]
  head += ["bits per byte"] if has_bpb else []
  head += ["answer accuracy", "answer loss"] if has_chase else []
  head += tasks + ["train time (s)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for label, runs in groups.items():
    done = [r for r in runs if r.state == "complete"]
    row = [label, str(_k(label)), f"{len(done)}/{len(runs)}"]
    if not done:
      lines.append("| " + " | ".join(row + ["–"] * (len(head) - 3)) + " |")
      continue
    row += [_si(done[0].steps * done[0].tokens_per_step),
            _si(done[0].steps * done[0].flops_per_step if done[0].flops_per_step else None),
            _fmt(*mean_se([r.final_loss for r in done])),
            _fmt(*mean_se([r.best_loss for r in done]))]
    if label == baseline:
      row.append("0")
    else:
      mean, se, n = _paired_delta(done, base_runs, lambda r: r.final_loss)
      row.append(_fmt(mean, se, signed=True) + (f" (n={n})" if n else ""))
    if has_bpb:
      bpb = [r.final_bpb for r in done if r.final_bpb is not None]
      row.append(_fmt(*mean_se(bpb)) if bpb else "–")
    if has_chase:
      chase = [r.chase for r in done if r.chase]
      row += ([_fmt(*mean_se([c["accuracy"] for c in chase]), digits=3),
               _fmt(*mean_se([c["answer_loss"] for c in chase]))] if chase else ["–", "–"])
    for task in tasks:
      values = [r.tasks[task] for r in done if task in r.tasks]
      row.append(_fmt(*mean_se(values), digits=3) if values else "–")
    row.append(_fmt(*mean_se([r.train_time_s for r in done]), digits=0))
    lines.append("| " + " | ".join(row) + " |")
  return lines


def runs_table(runs) -> list[str]:
  lines = ["| run | variant | seed | state | steps | held-out loss at each evaluation | "
           "wall (s) |", "|---|---|---|---|---|---|---|"]
  for r in runs:
    curve = ", ".join(f"{s}: {loss:.4f}" for s, loss, _ in r.evals) or "–"
    steps = f"{r.steps}/{r.target_steps}" if r.target_steps else str(r.steps)
    lines.append(f"| {r.path} | {r.label} | {r.seed} | {r.state} | {steps} | {curve} | "
                 f"{_fmt(r.wall_s, digits=0)} |")
  return lines


def plot(groups, path, x_of, xlabel, title) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  colors = plt.get_cmap("tab10")
  for i, (label, runs) in enumerate(groups.items()):
    for j, r in enumerate(runs):
      if not r.evals:
        continue
      xs = [x_of(r, step) for step, _, _ in r.evals]
      ys = [loss for _, loss, _ in r.evals]
      ax.plot(xs, ys, marker="o", markersize=3, color=colors(i % 10),
              linestyle="-" if r.state == "complete" else "--",
              label=label if j == 0 else None)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("held-out loss (nats per token)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_report(paths, output_dir, name="comparison", baseline="Vanilla") -> list[str]:
  """Read every run under `paths`; write the markdown and the two plots; return their paths."""
  runs = [read_run(p) for p in find_runs(paths)]
  if not runs:
    raise ValueError(f"no runs (folders with {', '.join(RUN_FILES)}) under {list(paths)}")
  groups = group(runs, baseline)
  os.makedirs(output_dir, exist_ok=True)
  md = os.path.join(output_dir, f"{name}.md")
  text = ["# Comparison", "",
          "Mean ± standard error over the complete runs of each variant (seeds); Δ is paired "
          "by seed against the baseline. Loss: nats per token on the held-out split at the "
          "last evaluation; train time: summed step times, excluding compilation, "
          "evaluation and checkpoints.", ""]
  text += summary_table(groups, baseline) + ["", "## Runs", ""] + runs_table(runs) + [""]
  with open(md, "w") as f:
    f.write("\n".join(text))
  tokens_png = os.path.join(output_dir, f"{name}_loss_vs_tokens.png")
  flops_png = os.path.join(output_dir, f"{name}_loss_vs_flops.png")
  plot(groups, tokens_png, lambda r, step: step * (r.tokens_per_step or 0),
       "original tokens seen", "Held-out loss against training tokens")
  plot(groups, flops_png, lambda r, step: step * (r.flops_per_step or 0),
       "training FLOPs (model, forward + backward)", "Held-out loss against training compute")
  return [md, tokens_png, flops_png]


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog="python -m phd_jax.compare", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("dirs", nargs="+", help="run workdirs or folders above them")
  p.add_argument("--output_dir", help="where the report goes (default: the first DIR)")
  p.add_argument("--name", default="comparison", help="file name stem of the report")
  p.add_argument("--baseline", default="Vanilla", help="variant the Δ column is against")
  args = p.parse_args(argv)
  try:
    paths = write_report(args.dirs, args.output_dir or args.dirs[0], args.name, args.baseline)
  except ValueError as e:
    p.error(str(e))
  with open(paths[0]) as f:
    print(f.read(), end="")
  print("written:", *paths)


if __name__ == "__main__":
  main()
