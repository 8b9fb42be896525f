"""The report of bench/device_check.py: rows by section, as JSON and as Markdown tables."""

from __future__ import annotations

import json
import os
import threading
import time


class Report:
  """Rows by section, written as JSON and Markdown after every change."""

  SECTIONS = ("exactness", "lse", "training", "decode", "prefill", "skipped", "errors")

  def __init__(self, out: str, meta: dict, start: float):
    os.makedirs(out, exist_ok=True)
    self.start = start  # time.perf_counter() when the run began
    self.out, self.lock = out, threading.Lock()
    self.data = {"meta": meta, **{s: [] for s in self.SECTIONS}}

  def add(self, section: str, row: dict):
    with self.lock:
      self.data[section].append(row)
    self.save()

  def finish(self, status: str):
    self.data["meta"].update(status=status, elapsed_s=round(time.perf_counter() - self.start, 1))
    self.save()

  def save(self):
    with self.lock:
      for name, text in (("device_check.json", json.dumps(self.data, indent=1)),
                         ("device_check.md", markdown(self.data))):
        path = os.path.join(self.out, name)
        with open(path + ".tmp", "w") as f:
          f.write(text)
        os.replace(path + ".tmp", path)


def outcome(data: dict) -> tuple[str, int]:
  """The finished run's status line and exit status: 0 all passed, 1 an exactness check
  failed or a row failed, 2 a row raised an error that marks a bug (harness.BUG_ERRORS)."""
  failed = [r for r in data["exactness"] + data["lse"] if not r["ok"]]
  bugs = [r for r in data["errors"] if r["bug"]]
  notes = [f"exactness checks FAILED: {len(failed)}" if failed else "",
           f"rows failed: {len(data['errors'])}" if data["errors"] else "",
           f"by a bug: {len(bugs)}" if bugs else ""]
  return "; ".join(["done"] + [n for n in notes if n]), (2 if bugs else
                                                         1 if failed or data["errors"] else 0)


def markdown(data: dict) -> str:
  m = data["meta"]
  lines = [f"# Device check: {m['device']}", "",
           f"{m['date']}; jax {m['jax']}, flax {m['flax']}; attention auto = {m['auto']}; "
           f"budget {m['budget_s']} s, status {m.get('status', 'running')}, elapsed "
           f"{m.get('elapsed_s', '-')} s{'; SMOKE (tiny shapes)' if m['smoke'] else ''}", ""]

  def table(title, columns, rows):
    if rows:
      lines.extend([f"## {title}", "", "| " + " | ".join(c for c, _ in columns) + " |",
                    "|" + "---|" * len(columns)])
      lines.extend("| " + " | ".join(fmt(r) for _, fmt in columns) + " |" for r in rows)
      lines.append("")

  num = lambda key, spec: lambda r: "-" if r.get(key) is None else format(r[key], spec)
  table("Exactness: fused vs structured (bfloat16)",
        [("variant", lambda r: r["variant"]), ("packed", lambda r: str(r["packed"])),
         ("kernel", lambda r: r["kernel"]), ("T", num("T", "d")),
         *[(f"{n} err / bound", lambda r, n=n: f"{r['errors'][n]:.2e} / {r['bounds'][n]:.2e}")
           for n in ("output", "dq", "dk", "dv")], ("ok", lambda r: str(r["ok"]))],
        data["exactness"])
  table("Log-sum-exp convention of the kernel",
        [("kernel", lambda r: r["kernel"]), ("shape", lambda r: str(r["shape"])),
         ("dtype", lambda r: r["dtype"]), ("lse err / bound",
                                           lambda r: f"{r['lse_error']:.2e} / {r['lse_bound']:.2e}"),
         ("output err / bound", lambda r: f"{r['output_error']:.2e} / {r['output_bound']:.2e}"),
         ("ok", lambda r: str(r["ok"]))], data["lse"])
  table("Training step",
        [("model", lambda r: r["model"]), ("variant", lambda r: r["variant"]),
         ("K", num("k", "d")), ("impl", lambda r: r["impl"]), ("B x T", lambda r: r["shape"]),
         ("step ms", num("step_ms", ".1f")), ("tokens/s", num("tokens_per_s", ",.0f")),
         ("TFLOP/s", num("tflops_per_s", ".1f")), ("MFU", num("mfu", ".1%")),
         ("/ K van", num("ratio_to_k_vanilla", ".2f")), ("compile+1st s", num("first_s", ".1f")),
         ("steps", num("steps", "d"))], data["training"])
  table("Decode, batch 1",
        [("variant", lambda r: r["variant"]), ("K", num("k", "d")),
         ("context", num("context", "d")), ("ms/token", num("ms", ".2f")),
         ("x Vanilla", num("ratio", ".2f"))], data["decode"])
  table("Prefill, one prompt",
        [("variant", lambda r: r["variant"]), ("K", num("k", "d")),
         ("prompt", num("prompt", "d")), ("ms", num("ms", ".1f")),
         ("x Vanilla", num("ratio", ".2f"))], data["prefill"])
  table("Skipped", [("part", lambda r: r["part"]), ("row", lambda r: r["row"]),
                    ("why", lambda r: r["why"])], data["skipped"])
  table("Errors", [("part", lambda r: r["part"]), ("row", lambda r: r["row"]),
                   ("bug", lambda r: "yes" if r["bug"] else "-"),
                   ("error", lambda r: r["error"])], data["errors"])
  return "\n".join(lines)
