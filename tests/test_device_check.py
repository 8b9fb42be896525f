"""bench/device_check.py in its CPU smoke mode: every part runs, the report is consistent,
and the budget is kept (rows that would not fit are skipped and listed).

The script runs as it would on an accelerator machine: a separate process, from the
repository root, with PYTHONPATH=. (nothing installed).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from phd_jax import config as config_lib
from phd_jax import flops
from phd_jax.masks import parse_variant

REPO_ROOT = Path(__file__).resolve().parents[1]
# What the device image lacks; the check must not need it (its docstring says so).
ABSENT = ("grain", "array_record", "tensorflow_datasets", "tensorboardX", "sentencepiece",
          "tokenizers")
BLOCK_IMPORTS = ("import sys\n"
                 "class Absent:\n"
                 "  def find_spec(self, name, path=None, target=None):\n"
                 f"    if name.split('.')[0] in {ABSENT!r}:\n"
                 "      raise ImportError(f'{name} is not on the device image')\n"
                 "sys.meta_path.insert(0, Absent())\n")


def _run(out, *flags, block=False, timeout=300):
  env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)  # one CPU device, as on a one-chip machine
  script = (BLOCK_IMPORTS if block else "") + (
      "import runpy, sys\n"
      f"sys.argv = ['bench/device_check.py', '--smoke', '--out', {str(out)!r}, "
      f"*{list(flags)!r}]\n"
      "runpy.run_path('bench/device_check.py', run_name='__main__')\n")
  begin = time.perf_counter()
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
  return result, time.perf_counter() - begin


def _report(out):
  return json.loads((out / "device_check.json").read_text()), (out / "device_check.md").read_text()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("device_check")
  result, _ = _run(out, "--budget_s", "900")
  return result, *_report(out)


def test_smoke_runs_every_part(smoke):
  result, report, md = smoke
  assert report["meta"]["status"].startswith("done"), result.stderr[-3000:]
  assert not report["errors"] and not report["skipped"], (report["errors"], report["skipped"])
  assert result.returncode == (0 if report["meta"]["status"] == "done" else 1)
  for title in ("Exactness", "Log-sum-exp", "Training step", "Decode", "Prefill"):
    assert f"## {title}" in md


def test_smoke_exactness_rows_are_consistent(smoke):
  _, report, _ = smoke
  assert report["exactness"]
  for row in report["exactness"]:
    names = ("output", "dq", "dk", "dv")
    assert all(np.isfinite(row["errors"][n]) and row["bounds"][n] >= 1e-2 for n in names)
    assert row["ok"] == all(row["errors"][n] <= row["bounds"][n] for n in names)
  (lse,) = report["lse"]
  assert lse["ok"] and lse["dtype"] == "float32" and lse["lse_error"] < 1e-4, lse


def test_smoke_training_rows_use_the_trainers_flop_count(smoke):
  _, report, _ = smoke
  rows = report["training"]
  assert [r["variant"] for r in rows] == ["Vanilla", "PHD-CSWA-3-16-32"]
  vanilla = rows[0]
  for row in rows:
    config = config_lib.load_config(REPO_ROOT / "configs" / f"{row['model']}.py",
                                    row["variant"])
    config.model.update({"vocab_size": 256, "d_model": 32, "num_layers": 1, "num_heads": 4,
                         "num_kv_heads": 2, "head_dim": 16, "mlp_dim": 64})
    batch, seq_len = (int(x) for x in row["shape"].split(" x "))
    expected = batch * flops.flops_per_sequence(config_lib.model_config(config),
                                                parse_variant(row["variant"]), seq_len)
    assert row["flops_per_step"] == pytest.approx(expected)
    assert row["tokens_per_s"] == pytest.approx(batch * seq_len / (row["step_ms"] / 1e3))
    assert row["ratio_to_k_vanilla"] == pytest.approx(
        row["step_ms"] / (row["k"] * vanilla["step_ms"]))
    assert row["mfu"] is None  # no peak FLOP/s is known for a CPU
    assert np.isfinite(row["loss"]) and row["steps"] >= 1


def test_smoke_inference_ratios(smoke):
  _, report, _ = smoke
  for section in ("decode", "prefill"):
    rows = report[section]
    assert rows[0]["variant"] == "Vanilla" and rows[0]["ratio"] == 1.0
    assert len(rows) >= 3
    for row in rows:
      assert row["ms"] > 0 and row["ratio"] == pytest.approx(row["ms"] / rows[0]["ms"])


def test_tiny_budget_skips_and_keeps_to_it(tmp_path):
  budget = 12.0
  result, elapsed = _run(tmp_path, "--budget_s", str(budget))
  report, md = _report(tmp_path)
  assert elapsed < budget + 3, (elapsed, result.stderr[-2000:])
  assert report["skipped"] and "## Skipped" in md
  done = report["exactness"] + report["training"] + report["decode"] + report["prefill"]
  assert not report["errors"] and len(done) < 9  # the full smoke has 9 rows


def test_config_checks_token_sources_as_the_data_pipeline_defines_them():
  from phd_jax import data  # the pipeline itself needs grain, which the device image lacks
  assert config_lib.TOKEN_SOURCES == data.TOKEN_SOURCES


def test_runs_without_the_data_stack(tmp_path):
  result, _ = _run(tmp_path, "--parts", "exactness", block=True)
  assert result.returncode in (0, 1), result.stderr[-2000:]
  assert _report(tmp_path)[0]["lse"]
