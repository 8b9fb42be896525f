"""Preemption: SIGTERM is seen at the next step boundary; several processes agree on it."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from phd_jax import checkpoint, preemption
from run_helpers import REPO_ROOT


def test_preemption_guard_sees_sigterm_at_the_next_step():
  before = signal.getsignal(signal.SIGTERM)
  guard = preemption.PreemptionGuard()
  try:
    assert not guard.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)  # without the guard this would end pytest
    assert guard.reached(2)
  finally:
    guard.close()
  assert signal.getsignal(signal.SIGTERM) == before


# One of two processes gets SIGTERM: both must stop at the same step, save there, and each
# get back its own data iterator state and its shards.
TWO_PROCESS_DRIVER = """
import os, signal, sys, time
process, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import jax
jax.distributed.initialize(f"localhost:{port}", 2, process)
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from phd_jax import checkpoint, defaults, preemption, state
mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
full = np.arange(32.0).reshape(8, 4)
def array(value, *spec):
  return jax.make_array_from_callback(np.shape(value), NamedSharding(mesh, PartitionSpec(*spec)),
                                      lambda index: value[index])
config = defaults.get_config()
config.checkpoint.every = 0  # only the preemption save
guard = preemption.PreemptionGuard()
with checkpoint.Checkpointer(workdir, config) as ckpt:
  for step in range(1, 3000):
    if process == 1 and step == 5:
      os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)
    if guard.reached(step):
      saved = state.TrainState(step=array(np.int32(step)),
                               params={"w": array(step * full, "data")}, opt_state={})
      ckpt.save(step, saved, {"process": process, "step": step}, force=True)
      break
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          saved)
  restored, data_state = ckpt.restore(abstract)
shard = restored.params["w"].addressable_shards[0]
assert np.array_equal(np.asarray(shard.data), step * full[shard.index])
print("stopped", step, "data", data_state["process"], data_state["step"], flush=True)
"""


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_stop_at_one_step_and_keep_their_own_data_state(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "PYTHONPATH": str(REPO_ROOT)}
  port = str(_free_port())
  processes = [subprocess.Popen([sys.executable, "-c", TWO_PROCESS_DRIVER, str(i), port,
                                 str(tmp_path)], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in processes]
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  lines = [out.strip().splitlines()[-1].split() for out, _ in outputs]
  steps = {int(line[1]) for line in lines}
  assert len(steps) == 1 and min(steps) >= 5  # the same step on both, at or after SIGTERM
  step = steps.pop()
  assert [(int(line[3]), int(line[4])) for line in lines] == [(0, step), (1, step)]
  folder = tmp_path / "checkpoints" / str(step)
  assert checkpoint.folder_problem(folder) is None
  assert sorted(p.name for p in (folder / "data").glob("process_*")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
