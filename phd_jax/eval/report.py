"""Evaluation results as JSON and as a markdown table (the paper's Table 1 layout)."""

from __future__ import annotations

import json
import os

from phd_jax.eval.tasks import TASKS


def paper_average(results: dict) -> float | None:
  """Mean of the metric the paper reports for each task present (None without tasks)."""
  scores = [results[name][results[name]["metric"]] for name in TASKS if name in results]
  return sum(scores) / len(scores) if scores else None


def _percent(value, stderr=None) -> str:
  if stderr is None:
    return f"{100 * value:.1f}"
  return f"{100 * value:.1f} ± {100 * stderr:.1f}"


def markdown(report: dict) -> str:
  """A table per report: held-out loss, then one row per task and the average."""
  results = report["results"]
  lines = [f"## {report['variant']}: {report['checkpoint']}"
           + (f" (step {report['step']})" if report.get("step") is not None else ""), ""]
  if "loss" in results:
    loss = results["loss"]
    bpb = "n/a" if loss["bits_per_byte"] is None else f"{loss['bits_per_byte']:.4f}"
    lines += ["| held-out loss | perplexity | bits per byte | targets |",
              "|---|---|---|---|",
              f"| {loss['loss']:.4f} | {loss['perplexity']:.2f} | {bpb} | {loss['targets']} |",
              ""]
  tasks = [name for name in TASKS if name in results]
  if tasks:
    lines += ["| task | examples | acc (%) | acc_norm (%) | reported (%) |",
              "|---|---|---|---|---|"]
    for name in tasks:
      r = results[name]
      lines.append(f"| {name} | {r['num_examples']} | {_percent(r['acc'], r['acc_stderr'])} | "
                   f"{_percent(r['acc_norm'], r['acc_norm_stderr'])} | "
                   f"{_percent(r[r['metric']])} ({r['metric']}) |")
    lines.append(f"| average of {len(tasks)} | | | | {_percent(paper_average(results))} |")
    if report.get("limit"):
      lines += ["", f"First {report['limit']} examples of each task (--limit)."]
  return "\n".join(lines) + "\n"


def write(report: dict, output_dir: str, name: str) -> tuple[str, str]:
  """`<output_dir>/<name>.json` and `.md`; returns both paths."""
  os.makedirs(output_dir, exist_ok=True)
  json_path, md_path = (os.path.join(output_dir, f"{name}.{ext}") for ext in ("json", "md"))
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2, sort_keys=True)
    f.write("\n")
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(markdown(report))
  return json_path, md_path
