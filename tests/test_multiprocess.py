"""Two processes on localhost (2 x 4 CPU devices, gloo collectives), started by
launch/local.sh, train the same losses as one process with 8 devices."""

import functools
import json
import os
import subprocess

import numpy as np

from phd_jax import config as config_lib
from phd_jax import train
from test_main import ROOT, TINY

STEPS = 4


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


def config_from_flags(flags):
  """The config `phd_jax.main` builds from `--config=FILE:VARIANT --config.a.b=v` flags."""
  path = next(f for f in flags if f.startswith("--config=")).split("=")[1]
  config = config_lib.load_config(os.path.join(ROOT, path))
  for flag in flags:
    if flag.startswith("--config."):
      key, value = flag.removeprefix("--config.").split("=")
      *parents, leaf = key.split(".")
      node = functools.reduce(lambda n, p: n[p], parents, config)
      node[leaf] = type(node[leaf])(value)
  return config


def test_two_processes_match_one(tmp_path):
  multi = tmp_path / "two_processes"
  # the dcn axis spans the two processes: a hybrid mesh grouped by process
  flags = [f for f in TINY if not f.startswith("--config.mesh")] + [
      f"--config.num_steps={STEPS}", "--config.log_every=1", "--config.mesh.data=-1",
      "--config.mesh.dcn_data=2", "--config.checkpoint.every=0", f"--workdir={multi}"]
  launched = subprocess.Popen(
      ["bash", "launch/local.sh", "--num_processes", "2", "--devices_per_process", "4",
       "--", *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

  one_process = [f for f in flags if not f.startswith("--config.mesh")] + [
      "--config.mesh.data=8"]
  train.train(config_from_flags(one_process), str(tmp_path / "one_process"))
  out, _ = launched.communicate(timeout=600)
  assert launched.returncode == 0, out[-3000:]

  expected = losses(tmp_path / "one_process")
  assert len(expected) == STEPS
  np.testing.assert_allclose(losses(multi), expected, rtol=2e-5)
  assert os.listdir(multi / "checkpoints") == [str(STEPS)]
  rank1 = open(multi / "logs" / "rank_1.log").read()
  assert "loss" not in rank1  # only process 0 prints progress
