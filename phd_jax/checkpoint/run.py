"""The training run's checkpoints: `Checkpointer` saves and restores a TrainState, the
data iterator state and the config under `workdir/checkpoints/<step>/`.

Saves are asynchronous: Orbax writes into `<step>.orbax-checkpoint-tmp` and renames it to
`<step>` after writing `commit_success.txt` (on GCS the marker alone commits); the commit
hook records every file's size and checksum (`integrity`). Restoring compares the whole
step with its record first; a step that fails to read back raises `DamagedCheckpoint`, and
the trainer sets it aside (`set_aside`) and resumes from the previous one. The mesh and
device count may differ from the saving run's.
"""

from __future__ import annotations

import json

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from phd_jax.checkpoint import integrity
from phd_jax.checkpoint.folders import (CORRUPT_SUFFIX, TMP_SUFFIX, absolute, complete_steps,
                                        describe_missing, step_folders)
from phd_jax.checkpoint.integrity import folder_problem
from phd_jax.checkpoint.items import (CONFIG, CONFIG_FILE, DATA, PARAMS, TRAIN_STATE,
                                      config_items, data_file, handler_registry)
from phd_jax.checkpoint.reads import (check_shapes, quiet_abandoned_io, restore_error,
                                      restore_in_layout)


def _count(config, low: int, *names) -> None:
  for name in names:
    value = config.checkpoint[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      what = "a positive integer" if low == 1 else f"an integer >= {low}"
      raise ValueError(f"checkpoint.{name} must be {what}; got {value!r}")


def check_options(config) -> None:
  """The `checkpoint.*` settings (ValueError naming the field): `config.validate` asks here,
  and the checkpointer checks its own options."""
  c = config.checkpoint
  _count(config, 0, "every", "keep_period")
  _count(config, 1, "keep")
  if c.every and c.keep_period % c.every:
    raise ValueError(f"checkpoint.keep_period={c.keep_period} must be a multiple of "
                     f"checkpoint.every={c.every}, or it keeps (almost) nothing")
  for name in ("async_save", "checksums"):
    if not isinstance(c[name], bool):
      raise ValueError(f"checkpoint.{name} must be a bool; got {c[name]!r}")


class Checkpointer:
  """Saves and restores a run's TrainState, data iterator state and config under
  `workdir/checkpoints`, as `config.checkpoint` says (every, keep, keep_period, async_save).

  Call every method from all processes. Step folders that are not complete checkpoints
  (see `folder_problem`) are renamed to `<step>.corrupt` at start, with a warning, so that
  Orbax neither counts nor rotates them and the step can be saved again.
  """

  def __init__(self, workdir, config):
    check_options(config)
    self.directory = absolute(workdir) / "checkpoints"
    self._config = config
    self._async = config.checkpoint.async_save
    self._checksums = config.checkpoint.checksums
    self._warned: set[str] = set()
    self._saving_step = None
    quiet_abandoned_io()
    self._set_aside_broken()
    every = config.checkpoint.every
    keep = [ocp.checkpoint_managers.LatestN(n=config.checkpoint.keep)]
    if config.checkpoint.keep_period:
      keep.append(ocp.checkpoint_managers.EveryNSteps(config.checkpoint.keep_period))
    options = ocp.CheckpointManagerOptions(
        # Preemption saves are asked for explicitly (save(force=True)) by the loop.
        save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(
            [ocp.checkpoint_managers.FixedIntervalPolicy(every)] if every else []),
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(keep),
        # Always the async checkpointer: its commit hook, in the background, records the
        # files' sizes and checksums.
        enable_async_checkpointing=True,
        async_options=ocp.options.AsyncOptions(post_finalization_callback=self._record),
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          handler_registry=handler_registry())

  def _record(self):
    integrity.record(self.directory / str(self._saving_step), self._checksums)

  def _set_aside_broken(self):
    for unfinished in self.directory.glob(f"*{TMP_SUFFIX}*"):
      logging.warning("Ignoring unfinished save %s; Orbax replaces it if its step is saved "
                      "again.", unfinished)
    broken = {folder: problem for _, folder in sorted(step_folders(self.directory).items())
              if (problem := folder_problem(folder))}
    self._rename_aside(broken)

  def _rename_aside(self, broken: dict) -> None:
    """Rename each folder of `broken` ({folder: problem}) to `<step>.corrupt[N]`."""
    if not broken:
      return
    if jax.process_index() == 0:
      for folder, problem in broken.items():
        target, suffix = folder.parent / (folder.name + CORRUPT_SUFFIX), 1
        while target.exists():
          target, suffix = folder.parent / f"{folder.name}{CORRUPT_SUFFIX}{suffix}", suffix + 1
        folder.rename(target)
        logging.warning("Skipping incomplete or corrupted checkpoint %s (%s): moved to %s, "
                        "not deleted.", folder, problem, target)
    # Every process found the same folders; a barrier's name must be unique.
    ocp.multihost.sync_global_processes(
        "phd_jax_set_aside:" + ",".join(sorted(p.name for p in broken)))

  def set_aside(self, step: int, problem: str) -> None:
    """Rename a step found damaged after start (e.g. by a failed restore) out of the way."""
    self._manager.wait_until_finished()
    self._rename_aside({self.directory / str(step): problem})
    self._manager.reload()

  def set_aside_folders(self) -> list[str]:
    """Names of the step folders set aside as damaged, by this run or an earlier one."""
    return sorted(p.name for p in self.directory.glob(f"*{CORRUPT_SUFFIX}*"))

  def saved_config(self, step: int) -> ml_collections.ConfigDict:
    """The config saved with `step`; DamagedCheckpoint if it cannot be read as written."""
    folder = self.directory / str(step)
    integrity.check(folder, (CONFIG,), self._checksums)
    try:
      return ml_collections.ConfigDict(json.loads((folder / CONFIG / CONFIG_FILE).read_text()))
    except (OSError, ValueError) as e:
      raise restore_error(folder, e) from e

  def latest_step(self) -> int | None:
    """The newest complete, readable step (None if there is none); saves in flight wait."""
    self._manager.wait_until_finished()
    folders = {s: self.directory / str(s) for s in self._manager.all_steps()}
    return next(complete_steps(folders, self._warned), None)

  def save(self, step: int, state, data_state: dict, force: bool = False) -> bool:
    """Start saving `state` at `step` if due (every N steps) or `force`; True if started.

    Returns once the arrays are copied off the devices (the state may be donated right
    after); files are written in the background unless `checkpoint.async_save` is False.
    """
    step = int(step)
    if step in self._manager.all_steps():
      return False  # e.g. a final or preemption save right after a periodic one
    if not (force or self._manager.should_save(step)):
      return False
    try:
      data_state = json.loads(json.dumps(data_state))  # a frozen copy; fails here, not later
    except TypeError as e:
      raise ValueError(f"data_state must be JSON-serialisable: {e}") from None
    args = ocp.args.Composite(
        **{PARAMS: ocp.args.StandardSave(state.params),
           TRAIN_STATE: ocp.args.StandardSave(state.replace(params=None)),
           DATA: ocp.args.JsonSave(data_state)},
        **config_items(self._config, step))
    self._manager.wait_until_finished()  # the commit hook reads _saving_step
    self._saving_step = step
    saved = self._manager.save(step, args=args, force=True)
    if not self._async:
      self._manager.wait_until_finished()
    return saved

  def restore(self, abstract_state, step: int | None = None):
    """(state, data_state) of `step` (default: latest), placed on `abstract_state`'s
    shardings, so the mesh and device count may differ from the saving run's."""
    if step is None:
      step = self.latest_step()
      if step is None:
        raise ValueError(f"no complete checkpoint in {self.directory}")
    else:
      self._manager.wait_until_finished()
    folder = self.directory / str(step)
    if not folder.exists():
      raise ValueError(f"no checkpoint {folder}: {describe_missing(self.directory, step)}")
    integrity.check(folder, checksums=self._checksums)  # the whole step, meta included
    _check_data_file(folder)

    def restore(target):
      check_shapes(folder, target.params)
      args = ocp.args.Composite(**{
          PARAMS: ocp.args.StandardRestore(target.params),
          TRAIN_STATE: ocp.args.StandardRestore(target.replace(params=None)),
          DATA: ocp.args.JsonRestore()})
      try:
        restored = self._manager.restore(step, args=args)
      except Exception as e:  # orbax/tensorstore raise many types; name the folder
        raise restore_error(folder, e) from e
      return restored[TRAIN_STATE].replace(params=restored[PARAMS]), restored[DATA]

    return restore_in_layout(folder, abstract_state, restore)

  def wait_until_finished(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _check_data_file(folder: epath.Path) -> None:
  name = data_file(jax.process_index(), jax.process_count())
  if not (folder / DATA / name).exists():
    saved = sorted(p.name for p in (folder / DATA).glob("process_*.json"))
    raise ValueError(f"checkpoint {folder} holds the data iterator state of {saved}, not "
                     f"{name}: the data pipeline cannot resume exactly with "
                     f"{jax.process_count()} processes")
