"""Shared by the evaluation tests: the real eval data when it sits beside the repository
(`../shared/eval_data`), else a small stand-in in the same JSONL format."""

import json
import os

from phd_jax.eval.tasks import TASKS
from run_helpers import REPO_ROOT, small_config

REAL_EVAL_DATA = os.path.join(REPO_ROOT, "..", "shared", "eval_data")


def write_task(data_dir, name, records):
  os.makedirs(os.path.join(data_dir, name), exist_ok=True)
  with open(os.path.join(data_dir, name, f"{name}.jsonl"), "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")


def eval_data_dir(tmp_path) -> str:
  if os.path.isfile(os.path.join(REAL_EVAL_DATA, "arc_easy", "arc_easy.jsonl")):
    return REAL_EVAL_DATA
  for name, spec in TASKS.items():
    records = []
    for i in range(12):
      record = {"id": f"{name}-{i}", "context": f"Question: what is {i} plus {i}?\nAnswer:",
                "choices": [f" {2 * i}", f" {2 * i + 1}", f" {i}"], "label": i % 3}
      if spec.partial:
        record.update(context=f"Jo gave {i} to ", choices=["Al", "Bo"],
                      continuation=" for keeps.", label=i % 2)
      records.append(record)
    write_task(str(tmp_path / "eval_data"), name, records)
  return str(tmp_path / "eval_data")


def eval_config(variant="PHD-CSWA-2-2-4"):
  """The small config with byte tokens (the tasks' text), 64-token synthetic validation
  sequences and a (2, 2, 2) mesh."""
  return small_config(variant, mesh=(2, 2, 2), seq_len=64, eval_batches=2,
                      **{"model.vocab_size": 384, "checkpoint.async_save": False})
