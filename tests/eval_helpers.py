"""Shared by the evaluation tests: the real eval data when it sits beside the repository
(`../shared/eval_data`), else a small stand-in in the same JSONL format."""

import json
import os
import pathlib

from phd_jax import config as config_lib
from phd_jax.eval.tasks import TASKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
REAL_EVAL_DATA = os.path.join(ROOT, "..", "shared", "eval_data")


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


def small_config(variant="PHD-CSWA-2-2-4"):
  """The tiny config shrunk further: byte tokens, synthetic validation data, a (2, 2, 2)
  training mesh."""
  c = config_lib.load_config(REPO_ROOT / "configs" / "tiny.py", variant)
  c.model.update(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                 mlp_dim=64)
  c.update(seq_len=64, batch_size=8, eval_batches=2)
  c.data.source = "synthetic"
  c.mesh.update(data=2, fsdp=2, tensor=2)
  c.checkpoint.async_save = False
  return c
