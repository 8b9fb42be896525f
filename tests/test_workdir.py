"""The workdir lock's stale rule and config comparison on resume (end to end in
test_resume.py)."""

import json
import os
import socket
import time

import pytest

from phd_jax import config as config_lib
from phd_jax import defaults, workdir


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
