"""The command line: dry runs of the paper's configs, a short training run, bad settings."""

import importlib
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config=configs/tiny.py:PHD-CSWA-2-2-4", "--config.data.source=synthetic",
        "--config.model.vocab_size=64", "--config.model.d_model=32",
        "--config.model.num_layers=1", "--config.model.mlp_dim=64", "--config.seq_len=16",
        "--config.batch_size=8", "--config.num_steps=6", "--config.log_every=3",
        "--config.eval_every=0", "--config.optim.warmup_steps=2", "--config.mesh.data=2",
        "--config.mesh.fsdp=2", "--config.mesh.tensor=2"]


def start(*args):
  """`python -m phd_jax.main ARGS` on 8 fake CPU devices (from conftest's XLA_FLAGS)."""
  return subprocess.Popen([sys.executable, "-m", "phd_jax.main", *args], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process):
  out, err = process.communicate(timeout=300)
  return process.returncode, out, err


def olmo2_parameters(vocab, d_model, layers, heads, kv_heads, head_dim, mlp):
  """(all, norm scales) of an untied OLMo2 with QK-norm over all heads, counted by hand."""
  matrices = d_model * head_dim * (2 * heads + 2 * kv_heads) + 3 * d_model * mlp
  norms = 2 * d_model + (heads + kv_heads) * head_dim
  return (2 * vocab * d_model + layers * (matrices + norms) + d_model,
          layers * norms + d_model)


def test_dry_run_prints_the_paper_parameter_counts():
  names = ("olmo2_1b", "olmo2_550m")
  runs = {name: start(f"--config=configs/{name}.py", "--dry_run") for name in names}
  shapes = {"olmo2_1b": (50304, 2048, 16, 32, 8, 64, 8192),
            "olmo2_550m": (50304, 1536, 16, 16, 4, 96, 4096)}
  paper_size = {"olmo2_1b": 1.2e9, "olmo2_550m": 550e6}
  for name, process in runs.items():
    code, out, err = finish(process)
    assert code == 0, err[-2000:]
    total, norms = olmo2_parameters(*shapes[name])
    assert total == pytest.approx(paper_size[name], rel=0.02)
    documented = importlib.import_module(f"configs.{name}").__doc__
    assert f"Parameters: {total:,} " in documented
    assert re.search(r"^parameters: (\d+)$", out, re.M)[1] == str(total)
    without_norms = int(re.search(r"^parameters without norm scales: (\d+)", out, re.M)[1])
    assert without_norms == total - norms
    # float32 params + two Adam moments, split over 8 fsdp devices
    memory = float(re.search(r"memory per device .*: ([\d.]+) GiB", out)[1])
    assert memory == pytest.approx(total * 12 / 8 / 2**30, abs=2e-3)


def test_trains_from_the_command_line(tmp_path):
  code, out, err = finish(start(*TINY, "--config.profile_steps=2:4", f"--workdir={tmp_path}"))
  assert code == 0, err[-2000:]
  traces = [f for _, _, files in os.walk(tmp_path / "profile") for f in files]
  assert any(f.endswith(".xplane.pb") for f in traces), traces
  assert re.search(r"step 6/6 \[#+\] loss [\d.]+ .* eta", out)
  assert re.search(r"^done: step 6, loss [\d.]+;", out, re.M)
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [3, 6]
  assert json.load(open(tmp_path / "config.json"))["mesh"]["tensor"] == 2
  assert os.listdir(tmp_path / "checkpoints") == ["6"]  # the final save


def test_bad_setting_exits_naming_it(tmp_path):
  code, _, err = finish(start(*TINY, "--config.mesh.tensor=3", f"--workdir={tmp_path}",
                              "--dry_run"))
  assert code != 0 and "'tensor': 3" in err
