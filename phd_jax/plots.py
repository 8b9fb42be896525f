"""The plots of `phd_jax.compare`: held-out loss along runs, task curves, final loss against
an inference cost or against a swept setting. Each takes the variant groups
(`compare.group`: label -> runs of `phd_jax.run_results`) and writes one PNG atomically.
"""

from __future__ import annotations

import math
import os

from phd_jax.stats import mean_se

CURVE_AXES = {"tokens": "original tokens seen",
              "train_flops": "training FLOPs (model, forward + backward)"}
COST_AXES = {"decode_flops": "decode FLOPs per token at context {T}",
             "inference_memory": "inference memory at context {T}: parameters + KV cache "
                                 "(bytes)"}
SETTING_AXIS = "setting:"  # --x=setting:NAME: final loss against the value of @NAME=...


def atomic_file(path, write) -> None:
  """`write(temporary path)`, then the rename: a report is never half-written."""
  write(path + ".tmp")
  os.replace(path + ".tmp", path)


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _figure():
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  return plt, fig, ax


def _save(plt, fig, ax, path, xlabel, title) -> None:
  ax.set_xlabel(xlabel)
  ax.set_ylabel("held-out loss (nats per token)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  atomic_file(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
  plt.close(fig)


def plot_curves(groups, path, axis) -> None:
  """Held-out loss along each run against original tokens or training FLOPs."""
  per_step = {"tokens": lambda r: r.tokens_per_step, "train_flops": lambda r: r.flops_per_step}
  plt, fig, ax = _figure()
  colors = plt.get_cmap("tab10")
  for i, (label, runs) in enumerate(groups.items()):
    for j, r in enumerate(runs):
      if not r.evals:
        continue
      xs = [step * (per_step[axis](r) or 0) for step, _, _ in r.evals]
      ys = [loss for _, loss, _ in r.evals]
      ax.plot(xs, ys, marker="o", markersize=3, color=colors(i % 10),
              linestyle="-" if r.state == "complete" else "--",
              label=label if j == 0 else None)
  _save(plt, fig, ax, path, CURVE_AXES[axis], f"Held-out loss against {CURVE_AXES[axis]}")


def plot_task_curves(groups, path) -> None:
  """Each task's reported metric against original tokens along each run, one panel per
  task."""
  plt = _pyplot()
  tasks = sorted({t for runs in groups.values() for r in runs for t in r.task_curves})
  columns = min(len(tasks), 3)
  rows = math.ceil(len(tasks) / columns)
  fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.5 * rows), squeeze=False)
  colors = plt.get_cmap("tab10")
  for ax, task in zip(axes.flat, tasks):
    for i, (label, runs) in enumerate(groups.items()):
      drawn = [r for r in runs if task in r.task_curves]
      for j, r in enumerate(drawn):
        steps, values = zip(*r.task_curves[task])
        ax.plot([s * (r.tokens_per_step or 0) for s in steps], values, marker="o",
                markersize=3, color=colors(i % 10),
                linestyle="-" if r.state == "complete" else "--",
                label=label if j == 0 else None)
    ax.set_title(task)
    ax.set_xlabel(CURVE_AXES["tokens"])
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(tasks):]:
    ax.set_visible(False)
  axes.flat[0].legend(fontsize=8)
  fig.tight_layout()
  atomic_file(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
  plt.close(fig)


def cost_points(groups, axis) -> list[tuple]:
  """(label, cost, (mean, se) of the complete runs' final losses or None, the other runs'
  final losses) of each variant whose config gave its inference costs."""
  points = []
  for label, runs in groups.items():
    costs = next((r.inference for r in runs if isinstance(r.inference, dict)), None)
    if costs is not None:
      done = [r.final_loss for r in runs if r.state == "complete"]
      others = [r.final_loss for r in runs if r.state != "complete" and r.evals]
      points.append((label, costs[axis], mean_se(done) if done else None, others))
  return points


def plot_costs(groups, path, axis, context) -> None:
  """Each variant's final held-out loss (mean ± standard error over its complete runs;
  unfinished runs hollow) against an inference cost of its model."""
  plt, fig, ax = _figure()
  colors = plt.get_cmap("tab10")
  color_of = {label: colors(i % 10) for i, label in enumerate(groups)}  # as in the curves
  for label, x, done, others in cost_points(groups, axis):
    color = color_of[label]
    if done:
      ax.errorbar([x], [done[0]], yerr=None if done[1] is None else [done[1]], fmt="o",
                  capsize=4, color=color, label=label)
    ax.scatter([x] * len(others), others, facecolors="none", edgecolors=color,
               label=None if done else label)
  ax.set_xscale("log")
  xlabel = COST_AXES[axis].format(T=context)
  _save(plt, fig, ax, path, xlabel, f"Final held-out loss against {xlabel.split(':')[0]}")


def settings_of(label) -> tuple[str, dict[str, str]]:
  """(variant, {setting: value}) of a label such as `PHD-2@budget_epochs=4@seed=1`."""
  variant, *pairs = label.split("@")
  return variant, dict(pair.partition("=")[::2] for pair in pairs)


def setting_points(groups, setting) -> dict[str, list[tuple]]:
  """line -> [(value of `setting`, (mean, se) of the complete runs' final losses)], sorted
  by value; a line is the label without `@setting=...` (the variant and its other
  settings). Labels without the setting, or with a value that is not a number, are left
  out."""
  lines: dict[str, list[tuple]] = {}
  for label, runs in groups.items():
    variant, settings = settings_of(label)
    try:
      value = float(settings.pop(setting))
    except (KeyError, ValueError):
      continue
    done = [r.final_loss for r in runs if r.state == "complete" and r.final_loss is not None]
    if done:
      line = "@".join([variant, *(f"{k}={v}" for k, v in settings.items())])
      lines.setdefault(line, []).append((value, mean_se(done)))
  return {line: sorted(points) for line, points in lines.items()}


def plot_setting(groups, path, setting) -> None:
  """Each variant's final held-out loss (mean ± standard error over complete runs) against
  the value of one swept `@setting`, one line per variant: e.g. the loss at each training
  budget (`setting:budget_epochs`), where the curves of separate runs do not show it."""
  lines = setting_points(groups, setting)
  if not lines:
    raise ValueError(f"--x=setting:{setting}: no complete run has a numeric @{setting}=... "
                     "in its variant")
  plt, fig, ax = _figure()
  colors = plt.get_cmap("tab10")
  for i, (line, points) in enumerate(lines.items()):
    xs, stats = zip(*points)
    ax.errorbar(xs, [m for m, _ in stats], yerr=[se or 0.0 for _, se in stats], marker="o",
                markersize=4, capsize=3, color=colors(i % 10), label=line)
  values = [x for points in lines.values() for x, _ in points]
  if min(values) > 0 and max(values) / min(values) >= 8:
    ax.set_xscale("log", base=2)
  _save(plt, fig, ax, path, setting, f"Final held-out loss against {setting}")
