"""End to end through `python -m phd_jax.main`: runs killed with SIGKILL, stopped by
SIGTERM, resumed from damaged checkpoints, from a busy workdir or with another config,
against the same run left alone."""

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from checkpoint_helpers import flip_a_bit
from phd_jax import checkpoint, sharding, state
from run_helpers import REPO_ROOT, SHORT_RUN, config_flags

pytestmark = pytest.mark.slow  # each test starts `python -m phd_jax.main`

STEPS = 12
FLAGS = ["--config=configs/tiny.py:PHD-CSWA-2-4-8",
         *config_flags(SHORT_RUN | {"num_steps": STEPS, "model.mlp_dim": 32, "log_every": 1,
                                    "optim.warmup_steps": 2, "checkpoint.every": 1,
                                    "checkpoint.keep": STEPS})]
# Runs phd_jax.main with a fault injected when the loop asks to save step AT:
#   kill: wait until step AT-1 is on disk, start saving AT, SIGKILL this process mid-write;
#   term: send SIGTERM to this process (as a scheduler would) and carry on;
#   stall: write <workdir>/stalled and sleep (a run still training when another starts).
DRIVER = """
import os, runpy, signal, sys, time
from phd_jax import checkpoint
fault, at = sys.argv[1], int(sys.argv[2])
original = checkpoint.Checkpointer.save
def save(self, step, *args, **kwargs):
  if int(step) == at and fault == "stall":
    open(os.path.join(os.path.dirname(self.directory), "stalled"), "w").close()
    time.sleep(600)
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


def _command(workdir, fault=None, at=0, extra=()):
  command = [sys.executable, "-m", "phd_jax.main"]
  if fault:
    command = [sys.executable, "-c", DRIVER, fault, str(at)]
  return command + FLAGS + list(extra) + [f"--workdir={workdir}"]


ENV = {**os.environ, "JAX_PLATFORMS": "cpu",  # 2 devices: sharded saves; fast compiles
       "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
                    "--xla_backend_optimization_level=0"}


def _run(workdir, fault=None, at=0, extra=()):
  return subprocess.run(_command(workdir, fault, at, extra), cwd=REPO_ROOT, env=ENV,
                        capture_output=True, text=True, timeout=600)


def _warnings(lines):
  """Each line one absl warning (a step set aside, a lock taken over): nothing else."""
  return all(re.match(r"W\d{4} \d\d:\d\d:\d\d", line) for line in lines)


def _one_line_error(result, *phrases):
  """The run exited 1 with the error as the last line of stderr, only one-line warnings
  before it and nothing after it (no traceback, no asyncio report at exit)."""
  assert result.returncode == 1, (result.stdout, result.stderr[-3000:])
  lines = result.stderr.splitlines()
  assert lines and lines[-1].startswith("phd_jax.main: error: "), result.stderr[-3000:]
  assert _warnings(lines[:-1]), result.stderr[-3000:]
  for phrase in phrases:
    assert phrase in lines[-1], (phrase, lines[-1])


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
  config = checkpoint.saved_config(workdir)
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
  last = max(_losses(workdir))
  assert last < STEPS
  ckpt_steps = sorted(int(p) for p in os.listdir(os.path.join(workdir, "checkpoints"))
                      if p.isdigit())
  assert ckpt_steps[-1] == last and last in (5, 6)
  assert stopped.stdout.splitlines()[-1] == (
      f"preempted at step {last}, saved step {last}; resume with the same command")
  assert "done:" not in stopped.stdout
  _assert_same_params(workdir, uninterrupted, last)
  resumed = _run(workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"restored step {last} from {workdir}/checkpoints/{last}\n" in resumed.stdout
  assert re.search(rf"^done: step {STEPS}, loss [\d.]+;", resumed.stdout, re.M)
  _assert_same_params(workdir, uninterrupted, STEPS)


def _copy_until(source, workdir, step):
  """`source`'s workdir as it was after `step`: later checkpoints and metrics dropped."""
  shutil.copytree(source, workdir)
  for name in os.listdir(os.path.join(workdir, "checkpoints")):
    if int(name) > step:
      shutil.rmtree(os.path.join(workdir, "checkpoints", name))
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    lines = [line for line in f if json.loads(line)["step"] <= step]
  with open(path, "w") as f:
    f.writelines(lines)


