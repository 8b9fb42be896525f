"""The workdir lock's stale rule, config comparison on resume (end to end in
test_resume.py), whole-file writes, and a workdir that cannot be written as one line."""

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from phd_jax import config as config_lib
from phd_jax import defaults, workdir
from run_helpers import REPO_ROOT, SHORT_RUN, config_flags


def _holder(path, **fields):
  record = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": None,
            "started": "then", "token": "other", "heartbeat": time.time(), **fields}
  (path / workdir.LOCK_FILE).write_text(json.dumps(record))


def test_a_live_holder_on_another_host_is_named(tmp_path):
  _holder(tmp_path, host="node-7", pid=4242)
  with pytest.raises(workdir.RunRefused, match=f"{tmp_path} is in use by another training "
                     "run: host node-7 pid 4242 "):
    workdir.WorkdirLock(tmp_path).acquire()


def test_a_live_holder_on_this_host_is_named(tmp_path):
  _holder(tmp_path, pid=os.getppid())  # a process that is alive
  with pytest.raises(workdir.RunRefused, match=f"pid {os.getppid()} "):
    workdir.WorkdirLock(tmp_path).acquire()


@pytest.mark.parametrize("holder", [
    {"host": "node-7", "heartbeat": time.time() - workdir.STALE_S - 1},  # stopped beating
    {"pid": 2**22 + 1},  # gone from this host (above the default pid_max)
    {"process_start": "0"},  # this pid, but another process started since
])
def test_a_stale_lock_is_taken_over(tmp_path, holder):
  _holder(tmp_path, **holder)
  with workdir.WorkdirLock(tmp_path):
    record = json.loads((tmp_path / workdir.LOCK_FILE).read_text())
    assert record["pid"] == os.getpid() and record["token"] != "other"
  assert not (tmp_path / workdir.LOCK_FILE).exists()


def test_config_changes_ignore_fields_an_older_checkpoint_lacks_at_their_default():
  config = defaults.get_config("PHD-2")
  saved = config_lib.from_json(config_lib.to_json(config))
  del saved.model["qk_norm_per_head"]  # saved before the field existed; default False
  assert workdir.config_changes(saved, config) == []
  config.model.qk_norm_per_head = True
  assert workdir.config_changes(saved, config) == [
      ("model.qk_norm_per_head", "(absent)", True)]


def test_harmless_and_experiment_changes(capsys):
  saved = defaults.get_config("PHD-2")
  config = defaults.get_config("PHD-3")
  config.log_every, config.mesh.fsdp = 7, 2
  with pytest.raises(workdir.RunRefused, match="with other phd.variant would make it another"):
    workdir.check_config_changes(saved, config, "step 5", allow=False)
  out = capsys.readouterr().out
  assert "  phd.variant: 'PHD-2' -> 'PHD-3'  [changes the experiment]\n" in out
  assert "  log_every: 50 -> 7\n" in out and "  mesh.fsdp: 1 -> 2\n" in out
  workdir.check_config_changes(saved, config, "step 5", allow=True)  # asked for: no error


@pytest.mark.parametrize("content", ["", '{"host": "node-7", "pi'])  # empty, torn
def test_an_empty_or_torn_lock_is_taken_over_saying_so(tmp_path, caplog, content):
  (tmp_path / workdir.LOCK_FILE).write_text(content)
  with caplog.at_level(logging.WARNING), workdir.WorkdirLock(tmp_path):
    assert json.loads((tmp_path / workdir.LOCK_FILE).read_text())["pid"] == os.getpid()
  assert [r.getMessage() for r in caplog.records] == [
      f"Taking over the lock {tmp_path}/lock.json: the file is empty or unreadable (its "
      "creator died before writing it)."]


def _mount_tmpfs(path, options):
  """Mount a tmpfs at `path` (needs root: skips the test elsewhere)."""
  path.mkdir(exist_ok=True)
  if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                    capture_output=True, check=False).returncode:
    pytest.skip("mounting a tmpfs needs root")


