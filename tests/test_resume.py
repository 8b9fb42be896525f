"""End to end through `python -m phd_jax.main`: a run killed with SIGKILL and resumed, and a
run stopped by SIGTERM, against the same run left alone."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from phd_jax import checkpoint, sharding, state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
FLAGS = [
    "--config=configs/tiny.py:PHD-CSWA-2-4-8", f"--config.num_steps={STEPS}",
    "--config.model.vocab_size=128", "--config.model.d_model=32",
    "--config.model.num_layers=1", "--config.model.num_heads=2",
    "--config.model.num_kv_heads=1", "--config.model.head_dim=16",
    "--config.model.mlp_dim=32", "--config.seq_len=16", "--config.batch_size=8",
    "--config.log_every=1", "--config.eval_every=0", "--config.optim.warmup_steps=2",
    "--config.data.source=synthetic", "--config.checkpoint.every=1",
    f"--config.checkpoint.keep={STEPS}",
]
# Runs phd_jax.main with a fault injected when the loop asks to save step AT:
#   kill: wait until step AT-1 is on disk, start saving AT, SIGKILL this process mid-write;
#   term: send SIGTERM to this process (as a scheduler would) and carry on.
DRIVER = """
import os, runpy, signal, sys
from phd_jax import checkpoint
fault, at = sys.argv[1], int(sys.argv[2])
original = checkpoint.Checkpointer.save
def save(self, step, *args, **kwargs):
  if int(step) == at and fault == "kill":
    self.wait_until_finished()
    original(self, step, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
  if int(step) == at and fault == "term":
    os.kill(os.getpid(), signal.SIGTERM)
  return original(self, step, *args, **kwargs)
checkpoint.Checkpointer.save = save
sys.argv = ["phd_jax.main"] + sys.argv[3:]
runpy.run_module("phd_jax.main", run_name="__main__")
"""


def _run(workdir, fault=None, at=0):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",  # 2 devices: sharded saves; fast compiles
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
                      "--xla_backend_optimization_level=0"}
  command = [sys.executable, "-m", "phd_jax.main"]
  if fault:
    command = [sys.executable, "-c", DRIVER, fault, str(at)]
  return subprocess.run(command + FLAGS + [f"--workdir={workdir}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def _losses(workdir):
  """{step: [loss, ...]}: every logged value (a resumed run may log a step twice)."""
  losses = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "loss" in record:
        losses.setdefault(record["step"], []).append(record["loss"])
  return losses


def _params(workdir, step):
  """The params saved at `step`, as numpy arrays in tree order (read on this process's
  devices through the saved config, as an evaluation would)."""
  config = checkpoint.load_config(workdir)
  abstract = state.abstract_state(config, sharding.make_mesh(config)).params
  params = checkpoint.load_params(os.path.join(workdir, "checkpoints", str(step)), abstract)
  return [np.asarray(x) for x in jax.tree.leaves(params)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  result = _run(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def _assert_same_params(workdir, expected_workdir, step):
  for got, want in zip(_params(workdir, step), _params(expected_workdir, step), strict=True):
    np.testing.assert_array_equal(got, want)


def test_sigkill_after_step_7_then_resume_is_bitwise_identical(tmp_path, uninterrupted):
  workdir = str(tmp_path)
  killed = _run(workdir, "kill", 8)
  assert killed.returncode == -signal.SIGKILL
  assert max(_losses(workdir)) <= 8  # it died inside step 8's save, not later
  resumed = _run(workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  expected = _losses(uninterrupted)
  got = _losses(workdir)
  assert sorted(got) == list(range(1, STEPS + 1))
  assert all(len(got[step]) == 1 for step in range(1, 8))  # resumed, not started over
  for step, values in got.items():
    assert values == [expected[step][0]] * len(values), step
  _assert_same_params(workdir, uninterrupted, STEPS)


def test_sigterm_saves_the_next_step_and_exits_cleanly(tmp_path, uninterrupted):
  workdir = str(tmp_path)
  stopped = _run(workdir, "term", 5)
  assert stopped.returncode == 0, stopped.stderr[-3000:]
  assert "SIGTERM" in stopped.stdout + stopped.stderr
  last = max(_losses(workdir))
  assert last < STEPS
  ckpt_steps = sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints"))
                      if p.isdigit())
  assert ckpt_steps[-1] == last and last in (5, 6)
  _assert_same_params(workdir, uninterrupted, last)
