"""What a training workdir holds besides its checkpoints: the lock of the run that trains in
it, and config.json with the configs of earlier runs.

Lock: `lock.json` names the holder (host, pid, start time, a random token) and a heartbeat
the holder rewrites every `HEARTBEAT_S` seconds. It is created exclusively (O_EXCL on a
local disk; on gs:// and other object stores, written and read back after a pause, so of
two writers only the last keeps it, and the other sees the winner's token). A lock is
stale, and is taken over with a warning, when its holder ran on this host and that process
is gone (kill -9, a crash), or when its heartbeat is older than `STALE_S` (a holder on
another host that died). Only process 0 of a multi-process run takes it. Other jobs on a
run hold a lock of their own the same way, in their own folder (the evaluator following a
run: `<run>/eval/lock.json`), so that two of a kind are refused while neither touches the
trainer's.

Config changes on resume: `config_changes` lists what differs from the resumed
checkpoint's config. Fields in `HARMLESS_FIELDS` (logging, evaluation, checkpointing,
mesh, memory/speed settings) may change; any other change (variant, model shape,
seq_len, batch_size, data, seed, optimizer and num_steps, which moves the LR schedule)
makes it another experiment and is refused unless asked for. Before config.json is
replaced by a different config, it is kept as `config.<time it was written>.json`. Both,
and the lock's heartbeats, are written whole (`write_atomically`): a kill or a full disk
midway leaves the previous file, never half of one.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import uuid

import jax
from absl import logging
from etils import epath

from phd_jax import config as config_lib
from phd_jax import defaults

LOCK_FILE = "lock.json"
HEARTBEAT_S = 30.0
STALE_S = 300.0  # ten missed heartbeats
REMOTE_SETTLE_S = 2.0  # between writing a remote lock and reading it back
# Settings a resumed run may change: they do not change what is trained (prefixes end in ".").
HARMLESS_FIELDS = ("log_every", "eval_every", "eval_batches", "eval_tasks", "eval_limit",
                   "eval_data_dir", "profile_steps", "microbatches", "data.eval_split",
                   "data.num_workers", "data.prefetch", "model.remat", "model.attention_impl",
                   "model.scan_layers", "mesh.", "checkpoint.", "metrics.")


class RunRefused(RuntimeError):
  """The run must not start; the message (one line) says why and what to do."""


# ---------------------------------------------------------------------------------------------
# The lock.


def _process_start(pid: int) -> str | None:
  """The kernel's start time of `pid` (Linux), telling a reused pid from the holder."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int, start: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # someone else's live process
  return start is None or _process_start(pid) in (None, start)


def _describe(holder: dict) -> str:
  return (f"host {holder.get('host')} pid {holder.get('pid')} (started {holder.get('started')}, "
          f"heartbeat {time.time() - holder.get('heartbeat', 0):.0f} s ago)")


def _stale_reason(holder: dict) -> str | None:
  """Why the lock of `holder` ({} for an empty or unreadable file) no longer holds, or None
  when its run may still be alive."""
  if not holder:
    return "the file is empty or unreadable (its creator died before writing it)"
  if holder.get("host") == socket.gethostname() and not _alive(holder.get("pid", -1),
                                                               holder.get("process_start")):
    return "its process is gone"
  if time.time() - holder.get("heartbeat", 0) > STALE_S:
    return f"no heartbeat for over {STALE_S:.0f} s"
  return None


class WorkdirLock:
  """The lock on a workdir, held from `acquire()` to `release()` (use as a context).

  kind: what holds it, for the refusal ("in use by another training run"); a job other
  than training locks a folder of its own (`<run>/eval` for the evaluator).
  """

  def __init__(self, workdir, kind: str = "training run"):
    self.path = epath.Path(workdir) / LOCK_FILE
    self._kind = kind
    self._remote = "://" in str(workdir)
    pid = os.getpid()
    self._holder = {"host": socket.gethostname(), "pid": pid,
                    "process_start": _process_start(pid),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": uuid.uuid4().hex}
    self._stop = threading.Event()
    self._thread = None

  def _record(self) -> str:
    return json.dumps({**self._holder, "heartbeat": time.time()})

  def _create(self) -> bool:
    """Create the lock file if there is none; True if this process now holds it."""
    if not self._remote:
      try:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "w") as f:
        f.write(self._record())
      return True
    if self.path.exists():
      return False
    self.path.write_text(self._record())
    time.sleep(REMOTE_SETTLE_S)  # a concurrent writer's file replaces ours meanwhile
    return self._holds()

  def _holds(self) -> bool:
    return (self._read() or {}).get("token") == self._holder["token"]

  def _read(self) -> dict | None:
    """The holder's record; None when there is no lock, {} when it cannot be read."""
    try:
      record = json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except ValueError:  # empty: its creator died between creating and writing it
      return {}
    return record if isinstance(record, dict) else {}

  def acquire(self) -> WorkdirLock:
    """Take the lock, taking over a stale one; RunRefused naming a live holder, OSError
    when the workdir cannot be written."""
    try:
      self.path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file of that name; os.makedirs would say "File exists"
      raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                               str(self.path.parent)) from None
    for _ in range(3):  # another starter may take over a stale lock at the same time
      if self._create():
        self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                        name="workdir_lock_heartbeat")
        self._thread.start()
        return self
      holder = self._read()
      if holder is None:
        continue  # released meanwhile
      reason = _stale_reason(holder)
      if reason is None:
        raise RunRefused(
            f"{self.path.parent} is in use by another {self._kind}: {_describe(holder)}. "
            f"Wait for it to finish, or if it is dead, delete {self.path} (it also expires "
            f"{STALE_S:.0f} s after its last heartbeat)")
      held_by = f" of {_describe(holder)}" if holder else ""
      logging.warning("Taking over the lock %s%s: %s.", self.path, held_by, reason)
      self.path.unlink(missing_ok=True)
    raise RunRefused(f"could not take the lock {self.path}: other runs keep taking it")

  def _refresh(self):
    write_atomically(self.path, self._record())

  def _heartbeat(self):
    while not self._stop.wait(HEARTBEAT_S):
      try:
        if self._holds():
          self._refresh()
      except OSError as e:  # e.g. a full disk: the run itself reports it
        logging.warning("Could not refresh the lock %s: %s", self.path, e)

  def release(self) -> None:
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    self._thread = None
    try:
      if self._holds():
        self.path.unlink(missing_ok=True)
    except OSError as e:
      logging.warning("Could not remove the lock %s: %s", self.path, e)

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


