"""bench/device_check.py in its CPU smoke mode: every part runs without the data stack and
without an error, the report is consistent, and the budget is kept (rows that would not fit
are skipped and listed); its harness marks a row that fails by a bug as one.

The script runs as a user runs it: `python bench/device_check.py` from the repository root,
in a separate process, with the modules the device image lacks made unimportable.
"""

import json
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from phd_jax import config as config_lib
from phd_jax import flops
from phd_jax.masks import parse_variant
from run_helpers import REPO_ROOT

# What the device image lacks; the check must not need it (its docstring says so).
ABSENT = ("grain", "array_record", "tensorflow_datasets", "tensorboardX", "sentencepiece",
          "tokenizers")
# Run by Python at start-up, before the script, as a sitecustomize module on its path.
BLOCK_IMPORTS = ("import sys\n"
                 "class Absent:\n"
                 "  def find_spec(self, name, path=None, target=None):\n"
                 f"    if name.split('.')[0] in {ABSENT!r}:\n"
                 "      raise ImportError(f'{name} is not on the device image')\n"
                 "sys.meta_path.insert(0, Absent())\n")
CUT_OFF = 3  # the exit status when the budget's watchdog ends the run


def _device_image_env(tmp: Path) -> dict:
  """The environment of a process in which the modules in ABSENT cannot be imported."""
  site = tmp / "site"
  site.mkdir(exist_ok=True)
  (site / "sitecustomize.py").write_text(BLOCK_IMPORTS)
  env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)  # one CPU device, as on a one-chip machine
  return env


def _run(out, *flags, timeout=600):
  begin = time.perf_counter()
  result = subprocess.run(
      [sys.executable, "bench/device_check.py", "--smoke", "--out", str(out), *flags],
      cwd=REPO_ROOT, env=_device_image_env(out), capture_output=True, text=True,
      timeout=timeout)
  return result, time.perf_counter() - begin


def _report(out):
  return json.loads((out / "device_check.json").read_text()), (out / "device_check.md").read_text()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp("device_check")
  result, _ = _run(out, "--budget_s", "900", timeout=900)
  return result, *_report(out)


@pytest.mark.slow
def test_smoke_runs_every_part_without_the_data_stack(smoke):
  result, report, md = smoke
  assert result.returncode == 0, result.stderr[-3000:]
  assert report["meta"]["status"] == "done"
  assert not report["errors"] and not report["skipped"], (report["errors"], report["skipped"])
  for title in ("Exactness", "Log-sum-exp", "Training step", "Decode", "Prefill"):
    assert f"## {title}" in md


@pytest.mark.slow
def test_smoke_exactness_rows_are_consistent(smoke):
  _, report, _ = smoke
  assert report["exactness"]
  for row in report["exactness"]:
    names = ("output", "dq", "dk", "dv")
    assert all(np.isfinite(row["errors"][n]) and row["bounds"][n] >= 1e-2 for n in names)
    assert row["ok"] == all(row["errors"][n] <= row["bounds"][n] for n in names)
  (lse,) = report["lse"]
  assert lse["ok"] and lse["dtype"] == "float32" and lse["lse_error"] < 1e-4, lse


@pytest.mark.slow
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


@pytest.mark.slow
def test_smoke_inference_ratios(smoke):
  _, report, _ = smoke
  for section in ("decode", "prefill"):
    rows = report[section]
    assert rows[0]["variant"] == "Vanilla" and rows[0]["ratio"] == 1.0
    assert len(rows) >= 3
    for row in rows:
      assert row["ms"] > 0 and row["ratio"] == pytest.approx(row["ms"] / rows[0]["ms"])


@pytest.mark.slow
def test_tiny_budget_skips_and_keeps_to_it(tmp_path):
  budget = 12.0
  result, elapsed = _run(tmp_path, "--budget_s", str(budget))
  report, md = _report(tmp_path)
  assert elapsed < budget + 3, (elapsed, result.stderr[-2000:])
  assert (result.returncode, report["meta"]["status"]) in (
      (0, "done"), (CUT_OFF, "cut off at the budget")), result.stderr[-2000:]
  assert report["skipped"] and "## Skipped" in md
  done = report["exactness"] + report["training"] + report["decode"] + report["prefill"]
  assert not report["errors"] and len(done) < 9  # the full smoke has 9 rows


@pytest.mark.slow
def test_the_device_image_env_blocks_the_data_stack(tmp_path):
  result = subprocess.run([sys.executable, "-c", "import grain"], env=_device_image_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
  assert "ImportError: grain is not on the device image" in result.stderr


@pytest.mark.slow
def test_the_config_checks_data_sources_without_the_data_stack(tmp_path):
  """The source names the config checks live in `phd_jax.data`, which imports without grain."""
  code = ("from phd_jax import config, defaults\n"
          "c = defaults.get_config()\n"
          "c.data.source = 'pointer_chase'\n"
          "config.validate(c, training=False)\n"
          "c.data.source = 'tfrecords'\n"
          "config.validate(c, training=False)\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT,
                          env=_device_image_env(tmp_path), capture_output=True, text=True,
                          timeout=120)
  assert result.stderr.strip().splitlines()[-1].startswith(
      "phd_jax.config.ConfigError: data.source must be one of"), result.stderr[-2000:]


def test_a_failed_row_is_listed_and_one_failed_by_a_bug_is_marked(tmp_path):
  harness = runpy.run_path(str(REPO_ROOT / "bench" / "harness.py"))
  report_lib = runpy.run_path(str(REPO_ROOT / "bench" / "device_report.py"))
  start = time.perf_counter()
  meta = dict(device="cpu", date="-", jax=jax.__version__, flax="-", auto="-", budget_s=60,
              smoke=True)
  report = report_lib["Report"](str(tmp_path), meta, start)
  rows = harness["RowRunner"](harness["Budget"](60, start, {"row": 1}), report, start)

  def device_failure():
    raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

  assert rows.row("part", "fits", "row", lambda: 42) == 42
  assert rows.row("part", "out of memory", "row", device_failure) is None
  assert report_lib["outcome"](report.data) == ("done; rows failed: 1", 1)
  assert rows.row("part", "import", "row", lambda: __import__("not_a_module")) is None
  assert rows.row("part", "name", "row", lambda: undefined_name) is None  # noqa: F821
  assert [(r["row"], r["bug"]) for r in report.data["errors"]] == [
      ("out of memory", False), ("import", True), ("name", True)]
  assert report.data["errors"][2]["error"] == "NameError: name 'undefined_name' is not defined"
  assert report_lib["outcome"](report.data) == ("done; rows failed: 3; by a bug: 2", 2)
  assert json.loads((tmp_path / "device_check.json").read_text())["errors"] == \
      report.data["errors"]