def _garble(path):
  """Same-size garbage: the recorded sizes still match; without checksums only reading it
  back fails."""
  size = os.path.getsize(path)
  with open(path, "wb") as f:
    f.write(bytes(range(256)) * (size // 256) + bytes(size % 256))


def _array_file(folder, item="params"):
  files = glob.glob(os.path.join(folder, item, "**", "d", "*"), recursive=True)
  return max(files, key=os.path.getsize)


# Every kind of file a step writes: {kind: its file in a step folder}.
STEP_FILES = {
    "params": _array_file,
    "optimizer state": lambda folder: _array_file(folder, "train_state"),
    "data iterator state": lambda folder: os.path.join(folder, "data", "process_0-of-1.json"),
    "config": lambda folder: os.path.join(folder, "config", "config.json"),
    "metadata": lambda folder: os.path.join(folder, "meta", "meta.json"),
}


def _assert_continues_as(workdir, expected_workdir, first_step):
  """Steps first_step.. logged again, each with the uninterrupted run's loss."""
  expected, got = _losses(expected_workdir), _losses(workdir)
  assert sorted(got) == list(range(1, STEPS + 1))
  for step in range(first_step, STEPS + 1):
    assert got[step][-1] == expected[step][0], step
  _assert_same_params(workdir, expected_workdir, STEPS)


@pytest.mark.parametrize("kind", STEP_FILES)
def test_a_flipped_bit_sets_the_newest_step_aside_and_the_previous_is_resumed(
    tmp_path, uninterrupted, kind):
  """A same-size change that may still read back (another number in a JSON file, another
  bit in an array chunk): the checksum tells, in one line, before anything is restored."""
  workdir = str(tmp_path / "run")
  _copy_until(uninterrupted, workdir, 8)
  step_folder = os.path.join(workdir, "checkpoints", "8")
  damaged = STEP_FILES[kind](step_folder)
  flip_a_bit(damaged)
  resumed = _run(workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"restored step 7 from {workdir}/checkpoints/7\n" in resumed.stdout
  [line] = resumed.stderr.splitlines()
  assert _warnings([line]) and (
      f"checkpoint {step_folder} is corrupted: {os.path.relpath(damaged, step_folder)} does "
      f"not match the crc32 recorded when it was saved): moved to {step_folder}.corrupt, not "
      "deleted.") in line, line
  assert os.path.isdir(step_folder + ".corrupt")  # kept, not deleted
  _assert_continues_as(workdir, uninterrupted, 8)


def test_unreadable_newest_step_without_checksums_is_set_aside_when_its_restore_fails(
    tmp_path, uninterrupted):
  workdir = str(tmp_path / "run")
  _copy_until(uninterrupted, workdir, 8)
  _garble(_array_file(os.path.join(workdir, "checkpoints", "8")))
  resumed = _run(workdir, extra=["--config.checkpoint.checksums=false"])
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"restored step 7 from {workdir}/checkpoints/7\n" in resumed.stdout
  [line] = resumed.stderr.splitlines()  # no report of Orbax's abandoned reads at exit
  assert _warnings([line]) and f"could not restore checkpoint {workdir}/checkpoints/8" in line
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "8.corrupt"))
  _assert_continues_as(workdir, uninterrupted, 8)


def test_all_checkpoints_damaged_refuses_unless_restart_is_allowed(tmp_path, uninterrupted):
  workdir = str(tmp_path / "run")
  _copy_until(uninterrupted, workdir, 2)
  for step in (1, 2):
    _garble(_array_file(os.path.join(workdir, "checkpoints", str(step))))
  refused = _run(workdir, extra=["--config.checkpoint.checksums=false"])  # reads fail
  _one_line_error(refused, f"no checkpoint in {workdir}/checkpoints reads back whole",
                  "1.corrupt, 2.corrupt", "--allow_restart", workdir)
  _one_line_error(_run(workdir), "1.corrupt, 2.corrupt")  # still refused: nothing was lost
  restarted = _run(workdir, extra=["--allow_restart"])
  assert restarted.returncode == 0, restarted.stderr[-3000:]
  assert "restored" not in restarted.stdout
  _assert_continues_as(workdir, uninterrupted, 1)


def test_finished_run_rerun_says_complete(tmp_path, uninterrupted):
  workdir = str(tmp_path / "run")
  shutil.copytree(uninterrupted, workdir)
  rerun = _run(workdir)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert rerun.stdout.splitlines()[-2:] == [
      f"restored step {STEPS} from {workdir}/checkpoints/{STEPS}",
      f"already complete: step {STEPS} of {STEPS} in {workdir} (nothing to train; evaluate "
      "it with python -m phd_jax.evaluate)"]
  assert _losses(workdir) == _losses(uninterrupted)  # nothing trained or logged


def test_config_changes_on_resume_are_shown_and_experiment_changes_refused(
    tmp_path, uninterrupted):
  workdir = str(tmp_path / "run")
  _copy_until(uninterrupted, workdir, 8)
  config_json = open(os.path.join(workdir, "config.json")).read()
  refused = _run(workdir, extra=["--config.optim.lr=0.01", "--config.log_every=2"])
  _one_line_error(refused, "with other optim.lr would make it another experiment",
                  "--allow_config_change")
  assert "  optim.lr: 0.003 -> 0.01  [changes the experiment]" in refused.stdout
  assert "  log_every: 1 -> 2\n" in refused.stdout
  assert open(os.path.join(workdir, "config.json")).read() == config_json
  assert max(_losses(workdir)) == 8  # nothing trained

  harmless = _run(workdir, extra=["--config.log_every=2", "--config.checkpoint.every=2"])
  assert harmless.returncode == 0, harmless.stderr[-3000:]
  assert "  log_every: 1 -> 2\n" in harmless.stdout
  # the earlier config.json is kept beside the new one
  kept = glob.glob(os.path.join(workdir, "config.*.json"))
  assert [open(p).read() for p in kept] == [config_json]
  assert json.load(open(os.path.join(workdir, "config.json")))["log_every"] == 2
  expected = _losses(uninterrupted)
  assert _losses(workdir)[STEPS][-1] == pytest.approx(
      (expected[STEPS - 1][0] + expected[STEPS][0]) / 2)  # the mean over log_every steps


def test_config_change_allowed_on_request(tmp_path, uninterrupted):
  workdir = str(tmp_path / "run")
  shutil.copytree(uninterrupted, workdir)
  longer = [f"--config.num_steps={STEPS + 2}"]
  _one_line_error(_run(workdir, extra=longer), "with other num_steps")
  allowed = _run(workdir, extra=longer + ["--allow_config_change"])
  assert allowed.returncode == 0, allowed.stderr[-3000:]
  assert f"  num_steps: {STEPS} -> {STEPS + 2}  [changes the experiment]" in allowed.stdout
  assert max(_losses(workdir)) == STEPS + 2
  # Another model shape cannot be restored: refused, and the checkpoints are not set aside
  # as damaged.
  wider = _run(workdir, extra=longer + ["--allow_config_change", "--config.model.mlp_dim=64"])
  assert wider.returncode == 2 and "Traceback" not in wider.stderr, wider.stderr[-3000:]
  assert re.search(r"phd_jax.main: error: checkpoint .*/checkpoints/14 holds params.* of "
                   r"shape \(.*32.*\), the config's model \(.*64.*\)\n$", wider.stderr)
  assert not glob.glob(os.path.join(workdir, "checkpoints", "*.corrupt*"))


def test_second_trainer_on_a_workdir_refuses_until_the_first_is_killed(tmp_path, uninterrupted):
  workdir = str(tmp_path / "run")
  first = subprocess.Popen(_command(workdir, "stall", 4), cwd=REPO_ROOT, env=ENV,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(workdir, "stalled")):
      assert first.poll() is None and time.time() < deadline, first.communicate()
      time.sleep(0.2)
    logged = _losses(workdir)
    second = _run(workdir)
    _one_line_error(second, f"{workdir} is in use by another training run: host "
                    f"{socket.gethostname()} pid {first.pid} (started ", "lock.json")
    assert _losses(workdir) == logged  # the second run trained nothing
  finally:
    first.kill()  # SIGKILL: the lock file stays behind
    first.communicate()
  assert os.path.exists(os.path.join(workdir, "lock.json"))
  resumed = _run(workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"pid {first.pid}" in resumed.stderr and "its process is gone" in resumed.stderr
  assert not os.path.exists(os.path.join(workdir, "lock.json"))  # released at the end
  _assert_continues_as(workdir, uninterrupted, 4)


@pytest.mark.slow
def test_two_processes_set_aside_a_step_whose_damage_only_process_1_reads(tmp_path):
  """Each process checks the checksums of a share of a step's files (process i: every
  other file from the i-th, in name order); both learn of a mismatch in process 1's share,
  set the step aside together and resume from the step before."""
  workdir = tmp_path / "run"

  def launch():
    return subprocess.run(
        ["bash", "launch/local.sh", "--num_processes", "2", "--devices_per_process", "1",
         "--platform", "cpu", "--python", sys.executable, "--", *FLAGS,
         "--config.num_steps=3", f"--workdir={workdir}"],
        cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=600)

  first = launch()
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  step_folder = workdir / "checkpoints" / "3"
  names = sorted(json.loads((step_folder / "integrity.json").read_text())["crc32"])
  flip_a_bit(step_folder / names[1])  # process 1's first file
  resumed = launch()
  assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
  logs = [(workdir / "logs" / f"rank_{rank}.log").read_text() for rank in (0, 1)]
  assert f"restored step 2 from {workdir}/checkpoints/2" in logs[0]
  assert (f"checkpoint {step_folder} is corrupted: {names[1]} does not match the crc32 "
          "recorded when it was saved or cannot be read (found by process 1)") in logs[0]
  assert (workdir / "checkpoints" / "3.corrupt").is_dir()
  assert checkpoint.folder_problem(step_folder) is None  # step 3 trained and saved again
