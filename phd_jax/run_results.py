"""Training runs' results, read from the files training, evaluation and sweeps leave.

A run is a folder holding `metrics.jsonl`, `config.json` or `sweep_status.json`; its
result (`RunResult`) says how far it got, its held-out losses, zero-shot and
pointer-chasing results, and the inference costs of its model (`phd_jax.flops`). A file
that cannot be read raises `DamagedRun` naming it and why, so that a report can leave that
run out and go on with the others.

Evaluations come from three places, joined by step: the training loop's (`eval_*` lines of
metrics.jsonl), the evaluator's (`eval/results.jsonl` of `phd_jax.evaluate --follow`; at
a step both evaluated, the evaluator's count, as its settings are the deliberate ones) and
single `phd_jax.evaluate` reports (`eval_step<N>.json`, zero-shot tasks only). The task
results shown are those of the newest step any of them evaluated (on a tie: the single
report, then the evaluator, then the loop); `sources` says where each came from.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re

from phd_jax import config as config_lib
from phd_jax import data, decode, flops
from phd_jax.eval import results_log

RUN_FILES = ("metrics.jsonl", "config.json", "sweep_status.json")
HELDOUT_KEYS = ("eval_loss", "eval_perplexity", "eval_bits_per_byte")


class DamagedRun(Exception):
  """A run file that cannot be read; the message names the file and why."""


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
  tasks: dict  # zero-shot task -> reported metric at the newest evaluation (of any source)
  chase: dict | None
  inference: dict | str  # inference_cost() of its config, or why there is none
  task_curves: dict = dataclasses.field(default_factory=dict)  # task -> [(step, metric)]
  sources: str = ""  # where evals and tasks come from, e.g. "loss: in-loop 3, evaluator 5"

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
  """Every run folder under (or equal to) the given paths, sorted. Links are followed (a
  sweep may link runs it shares with another sweep, e.g. its Vanilla), and a folder reached
  twice, through a link or through two of `paths`, is one run under the first name met."""
  found, seen = [], set()
  for path in paths:
    if not os.path.isdir(path):
      raise ValueError(f"no such directory: {path}")
    for root, dirs, files in os.walk(path, followlinks=True):
      real = os.path.realpath(root)
      if real in seen:  # met before: also what stops a link that points above itself
        dirs[:] = []
        continue
      seen.add(real)
      if any(f in files for f in RUN_FILES):
        found.append(os.path.normpath(root))
        dirs[:] = []  # checkpoints and profiles below a run are not runs
      else:
        dirs.sort()
  return sorted(found)


def _read_text(path) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise DamagedRun(f"{os.path.basename(path)}: {e}") from None


def _read_json(path):
  """The JSON object in `path` (None when there is no such file)."""
  if not os.path.isfile(path):
    return None
  name, text = os.path.basename(path), _read_text(path)
  if not text.strip():
    raise DamagedRun(f"{name} is empty")
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise DamagedRun(f"{name}: {e}") from None
  if not isinstance(value, dict):
    raise DamagedRun(f"{name} holds a JSON {type(value).__name__}, not an object")
  return value


def _read_metrics(path) -> list[dict]:
  """The lines of `metrics.jsonl` that parse. A killed run's last line may be cut short,
  and a resumed run appends to it, so a bad line is skipped, not the end of the file."""
  if not os.path.isfile(path):
    return []
  rows = []
  for line in _read_text(path).splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict) and isinstance(row.get("step"), int):
      rows.append(row)
  return rows


def _config_field(config, field):
  if not isinstance(config.get(field), int):
    raise DamagedRun(f"config.json: {field} is {config.get(field)!r}, not an integer")
  return config[field]


def inference_cost(config, context: int) -> dict | str:
  """`phd_jax.flops`'s inference costs of a run's model at `context` tokens, or why they
  cannot be had from its config."""
  try:
    config = config_lib.from_json(json.dumps(config))
    cfg, spec = config_lib.model_config(config), config_lib.phd_spec(config)
    hidden = decode.hidden_prefill_tokens(spec, [context], cfg.num_layers)
  except (ValueError, AttributeError, TypeError, KeyError) as e:
    return f"config.json: {e}"
  return {"parameters": flops.parameter_count(cfg, spec),
          "kv_bytes_per_token": flops.kv_bytes_per_token(cfg),
          "hidden_window_bytes": flops.hidden_window_bytes(cfg, spec),
          "decode_flops": flops.decode_flops(cfg, spec, context),
          "prefill_flops": flops.prefill_flops(cfg, spec, context, hidden),
          "inference_memory": flops.inference_memory_bytes(cfg, spec, context)}


def _label(path, config, status) -> str:
  if status and status.get("variant"):
    return status["variant"]
  if re.fullmatch(r"seed\d+", os.path.basename(path)):
    return os.path.basename(os.path.dirname(path))
  return (config or {}).get("phd", {}).get("variant") or os.path.basename(path)


def _task_metrics(results: dict) -> dict:
  """task -> the metric the paper reports, of a report's results."""
  return {name: r[r["metric"]] for name, r in results.items()
          if isinstance(r, dict) and r.get("metric") in r}