class ProcessZeroLock:
  """`WorkdirLock` taken by process 0 alone; every process learns whether it was refused."""

  def __init__(self, workdir):
    self._lock = WorkdirLock(workdir) if jax.process_index() == 0 else None

  def __enter__(self):
    refusal, error = "", None
    if self._lock is not None:
      try:
        self._lock.acquire()
      except RunRefused as e:
        refusal = str(e)
      except OSError as e:  # raised as it is (the run names the path), once all know it
        refusal, error = f"process 0 could not write {self._lock.path}: {e}", e
    if jax.process_count() > 1:
      refusal = _broadcast_text(refusal)
    if error is not None:
      raise error
    if refusal:
      raise RunRefused(refusal)
    return self

  def __exit__(self, *exc):
    if self._lock is not None:
      self._lock.release()


def _broadcast_text(text: str) -> str:
  """Process 0's `text` on every process."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  data = np.zeros(1024, np.uint8)
  encoded = text.encode()[:1024]
  data[:len(encoded)] = np.frombuffer(encoded, np.uint8)
  return bytes(multihost_utils.broadcast_one_to_all(data)).rstrip(b"\0").decode(errors="replace")


# ---------------------------------------------------------------------------------------------
# Config changes on resume.


def _harmless(field: str) -> bool:
  return any(field == f or (f.endswith(".") and field.startswith(f)) for f in HARMLESS_FIELDS)


def config_changes(saved, config) -> list[tuple[str, object, object]]:
  """(field, saved value, new value) of every field that differs. A field only one side
  has (saved by an older or newer phd_jax) counts only when its value is not the default."""
  absent = "(absent)"
  old = config_lib.flat_fields(saved)
  new = config_lib.flat_fields(config_lib.from_json(config_lib.to_json(config)))
  default = config_lib.flat_fields(defaults.get_config())
  changes = []
  for field in sorted(old.keys() | new.keys()):
    before, after = old.get(field, absent), new.get(field, absent)
    if absent in (before, after) and default.get(field, absent) in (before, after):
      continue
    if before != after:
      changes.append((field, before, after))
  return changes


def check_config_changes(saved, config, where: str, allow: bool) -> None:
  """Print what differs from the checkpoint's config (process 0); RunRefused when a change
  makes another experiment, unless `allow`."""
  changes = config_changes(saved, config)
  if not changes:
    return
  if jax.process_index() == 0:
    print(f"config differs from the one saved with {where}:", flush=True)
    for field, old, new in changes:
      kind = "" if _harmless(field) else "  [changes the experiment]"
      print(f"  {field}: {old!r} -> {new!r}{kind}", flush=True)
  experiment = [field for field, _, _ in changes if not _harmless(field)]
  if experiment and not allow:
    raise RunRefused(
        f"resuming {where} with other {', '.join(experiment)} would make it another "
        f"experiment; use a new --workdir, or pass --allow_config_change to resume anyway")


def write_atomically(path, text: str) -> None:
  """Write `text` to `path` so that no reader, kill or full disk midway leaves half of it:
  locally a temporary file renamed over `path`; object stores (gs://) write whole objects."""
  path = epath.Path(path)
  if "://" in str(path):
    path.write_text(text)
    return
  tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
  try:
    tmp.write_text(text)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_config(workdir, config) -> None:
  """Write config.json, first keeping a different earlier one as config.<its time>.json."""
  path = epath.Path(workdir) / "config.json"
  text = config_lib.to_json(config)
  if path.exists():
    old = path.read_text()
    if old == text:
      return
    written = time.strftime("%Y%m%dT%H%M%S", time.gmtime(path.stat().mtime))
    kept = path.parent / f"config.{written}.json"
    suffix = 1
    while kept.exists():
      kept, suffix = path.parent / f"config.{written}-{suffix}.json", suffix + 1
    write_atomically(kept, old)
  write_atomically(path, text)

