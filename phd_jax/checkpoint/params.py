"""Params only: warm starts, exports and the configs of saved runs.

An export (`export_params`) is a checkpoint folder with only params, config and meta (no
optimizer or data state); `load_params` and `saved_config` read an export, a step folder,
a run's `checkpoints/` directory or a workdir alike (`folders.resolve`).
"""

from __future__ import annotations

import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from phd_jax.checkpoint import integrity
from phd_jax.checkpoint.folders import absolute, resolve
from phd_jax.checkpoint.items import CONFIG, PARAMS, config_items, handler_registry
from phd_jax.checkpoint.reads import quiet_abandoned_io, restore_in_layout, restore_items


def load_params(path, abstract_params):
  """Only the parameters of a checkpoint or export, on `abstract_params`' shardings;
  DamagedCheckpoint when they do not read back as written."""
  folder = resolve(path)
  integrity.check(folder, (PARAMS,))
  restore = lambda target: restore_items(folder, {PARAMS: ocp.args.StandardRestore(target)})
  return restore_in_layout(folder, abstract_params, lambda t: (restore(t)[PARAMS], None))[0]


def saved_config(path) -> ml_collections.ConfigDict:
  """The resolved config saved with a checkpoint or export."""
  folder = resolve(path)
  integrity.check(folder, (CONFIG,))
  restored = restore_items(folder, {CONFIG: ocp.args.JsonRestore()})
  return ml_collections.ConfigDict(restored[CONFIG])


def export_params(path, params, config) -> epath.Path:
  """Write params, config and meta (no optimizer state) to the new folder `path`."""
  path = absolute(path)
  if path.exists():
    raise ValueError(f"export path {path} already exists")
  quiet_abandoned_io()
  record = lambda: integrity.record(path, config.checkpoint.checksums)
  checkpointer = ocp.AsyncCheckpointer(
      ocp.CompositeCheckpointHandler(handler_registry=handler_registry()),
      async_options=ocp.options.AsyncOptions(post_finalization_callback=record))
  try:
    checkpointer.save(path, args=ocp.args.Composite(
        **{PARAMS: ocp.args.StandardSave(params)}, **config_items(config, step=None)))
    checkpointer.wait_until_finished()
  finally:
    checkpointer.close()
  return path
