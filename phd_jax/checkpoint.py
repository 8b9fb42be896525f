"""Checkpoints over Orbax: async saves, exact resume, restore on any mesh, params export.

A step folder `workdir/checkpoints/<step>/` holds, written together by one Orbax save:
  params/       the model parameters (what warm starts and exports read)
  train_state/  the rest of the TrainState: step and optimizer state
  data/         the data iterator state, one JSON file per process
  config/       the resolved config (config.json)
  meta/         step, variant, tokenizer reference, package versions (meta.json)
  integrity.json  the size and CRC-32 of every file above, recorded just before the commit
Orbax writes into `<step>.orbax-checkpoint-tmp` and renames it to `<step>` after writing
`commit_success.txt` (on GCS the marker alone commits). A folder counts as a checkpoint
only with that marker and every file at its recorded size, so saves killed midway and
truncated copies are skipped with a warning, never deleted; restoring one explicitly
raises a `DamagedCheckpoint` (a ValueError) naming it. Before a step is read, the files
read are compared with their recorded checksums (`checkpoint_integrity`: flipped bits,
same-size garbage), and a restore that fails to read raises `DamagedCheckpoint` too; the
trainer sets such a step aside (`set_aside`) and resumes from the previous one, and
`newest_readable` gives readers (evaluation) the same fallback without renaming anything.
An export (`export_params`) is the same layout with only params, config and meta.

Layer layouts: parameters are saved as the model holds them, stacked (`model.scan_layers`,
`blocks/wq` of shape [L, ...]) or per layer (`blocks/0/wq`, ...). Restoring reads the saved
layout from the params' tree metadata and, when it differs from the target's, restores in
the saved layout and converts with `model.stack_layers` / `unstack_layers`, placing the
result on the target's shardings. This covers params (warm starts, exports, evaluation,
generation) and whole train states alike: the optimizer moments mirror the params and
convert the same way.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging as logging_lib
import os
import platform
import sys
import time

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from phd_jax import checkpoint_integrity as integrity
from phd_jax import config as config_lib
from phd_jax import model as model_lib
from phd_jax.checkpoint_integrity import DamagedCheckpoint, folder_problem

PARAMS, TRAIN_STATE, DATA, CONFIG, META = "params", "train_state", "data", "config", "meta"
TMP_SUFFIX = ocp.path.atomicity_types.TMP_DIR_SUFFIX
CORRUPT_SUFFIX = ".corrupt"
_VERSIONED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "grain",
                       "phd_jax")


def _path(path) -> epath.Path:
  """Orbax wants absolute local paths; remote ones (gs://...) are taken as they are."""
  return epath.Path(path if "://" in str(path) else os.path.abspath(path))


# ---------------------------------------------------------------------------------------------
# Step folders.


def _step_folders(directory: epath.Path) -> dict[int, epath.Path]:
  if not directory.is_dir():
    return {}
  return {int(p.name): p for p in directory.iterdir() if p.name.isdigit()}


def _describe_missing(directory: epath.Path, step: int) -> str:
  """A sentence on what is left of `step` in `directory` (for errors)."""
  leftovers = sorted(str(p) for p in directory.glob(f"{step}.*"))
  if leftovers:
    return f"found only {', '.join(leftovers)} (an unfinished or set-aside save)"
  steps = sorted(_step_folders(directory))
  return f"no such step; step folders there: {steps or 'none'}"


def _complete_steps(folders: dict[int, epath.Path], warned: set[str]):
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


# ---------------------------------------------------------------------------------------------
# What is saved next to the arrays.


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for item in (PARAMS, TRAIN_STATE):
    handler = ocp.handlers.StandardCheckpointHandler()
    registry.add(item, ocp.args.StandardSave, handler)
    registry.add(item, ocp.args.StandardRestore, handler)
  # Every process writes (primary_host=None) and reads its own data iterator state.
  per_process = ocp.options.MultiprocessingOptions(primary_host=None)
  json_handlers = {
      DATA: ocp.handlers.JsonCheckpointHandler(_data_file(jax.process_index(), jax.process_count()),
                                               multiprocessing_options=per_process),
      CONFIG: ocp.handlers.JsonCheckpointHandler("config.json"),
      META: ocp.handlers.JsonCheckpointHandler("meta.json"),
  }
  for item, handler in json_handlers.items():
    registry.add(item, ocp.args.JsonSave, handler)
    registry.add(item, ocp.args.JsonRestore, handler)
  return registry


def _data_file(process_index: int, process_count: int) -> str:
  return f"process_{process_index}-of-{process_count}.json"


def _versions() -> dict[str, str]:
  versions = {"python": platform.python_version()}
  for package in _VERSIONED_PACKAGES:
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = "not installed"
  return versions


def _config_items(config, step: int | None) -> dict:
  """The JSON items (config, meta) saved with every checkpoint and export."""
  meta = {
      "step": step,  # None for an export
      "variant": config.phd.variant,
      "tokenizer": {"kind": config.data.tokenizer, "path": config.data.tokenizer_path},
      "versions": _versions(),
      "process_count": jax.process_count(),
      "device_count": jax.device_count(),
      "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }
  return {CONFIG: ocp.args.JsonSave(json.loads(config_lib.to_json(config))),
          META: ocp.args.JsonSave(meta)}


# Orbax runs a save or restore as many futures and raises the first failure through its API,
# which is reported once (DamagedCheckpoint, or main's one line on a full disk). The others
# finish later, unobserved: TensorStore's callbacks then find the event loop closed (bare
# tracebacks, through sys.unraisablehook) and asyncio reports each failed future at exit
# ("Future exception was never retrieved").
_ABANDONED_IO = ("Event loop is closed", "exception was never retrieved",
                 "Encountered error while reading array")


class _DropAbandonedIO(logging_lib.Filter):
  def filter(self, record):
    text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
    return not any(e in text for e in _ABANDONED_IO)


def _quiet_abandoned_io() -> None:
  """Drop the reports of Orbax's abandoned futures (`_ABANDONED_IO`); call before a save or
  restore starts, as they may come before its failure reaches the caller."""
  previous = sys.unraisablehook
  if getattr(previous, "phd_jax_abandoned_io", False):
    return

  def hook(unraisable):
    if not any(e in str(unraisable.exc_value) for e in _ABANDONED_IO):
      previous(unraisable)

  hook.phd_jax_abandoned_io = True
  sys.unraisablehook = hook
  logging_lib.getLogger("asyncio").addFilter(_DropAbandonedIO())


def _restore_error(folder, error: Exception) -> DamagedCheckpoint:
  _quiet_abandoned_io()  # also after reads that started none (the params' metadata)
  first_line = str(error).split("See full TensorStore details")[0].splitlines()[0][:300]
  return DamagedCheckpoint(f"could not restore checkpoint {folder}: {type(error).__name__}: "
                           f"{first_line.strip()}")


def _check_shapes(folder: epath.Path, abstract_params) -> None:
  """Refuse (ConfigError) a checkpoint whose parameters have other shapes than the target's:
  another model, not damage, so it must not be set aside as damaged."""
  try:
    saved = ocp.StandardCheckpointHandler().metadata(folder / PARAMS).tree
  except Exception as e:  # unreadable metadata: damage
    raise _restore_error(folder, e) from e
  saved_leaves = jax.tree_util.tree_flatten_with_path(saved)[0]
  wanted = jax.tree.leaves(abstract_params)
  if len(saved_leaves) != len(wanted):
    raise config_lib.ConfigError(f"checkpoint {folder} holds {len(saved_leaves)} parameter "
                                 f"arrays, the config's model {len(wanted)}")
  for (path, saved_leaf), want in zip(saved_leaves, wanted):
    if tuple(saved_leaf.shape) != tuple(want.shape):
      raise config_lib.ConfigError(
          f"checkpoint {folder} holds params{jax.tree_util.keystr(path)} of shape "
          f"{tuple(saved_leaf.shape)}, the config's model {tuple(want.shape)}")


# ---------------------------------------------------------------------------------------------
# Layer layouts (stacked or per layer), converted on restore.


def _restore_in_layout(folder: epath.Path, abstract, restore):
  """`restore(target) -> (tree, extra)` run on `abstract` (ShapeDtypeStructs with shardings,
  holding params-like mappings) in the layer layout saved in `folder`; the tree comes back
  in `abstract`'s layout and shardings. Trees that are not a Transformer's parameters (no
  'blocks') are restored as they are."""
  try:
    saved = ocp.StandardCheckpointHandler().metadata(folder / PARAMS).tree
  except Exception as e:  # unreadable metadata: damage
    raise _restore_error(folder, e) from e
  try:
    saved_stacked = model_lib.is_stacked(saved)
    same_layout = saved_stacked == model_lib.is_stacked(abstract)
  except ValueError:  # no 'blocks': no layer layout to convert
    same_layout = True
  if same_layout:
    return restore(abstract)
  to_saved, to_target = ((model_lib.stack_layers, model_lib.unstack_layers) if saved_stacked
                         else (model_lib.unstack_layers, model_lib.stack_layers))
  tree, extra = restore(to_saved(abstract))
  shardings = jax.tree.map(lambda x: x.sharding, abstract)
  return jax.jit(to_target, out_shardings=shardings)(tree), extra


# ---------------------------------------------------------------------------------------------
# The training run's checkpoints.


class Checkpointer:
  """Saves and restores a run's TrainState, data iterator state and config under
  `workdir/checkpoints`, as `config.checkpoint` says (every, keep, keep_period, async_save).

  Call every method from all processes. Step folders that are not complete checkpoints
  (see `folder_problem`) are renamed to `<step>.corrupt` at start, with a warning, so that
  Orbax neither counts nor rotates them and the step can be saved again.
  """

  def __init__(self, workdir, config):
    config_lib.check_checkpoint(config)
    self.directory = _path(workdir) / "checkpoints"
    self._config = config
    self._async = config.checkpoint.async_save
    self._checksums = config.checkpoint.checksums
    self._warned: set[str] = set()
    self._saving_step = None
    _quiet_abandoned_io()
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
                                          handler_registry=_handler_registry())

  def _record(self):
    integrity.record(self.directory / str(self._saving_step), self._checksums)

  def _set_aside_broken(self):
    for unfinished in self.directory.glob(f"*{TMP_SUFFIX}*"):
      logging.warning("Ignoring unfinished save %s; Orbax replaces it if its step is saved "
                      "again.", unfinished)
    broken = {folder: problem for _, folder in sorted(_step_folders(self.directory).items())
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
      return ml_collections.ConfigDict(json.loads((folder / CONFIG / "config.json").read_text()))
    except (OSError, ValueError) as e:
      raise _restore_error(folder, e) from e

  def latest_step(self) -> int | None:
    """The newest complete, readable step (None if there is none); saves in flight wait."""
    self._manager.wait_until_finished()
    folders = {s: self.directory / str(s) for s in self._manager.all_steps()}
    return next(_complete_steps(folders, self._warned), None)

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
        **_config_items(self._config, step))
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
      raise ValueError(f"no checkpoint {folder}: {_describe_missing(self.directory, step)}")
    integrity.check(folder, checksums=self._checksums)  # the whole step, meta included
    _check_data_file(folder)

    def restore(target):
      _check_shapes(folder, target.params)
      args = ocp.args.Composite(**{
          PARAMS: ocp.args.StandardRestore(target.params),
          TRAIN_STATE: ocp.args.StandardRestore(target.replace(params=None)),
          DATA: ocp.args.JsonRestore()})
      try:
        restored = self._manager.restore(step, args=args)
      except Exception as e:  # orbax/tensorstore raise many types; name the folder
        raise _restore_error(folder, e) from e
      return restored[TRAIN_STATE].replace(params=restored[PARAMS]), restored[DATA]

    return _restore_in_layout(folder, abstract_state, restore)

  def wait_until_finished(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _check_data_file(folder: epath.Path) -> None:
  name = _data_file(jax.process_index(), jax.process_count())
  if not (folder / DATA / name).exists():
    saved = sorted(p.name for p in (folder / DATA).glob("process_*.json"))
    raise ValueError(f"checkpoint {folder} holds the data iterator state of {saved}, not "
                     f"{name}: the data pipeline cannot resume exactly with "
                     f"{jax.process_count()} processes")


# ---------------------------------------------------------------------------------------------
# Params only: warm starts, exports, configs of saved runs.


def complete_folders(path):
  """The complete checkpoint folders `path` names, newest first (lazily): a step folder or
  export itself, else the complete steps of a checkpoints directory or of a workdir's
  `checkpoints/`. ValueError when there is none."""
  path = _path(path)
  if not path.exists():
    raise ValueError(f"checkpoint path {path} does not exist")
  if (path / PARAMS).exists():
    if problem := folder_problem(path):
      raise DamagedCheckpoint(f"checkpoint {path} is incomplete or corrupted: {problem}")
    yield path
    return
  directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  folders = _step_folders(directory)
  found = False
  for step in _complete_steps(folders, set()):
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


def _restore_items(folder: epath.Path, args: dict):
  _quiet_abandoned_io()
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler(
      handler_registry=_handler_registry()))
  try:
    return checkpointer.restore(folder, args=ocp.args.Composite(**args))
  except Exception as e:  # orbax/tensorstore raise many types; name the folder
    raise _restore_error(folder, e) from e
  finally:
    checkpointer.close()


def load_params(path, abstract_params):
  """Only the parameters of a checkpoint or export, on `abstract_params`' shardings;
  DamagedCheckpoint when they do not read back as written."""
  folder = resolve(path)
  integrity.check(folder, (PARAMS,))
  restore = lambda target: _restore_items(folder, {PARAMS: ocp.args.StandardRestore(target)})
  return _restore_in_layout(folder, abstract_params, lambda t: (restore(t)[PARAMS], None))[0]


def saved_config(path) -> ml_collections.ConfigDict:
  """The resolved config saved with a checkpoint or export."""
  folder = resolve(path)
  integrity.check(folder, (CONFIG,))
  restored = _restore_items(folder, {CONFIG: ocp.args.JsonRestore()})
  return ml_collections.ConfigDict(restored[CONFIG])


def export_params(path, params, config) -> epath.Path:
  """Write params, config and meta (no optimizer state) to the new folder `path`."""
  path = _path(path)
  if path.exists():
    raise ValueError(f"export path {path} already exists")
  _quiet_abandoned_io()
  record = lambda: integrity.record(path, config.checkpoint.checksums)
  checkpointer = ocp.AsyncCheckpointer(
      ocp.CompositeCheckpointHandler(handler_registry=_handler_registry()),
      async_options=ocp.options.AsyncOptions(post_finalization_callback=record))
  try:
    checkpointer.save(path, args=ocp.args.Composite(
        **{PARAMS: ocp.args.StandardSave(params)}, **_config_items(config, step=None)))
    checkpointer.wait_until_finished()
  finally:
    checkpointer.close()
  return path