def _evaluator_results(path) -> dict:
  """step -> results of the evaluator's lines (`eval/results.jsonl`); skipped steps and
  a line cut short are left out."""
  file = os.path.join(path, results_log.EVAL_DIR, results_log.RESULTS_FILE)
  if not os.path.isfile(file):
    return {}
  return {r["step"]: r["results"] for r in results_log.parse(_read_text(file))
          if isinstance(r.get("results"), dict)}


def _report_tasks(path) -> tuple[int, dict] | None:
  """(step, tasks) of the newest `eval_step<N>.json`."""
  reports = glob.glob(os.path.join(path, "eval_step*.json"))
  if not reports:
    return None
  step, newest = max((int(re.search(r"(\d+)\.json$", p).group(1)), p) for p in reports)
  return step, _task_metrics(_read_json(newest).get("results", {}))


def _in_loop_tasks(row: dict) -> dict:
  return {k.removeprefix("eval_"): v for k, v in row.items()
          if k.startswith("eval_") and k not in HELDOUT_KEYS and v is not None}


def _joined(in_loop: dict, evaluator: dict, report) -> tuple[dict, dict, dict, str]:
  """(evals, task curves, tasks of the newest evaluation, sources) of the three sources:
  in-loop {step: metrics.jsonl row}, evaluator {step: results}, report (step, tasks) or
  None."""
  evals = {step: (step, row["eval_loss"], row.get("eval_bits_per_byte"))
           for step, row in in_loop.items()}
  evaluated = {step: r["loss"] for step, r in evaluator.items() if "loss" in r}
  evals |= {step: (step, loss["loss"], loss.get("bits_per_byte"))
            for step, loss in evaluated.items()}
  # (step, rank: lower wins at the same step, source, tasks)
  found = ([(step, 2, "in-loop", _in_loop_tasks(row)) for step, row in in_loop.items()] +
           [(step, 1, "evaluator", _task_metrics(r)) for step, r in evaluator.items()] +
           ([(report[0], 0, f"eval_step{report[0]}.json", report[1])] if report else []))
  found = sorted((f for f in found if f[3]), key=lambda f: (f[0], -f[1]))
  curves = {}
  for step, _, _, tasks in found:  # the better source of a step comes later
    for task, value in tasks.items():
      curves.setdefault(task, {})[step] = value
  losses = {"in-loop": len(in_loop.keys() - evaluated.keys()), "evaluator": len(evaluated)}
  sources = [f"loss: {', '.join(f'{k} {n}' for k, n in losses.items() if n)}"] if evals else []
  if found:
    step, rank, source, _ = found[-1]
    sources.append(f"tasks: {source}" + (f" at step {step}" if rank else ""))
  return (evals, {t: sorted(c.items()) for t, c in curves.items()},
          found[-1][3] if found else {}, "; ".join(sources))


def read_run(path, context: int = 2048) -> RunResult:
  """One run's results, inference costs at `context` tokens; DamagedRun names a file that
  cannot be read."""
  config = _read_json(os.path.join(path, "config.json"))
  status = _read_json(os.path.join(path, "sweep_status.json"))
  rows = _read_metrics(os.path.join(path, "metrics.jsonl"))
  evaluator = _evaluator_results(path)
  in_loop, train_time, last_step, flops_per_step = {}, 0.0, 0, None
  previous = 0
  for row in rows:
    step = row["step"]
    if "eval_loss" in row:  # a resumed run may evaluate a step again: the last one counts
      in_loop[step] = row
    if "step_time" in row:  # steps redone after a resume are not counted twice
      train_time += row["step_time"] * max(step - previous, 0)
      previous = max(previous, step)
      flops_per_step = row.get("model_flops_per_step", flops_per_step)
    last_step = max(last_step, step)
  evals, task_curves, tasks, sources = _joined(in_loop, evaluator, _report_tasks(path))
  target = _config_field(config, "num_steps") if config else None
  if status and status.get("status") == "failed":
    state = "failed"
  elif not rows:
    state = "empty"
  elif target is not None and last_step >= target and (
      not (config.get("eval_every") or evaluator) or target in evals):
    state = "complete"  # and evaluated at the last step, by the loop or the evaluator
  else:
    state = "incomplete"
  if config and config.get("data", {}).get("source") in data.TOKEN_SOURCES:
    evals = {s: (s, loss, None) for s, (_, loss, _) in evals.items()}  # no text, no bytes
  seed = config.get("seed") if config else (status or {}).get("seed")
  tokens_per_step = (_config_field(config, "batch_size") * _config_field(config, "seq_len")
                     if config else None)
  return RunResult(
      path=path, label=_label(path, config, status), seed=seed, state=state,
      target_steps=target, steps=last_step, tokens_per_step=tokens_per_step,
      flops_per_step=flops_per_step, evals=sorted(evals.values()), train_time_s=train_time,
      wall_s=(status or {}).get("wall_s"), tasks=tasks,
      chase=_read_json(os.path.join(path, "chase.json")),
      inference=inference_cost(config, context) if config else "no config.json",
      task_curves=task_curves, sources=sources)


def read_runs(paths, context: int = 2048) -> tuple[list[RunResult], list[tuple[str, str]]]:
  """Every readable run under `paths`, and (path, reason) of each damaged one."""
  runs, damaged = [], []
  for path in find_runs(paths):
    try:
      runs.append(read_run(path, context))
    except DamagedRun as e:
      damaged.append((path, str(e)))
  return runs, damaged