def _fill(directory, leave_bytes):
  """Fill the file system of `directory` up, then free `leave_bytes` (whole pages)."""
  filler = directory / "filler"
  fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
  try:
    while os.write(fd, b"x" * 4096):
      pass
  except OSError as e:
    assert e.errno == errno.ENOSPC
  finally:
    os.close(fd)
  os.truncate(filler, filler.stat().st_size - leave_bytes)


def test_a_full_disk_while_replacing_config_json_leaves_the_old_one_whole(tmp_path):
  """A real full file system: room for the kept copy of the old config.json, none for the
  new one. The old file stays whole and no temporary file is left behind."""
  disk = tmp_path / "disk"
  _mount_tmpfs(disk, "size=64k")
  try:
    old, new = defaults.get_config("PHD-2"), defaults.get_config("PHD-3")
    workdir.write_config(disk, old)
    _fill(disk, leave_bytes=4096)
    with pytest.raises(OSError) as raised:
      workdir.write_config(disk, new)
    assert raised.value.errno == errno.ENOSPC
    assert (disk / "config.json").read_text() == config_lib.to_json(old)
    [kept] = disk.glob("config.*.json")  # the old one's copy, written before the failure
    assert kept.read_text() == config_lib.to_json(old)
    assert {p.name for p in disk.iterdir()} == {"config.json", kept.name, "filler"}
  finally:
    subprocess.run(["umount", str(disk)], check=True)


TINY = ["--config=configs/tiny.py:PHD-CSWA-2-2-4",
        *config_flags(SHORT_RUN | {"log_every": 3, "optim.warmup_steps": 2, "mesh.data": 2,
                                   "mesh.fsdp": 2, "mesh.tensor": 2})]


def _train(workdir_path, *extra):
  """(exit status, stderr) of `python -m phd_jax.main` on 8 fake CPU devices."""
  result = subprocess.run([sys.executable, "-m", "phd_jax.main", *TINY, *extra,
                           f"--workdir={workdir_path}"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)
  return result.returncode, result.stderr


def _assert_cannot_write(stderr, path, problem):
  assert stderr == (f"phd_jax.main: error: cannot write {path}: {problem}; --workdir must be "
                    "a directory this run can write\n"), stderr


@pytest.mark.slow
def test_a_workdir_under_proc_is_one_line():
  code, err = _train("/proc/phd_jax_run", "--config.num_steps=2")
  assert code == 1
  _assert_cannot_write(err, "/proc/phd_jax_run", "No such file or directory")


@pytest.mark.slow
def test_a_workdir_that_is_a_file_is_one_line_and_the_file_is_kept(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("mine")
  code, err = _train(path, "--config.num_steps=2")
  assert code == 1
  _assert_cannot_write(err, path, "Not a directory")
  assert path.read_text() == "mine"


@pytest.mark.slow
def test_a_workdir_on_a_read_only_file_system_is_one_line(tmp_path):
  """A real read-only mount (a tmpfs remounted read-only) holding the workdir."""
  disk = tmp_path / "disk"
  _mount_tmpfs(disk, "size=1m")
  try:
    (disk / "run").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    code, err = _train(disk / "run", "--config.num_steps=2")
  finally:
    subprocess.run(["umount", str(disk)], check=True)
  assert code == 1
  _assert_cannot_write(err, disk / "run" / workdir.LOCK_FILE, "Read-only file system")


@pytest.mark.slow
@pytest.mark.parametrize("size", ["800k", "1m", "1200k"])
def test_a_disk_filling_up_during_a_sharded_save_is_one_line(tmp_path, size):
  """A small tmpfs fills up inside a save on 8 devices: Orbax's other writes then fail one
  after another, each of them (in about half the runs) printing an "Event loop is closed"
  traceback unless silenced. Sizes: the disk fills at different points of a save."""
  disk = tmp_path / "disk"
  _mount_tmpfs(disk, f"size={size}")
  try:
    code, err = _train(disk / "run", "--config.num_steps=20", "--config.checkpoint.every=1")
  finally:
    subprocess.run(["umount", str(disk)], check=True)
  assert code == 1
  assert err.count("\n") == 1 and err.startswith(
      f"phd_jax.main: error: no space left on device writing ") and str(disk / "run") in err, err
