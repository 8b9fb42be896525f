"""Finding the complete checkpoints a path names: step folders, their completeness, and the
fallback from a damaged step to the one before.

A folder counts as a checkpoint only with Orbax's commit marker and every file at its
recorded size (`integrity.folder_problem`): saves killed midway and truncated copies are
skipped with a warning, never deleted.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from phd_jax.checkpoint.integrity import DamagedCheckpoint, folder_problem
from phd_jax.checkpoint.items import PARAMS

TMP_SUFFIX = ocp.path.atomicity_types.TMP_DIR_SUFFIX
CORRUPT_SUFFIX = ".corrupt"


def absolute(path) -> epath.Path:
  """Orbax wants absolute local paths; remote ones (gs://...) are taken as they are."""
  return epath.Path(path if "://" in str(path) else os.path.abspath(path))


def step_folders(directory: epath.Path) -> dict[int, epath.Path]:
  if not directory.is_dir():
    return {}
  return {int(p.name): p for p in directory.iterdir() if p.name.isdigit()}


def describe_missing(directory: epath.Path, step: int) -> str:
  """A sentence on what is left of `step` in `directory` (for errors)."""
  leftovers = sorted(str(p) for p in directory.glob(f"{step}.*"))
  if leftovers:
    return f"found only {', '.join(leftovers)} (an unfinished or set-aside save)"
  steps = sorted(step_folders(directory))
  return f"no such step; step folders there: {steps or 'none'}"


def complete_steps(folders: dict[int, epath.Path], warned: set[str]):
  """The steps whose folders pass `folder_problem`, newest first (lazily); warns once per
  bad folder."""
  for step in sorted(folders, reverse=True):
    problem = folder_problem(folders[step])
    if problem is None:
      yield step
    elif str(folders[step]) not in warned:
      warned.add(str(folders[step]))
      logging.warning("Skipping incomplete or corrupted checkpoint %s: %s.", folders[step],
                      problem)


def newest_readable(folders, read, on_damaged):
  """(folder, read(folder)) of the first of `folders` (newest first) that reads back whole,
  or None. Each that raises DamagedCheckpoint goes to `on_damaged(folder, error)` first:
  the trainer sets it aside there, a reader only says so."""
  for folder in folders:
    try:
      return folder, read(folder)
    except DamagedCheckpoint as e:
      on_damaged(folder, e)
  return None


def complete_folders(path):
  """The complete checkpoint folders `path` names, newest first (lazily): a step folder or
  export itself, else the complete steps of a checkpoints directory or of a workdir's
  `checkpoints/`. ValueError when there is none."""
  path = absolute(path)
  if not path.exists():
    raise ValueError(f"checkpoint path {path} does not exist")
  if (path / PARAMS).exists():
    if problem := folder_problem(path):
      raise DamagedCheckpoint(f"checkpoint {path} is incomplete or corrupted: {problem}")
    yield path
    return
  directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  folders = step_folders(directory)
  found = False
  for step in complete_steps(folders, set()):
    found = True
    yield folders[step]
  if not found:
    raise ValueError(f"{path} holds no complete checkpoint (expected a workdir, its "
                     f"checkpoints/ directory, a step folder or an export; step folders "
                     f"found: {sorted(folders) or 'none'})")


def resolve(path) -> epath.Path:
  """The complete checkpoint folder `path` names: a step folder or export itself, else the
  newest complete step of a checkpoints directory or of a workdir's `checkpoints/`."""
  return next(complete_folders(path))
