"""Two processes on localhost (2 x 4 CPU devices, gloo collectives), started by
launch/local.sh, train the same losses as one process with 8 devices."""

import os
import subprocess
import sys

import numpy as np
import pytest

from phd_jax import train
from run_helpers import REPO_ROOT, SHORT_RUN, config_flags, losses, tiny_config

pytestmark = pytest.mark.slow

STEPS = 4
VARIANT = "PHD-CSWA-2-2-4"
RUN = SHORT_RUN | {"num_steps": STEPS, "log_every": 1, "optim.warmup_steps": 1,
                   "checkpoint.every": 0}


def test_two_processes_match_one(tmp_path):
  multi = tmp_path / "two_processes"
  # the dcn axis spans the two processes: a hybrid mesh grouped by process
  flags = config_flags(RUN | {"mesh.data": -1, "mesh.dcn_data": 2})
  launched = subprocess.Popen(
      ["bash", "launch/local.sh", "--num_processes", "2", "--devices_per_process", "4",
       "--platform", "cpu", "--python", sys.executable, "--",
       f"--config=configs/tiny.py:{VARIANT}", f"--workdir={multi}", *flags, "--verbosity=0"],
      cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

  one_process = tiny_config(VARIANT)
  one_process.update_from_flattened_dict(RUN | {"mesh.data": 8})
  train.train(one_process, str(tmp_path / "one_process"))  # conftest's 8 fake CPU devices
  out, _ = launched.communicate(timeout=600)
  assert launched.returncode == 0, out[-3000:]

  expected = losses(tmp_path / "one_process")
  assert sorted(expected) == list(range(1, STEPS + 1))
  got = losses(multi)
  assert sorted(got) == sorted(expected)
  np.testing.assert_allclose([got[step] for step in expected], list(expected.values()),
                             rtol=2e-5)
  assert os.listdir(multi / "checkpoints") == [str(STEPS)]
  logs = [(multi / "logs" / f"rank_{rank}.log").read_text() for rank in (0, 1)]
  for log in logs:  # each rank logs to its own file (INFO shown with --verbosity=0)
    assert "Connecting to JAX distributed service on localhost:" in log
  assert "loss" not in logs[1]  # only process 0 prints progress
