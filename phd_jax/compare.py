"""Put training runs side by side: markdown tables and held-out loss plots.

  python -m phd_jax.compare DIR [DIR ...] [--output_dir=OUT] [--name=comparison]
      [--baseline=Vanilla] [--x=tokens,train_flops,setting:NAME] [--context=2048]

Each DIR is a run's workdir or any folder above runs (a sweep's workdir): every folder
holding a `metrics.jsonl`, `config.json` or `sweep_status.json` is a run (links followed:
a run reached twice, by a link or through two DIRs, counts once). Runs are grouped
by variant: the sweep's variant spec (`sweep_status.json`, e.g. `PHD-2@num_steps=800`),
else the parent folder of `seed<N>` folders, else the config's `phd.variant`. Everything
reported comes from the runs' files: `metrics.jsonl` (held-out loss and bits per byte at
each evaluation, step times, model FLOPs per step), `config.json` (the model, for the
inference costs of `phd_jax.flops`), `sweep_status.json` (failed or done, wall time),
`chase.json` (pointer-chasing answer accuracy), `eval/results.jsonl` (the evaluator job,
`phd_jax.evaluate --follow`: held-out loss and zero-shot tasks at each checkpoint, joined
with the training loop's evaluations by step) and `eval_step<N>.json`
(`phd_jax.evaluate`'s zero-shot tasks); the runs table says which each run's come from.
A run with an evaluator counts as complete once its final step is evaluated.

Writes `OUT/<name>.md`: per-variant mean ± standard error over the complete runs, Δ
against the baseline paired by seed (a variant with `@settings` is paired with the
baseline of the same settings when there is one, so budgets compare like with like), the
inference cost of each variant at `--context` tokens, and one line per run with its
state. And one plot per `--x` axis, `OUT/<name>_loss_vs_<axis>.png`: held-out loss
against original tokens (`tokens`) or training FLOPs (`train_flops`) along each run, or
each variant's final loss against its decode FLOPs per token (`decode_flops`) or its
inference memory (`inference_memory`: parameters + KV cache), or each variant's final loss
against the value of a swept setting (`setting:NAME` reads `@NAME=VALUE` in the labels,
`OUT/<name>_loss_vs_NAME.png`, one line per variant: e.g. the loss at each training budget
of `configs/epochs.py`, which the curves of separate runs do not show); and when runs evaluated
zero-shot tasks, `OUT/<name>_tasks_vs_tokens.png`, each task's metric along each run. A
run that failed or stopped early is listed as such and drawn dashed (hollow), never
averaged in.

A run whose files cannot be read (a cut `config.json`, an empty `sweep_status.json`) is
named with the reason, on stderr and in the report, and left out; the rest is reported,
and the exit status is 1 so that a script notices the report is not whole.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys

from phd_jax import plots
from phd_jax.masks import parse_variant
from phd_jax.run_results import RUN_FILES, read_runs
from phd_jax.stats import mean_se

AXES = (*plots.CURVE_AXES, *plots.COST_AXES)



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


def _natural(label) -> list:
  """Sort key reading the numbers in a label as numbers (`num_steps=800` before `=1200`)."""
  return [(0, int(part), "") if part.isdigit() else (1, 0, part)
          for part in re.split(r"(\d+)", label) if part]


def group(runs, baseline) -> dict:
  """label -> runs, the baseline first, then by K and name."""
  labels = sorted({r.label for r in runs},
                  key=lambda l: (l != baseline, _k(l), _natural(l)))
  return {label: [r for r in runs if r.label == label] for label in labels}


def baseline_of(label, baseline, labels) -> str:
  """What `label` is compared with: the baseline with the same `@settings` when there is
  one (`PHD-2@num_steps=800` against `Vanilla@num_steps=800`), else the baseline."""
  variant, at, settings = label.partition("@")
  matched = f"{baseline}@{settings}"
  return matched if at and matched in labels and variant != baseline else baseline


def _paired_delta(runs, base_runs, value):
  """Mean ± se over seeds of value(run) - value(baseline run of the same seed)."""
  base = {r.seed: value(r) for r in base_runs if r.state == "complete"}
  deltas = [value(r) - base[r.seed] for r in runs
            if r.state == "complete" and r.seed in base and value(r) is not None]
  return mean_se(deltas) + (len(deltas),) if deltas else (None, None, 0)


def summary_table(groups, baseline) -> list[str]:
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
    against = baseline_of(label, baseline, groups)
    if label == against:
      row.append("0")
    else:
      mean, se, n = _paired_delta(done, groups.get(against, []), lambda r: r.final_loss)
      note = ", ".join(([f"n={n}"] if n else []) + ([f"vs {against}"] if against != baseline
                                                     else []))
      row.append(_fmt(mean, se, signed=True) + (f" ({note})" if note else ""))
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
           "evaluations from | wall (s) |", "|---|---|---|---|---|---|---|---|"]
  for r in runs:
    curve = ", ".join(f"{s}: {loss:.4f}" for s, loss, _ in r.evals) or "–"
    steps = f"{r.steps}/{r.target_steps}" if r.target_steps else str(r.steps)
    lines.append(f"| {r.path} | {r.label} | {r.seed} | {r.state} | {steps} | {curve} | "
                 f"{r.sources or '–'} | {_fmt(r.wall_s, digits=0)} |")
  return lines


def _bytes(value):
  return "–" if value is None else _si(value) + "B"


def cost_table(groups, context) -> list[str]:
  """Per variant, the inference costs of its model (the first run with a readable config),
  and a line for each run whose config gave none."""
  head = ["variant", "K", "parameters", "KV cache per context token",
          "hidden window (fixed)", f"decode FLOPs per token at {context}",
          f"prefill FLOPs of {context} tokens", f"inference memory at {context}"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  notes = []
  for label, runs in groups.items():
    costs = next((r.inference for r in runs if isinstance(r.inference, dict)), None)
    notes += [f"- {r.path}: {r.inference}" for r in runs if isinstance(r.inference, str)]
    cells = ["–"] * (len(head) - 2) if costs is None else [
        _si(costs["parameters"]), _bytes(costs["kv_bytes_per_token"]),
        _bytes(costs["hidden_window_bytes"]), _si(costs["decode_flops"]),
        _si(costs["prefill_flops"]), _bytes(costs["inference_memory"])]
    lines.append("| " + " | ".join([label, str(_k(label))] + cells) + " |")
  return lines + (["", "No inference cost for:"] + notes if notes else [])


def write_report(paths, output_dir, name="comparison", baseline="Vanilla",
                 axes=("tokens", "train_flops"), context=2048):
  """Read every run under `paths`; write the markdown and one plot per axis.

  Returns (the written paths, (path, reason) of each damaged run, left out).
  """
  runs, damaged = read_runs(paths, context)
  if damaged and not runs:
    raise ValueError(f"no readable runs under {list(paths)}: " +
                     "; ".join(f"{path}: {reason}" for path, reason in damaged))
  if not runs:
    raise ValueError(f"no runs (folders with {', '.join(RUN_FILES)}) under {list(paths)}")
  groups = group(runs, baseline)
  os.makedirs(output_dir, exist_ok=True)
  md = os.path.join(output_dir, f"{name}.md")
  text = ["# Comparison", "",
          "Mean ± standard error over the complete runs of each variant (seeds); Δ is paired "
          "by seed against the baseline (with the same @settings when there is one). Loss: "
          "nats per token on the held-out split at the last evaluation; tasks: the metric "
          "the paper reports, at the newest evaluation of them; train time: summed "
          "step times, excluding compilation, evaluation and checkpoints.", ""]
  text += summary_table(groups, baseline)
  text += ["", "## Inference cost", "",
           f"Per variant, from its config (`phd_jax.flops`): decoding one token after {context} "
           f"cached ones, prefilling a {context}-token prompt, and memory for the parameters "
           f"(float32) and a KV cache of {context} tokens in the model's dtype (one "
           "sequence); B = bytes, k/M/G = 10^3/10^6/10^9.", ""]
  text += cost_table(groups, context)
  if damaged:
    text += ["", "## Damaged runs (left out)", ""]
    text += [f"- {path}: {reason}" for path, reason in damaged]
  text += ["", "## Runs", ""] + runs_table(runs) + [""]

  def write_md(tmp):
    with open(tmp, "w") as f:
      f.write("\n".join(text))
  plots.atomic_file(md, write_md)
  written = [md]
  for axis in axes:
    png = os.path.join(output_dir, f"{name}_loss_vs_{axis.removeprefix(plots.SETTING_AXIS)}.png")
    if axis in plots.CURVE_AXES:
      plots.plot_curves(groups, png, axis)
    elif axis in plots.COST_AXES:
      plots.plot_costs(groups, png, axis, context)
    else:
      plots.plot_setting(groups, png, axis.removeprefix(plots.SETTING_AXIS))
    written.append(png)
  if any(r.task_curves for r in runs):
    png = os.path.join(output_dir, f"{name}_tasks_vs_tokens.png")
    plots.plot_task_curves(groups, png)
    written.append(png)
  return written, damaged


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m phd_jax.compare", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("dirs", nargs="+", help="run workdirs or folders above them")
  p.add_argument("--output_dir", help="where the report goes (default: the first DIR)")
  p.add_argument("--name", default="comparison", help="file name stem of the report")
  p.add_argument("--baseline", default="Vanilla", help="variant the Δ column is against")
  p.add_argument("--x", default="tokens,train_flops",
                 help=f"comma list of plot axes: {', '.join(AXES)}, or setting:NAME (final "
                 "loss against the value of each variant's @NAME=..., one line per variant)")
  p.add_argument("--context", type=int, default=2048,
                 help="tokens of context for the inference costs")
  args = p.parse_args(argv)
  axes = [a.strip() for a in args.x.split(",") if a.strip()]
  unknown = [a for a in axes if a not in AXES and not (
      a.startswith(plots.SETTING_AXIS) and a != plots.SETTING_AXIS)]
  if unknown or not axes:
    p.error(f"--x={args.x!r}: axes are {', '.join(AXES)} or setting:NAME")
  if args.context < 1:
    p.error(f"--context must be a positive number of tokens; got {args.context}")
  try:
    written, damaged = write_report(args.dirs, args.output_dir or args.dirs[0], args.name,
                                    args.baseline, axes, args.context)
  except ValueError as e:
    p.error(str(e))
  with open(written[0]) as f:
    print(f.read(), end="")
  print("written:", *written)
  for path, reason in damaged:
    print(f"damaged run left out: {path}: {reason}", file=sys.stderr)
  return 1 if damaged else 0


if __name__ == "__main__":
  sys.exit(main())
