"""The evaluator's results file, `<run>/eval/results.jsonl`: one JSON line per checkpoint
step, appended as `phd_jax.evaluate --follow` finishes each; the evaluator's only state.

A line is either an evaluation, the report `phd_jax.evaluate` writes as `eval_step<N>.json`
(`step`, `checkpoint`, `variant`, `limit`, `data_dir`, `results`, `average`) plus the flags
that change the numbers (`settings`), `seconds` and `evaluated_at`; or a step that did not
read back as written: `{"step", "checkpoint", "skipped": why, "commit_time"}`.
Each line is written whole before the next step starts: appended and fsync'ed locally;
on object stores (gs://), which cannot append, the file is rewritten whole
(`workdir.write_atomically`). A line cut short (a kill or a full disk mid-write) is
dropped, with a warning, when the file is next opened for writing, so its step is
evaluated again; readers (`run_results`) skip it.
"""

from __future__ import annotations

import json
import os

from absl import logging
from etils import epath

from phd_jax.workdir import write_atomically

EVAL_DIR = "eval"  # under the run; the evaluator writes nothing elsewhere
RESULTS_FILE = "results.jsonl"


def _lines(text: str) -> list[tuple[str, dict | None]]:
  """(line, its record or None when it is not a whole one) of each non-blank line. A line
  without its newline was cut short even when it parses: the next append would join it."""
  lines = []
  for line in text.splitlines(keepends=True):
    if not line.strip():
      continue
    try:
      record = json.loads(line) if line.endswith("\n") else None
    except json.JSONDecodeError:
      record = None
    whole = isinstance(record, dict) and isinstance(record.get("step"), int)
    lines.append((line, record if whole else None))
  return lines


def parse(text: str) -> list[dict]:
  """The whole records of a results file's text, in the order written."""
  return [record for _, record in _lines(text) if record is not None]


class ResultsLog:
  """A results file opened for appending: `records` (what it holds), `append(record)`."""

  def __init__(self, path):
    self.path = epath.Path(path)
    self._remote = "://" in str(path)
    lines = _lines(self.path.read_text()) if self.path.exists() else []
    self.records = [record for _, record in lines if record is not None]
    self._text = "".join(line for line, record in lines if record is not None)
    cut = [number for number, (_, record) in enumerate(lines, 1) if record is None]
    if cut:
      logging.warning("Dropping line(s) %s of %s: cut short (a write was interrupted); "
                      "their steps are evaluated again.", ", ".join(map(str, cut)), self.path)
      write_atomically(self.path, self._text)  # all whole lines, or (killed) the old file

  def append(self, record: dict) -> None:
    line = json.dumps(record, sort_keys=True) + "\n"
    if self._remote:
      self._text += line
      write_atomically(self.path, self._text)
    else:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      with open(os.fspath(self.path), "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    self.records.append(record)
