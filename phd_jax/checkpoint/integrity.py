"""What makes a checkpoint folder whole: complete, and every file holding what was written.

Each save records `integrity.json` in its folder before the commit: the size of every file
and, unless `checkpoint.checksums` is off, its CRC-32 (`{"files": {name: bytes}, "crc32":
{name: hex}}`; folders saved without checksums simply lack "crc32"). Two checks read it:
  `folder_problem`: the commit marker and every size (a stat per file). Cheap, so it runs
      whenever steps are listed: saves killed midway and truncated copies are skipped.
  `check`: that, then the checksum of every file a reader is about to read (the trainer's
      resume: the whole step). It reads every byte, so it runs only on the step being read;
      a flipped bit or same-size garbage is a `DamagedCheckpoint` naming the file.
The checksums are computed by the primary process in Orbax's background commit thread,
reading the files back after every process wrote them: off the training thread, in
chunks, through epath (local disks and gs:// alike). CRC-32 (zlib) catches every 1-bit to
32-bit burst error and was the fastest of the stdlib's sums here (`bench/checkpoint.py`).
"""

from __future__ import annotations

import json
import zlib

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

INTEGRITY_FILE = "integrity.json"
CHECKSUM = "crc32"  # the record's key for the checksums, and their algorithm
COMMIT_FILE = ocp.path.atomicity_types.COMMIT_SUCCESS_FILE
# Written by the commit itself, after the record.
_UNRECORDED = {COMMIT_FILE, "_CHECKPOINT_METADATA", INTEGRITY_FILE}
_CHUNK_BYTES = 8 * 2**20


class DamagedCheckpoint(ValueError):
  """A step folder that is incomplete or whose files cannot be read back as written."""


def _files(root: epath.Path):
  for path in root.iterdir():
    if path.is_dir():
      yield from _files(path)
    else:
      yield path


def _size(path: epath.Path) -> int:
  stat = path.stat()  # os.stat_result locally, epath's StatResult on cloud storage
  return stat.st_size if hasattr(stat, "st_size") else stat.length


def checksum(path: epath.Path) -> str:
  """The CRC-32 of a file, read in chunks (hex)."""
  crc = 0
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK_BYTES):
      crc = zlib.crc32(chunk, crc)  # releases the GIL on large chunks
  return f"{crc:08x}"


def record(final_dir: epath.Path, checksums: bool) -> None:
  """Write integrity.json into the not yet committed folder of `final_dir`.

  Runs as Orbax's post-finalization callback: on the primary process, in the background
  commit thread, after every process has written its files and before the commit marker
  and rename.
  """
  tmp_cls = ocp.path.atomicity_defaults.get_default_temporary_path_class(final_dir)
  tmp_dir = tmp_cls.from_final(final_dir).get()
  files = sorted((str(p.relative_to(tmp_dir)), p) for p in _files(tmp_dir)
                 if p.name not in _UNRECORDED)
  written = {"files": {name: _size(path) for name, path in files}}
  if checksums:
    written[CHECKSUM] = {name: checksum(path) for name, path in files}
  (tmp_dir / INTEGRITY_FILE).write_text(json.dumps(written, sort_keys=True))


def _read_record(folder: epath.Path) -> dict:
  return json.loads((folder / INTEGRITY_FILE).read_text())


def folder_problem(folder: epath.Path) -> str | None:
  """Why `folder` is not a complete checkpoint of the recorded sizes, or None when it is."""
  if not folder.is_dir():
    return "not a directory"
  if not (folder / COMMIT_FILE).exists():
    return f"no {COMMIT_FILE}: the save never finished"
  try:
    sizes = _read_record(folder)["files"]
  except FileNotFoundError:
    return f"no {INTEGRITY_FILE}: not written by phd_jax or damaged"
  except (ValueError, KeyError, TypeError):
    return f"{INTEGRITY_FILE} is damaged"
  for relative, size in sorted(sizes.items()):
    path = folder / relative
    if not path.exists():
      return f"{relative} is missing"
    if (actual := _size(path)) != size:
      return f"{relative} has {actual} bytes, {size} were written"
  return None


def _first_mismatch(folder: epath.Path, sums: dict, names: list[str],
                    indices: range) -> tuple[int, str]:
  """(index, why) of the first of names[indices] whose file differs from its checksum in
  `sums`; (len(names), "") when none does."""
  for i in indices:
    try:
      if checksum(folder / names[i]) != sums[names[i]]:
        return i, f"does not match the {CHECKSUM} recorded when it was saved"
    except OSError as e:
      return i, f"cannot be read: {e}"
  return len(names), ""


def check(folder: epath.Path, items=None, checksums: bool = True) -> None:
  """Raise DamagedCheckpoint unless `folder` passes `folder_problem` and, with `checksums`,
  every recorded file under the top-level `items` (default: all) has its recorded
  checksum (folders saved without checksums pass that part). Call from every process:
  each reads a share of the files."""
  if problem := folder_problem(folder):
    raise DamagedCheckpoint(f"checkpoint {folder} is incomplete or corrupted: {problem}")
  sums = _read_record(folder).get(CHECKSUM) if checksums else None
  if not sums:
    return
  names = sorted(n for n in sums if items is None or n.split("/", 1)[0] in items)
  process, count = jax.process_index(), jax.process_count()
  bad, why = _first_mismatch(folder, sums, names, range(process, len(names), count))
  if count > 1:  # every process takes the same decision, naming the same file
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    found = multihost_utils.process_allgather(np.int32(bad))
    if int(found.min()) < bad:
      bad = int(found.min())
      why = (f"does not match the {CHECKSUM} recorded when it was saved or cannot be read "
             f"(found by process {int(found.argmin())})")
  if bad < len(names):
    raise DamagedCheckpoint(f"checkpoint {folder} is corrupted: {names[bad]} {why}")
