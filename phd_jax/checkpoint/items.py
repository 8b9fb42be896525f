"""What a checkpoint folder holds, item by item, and the Orbax handlers that write them.

  params/       the model parameters (what warm starts and exports read)
  train_state/  the rest of the TrainState: step and optimizer state
  data/         the data iterator state, one JSON file per process
  config/       the resolved config (config.json)
  meta/         step, variant, tokenizer reference, package versions (meta.json)
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import time

import jax
import orbax.checkpoint as ocp

PARAMS, TRAIN_STATE, DATA, CONFIG, META = "params", "train_state", "data", "config", "meta"
CONFIG_FILE = "config.json"
_VERSIONED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "grain",
                       "phd_jax")


def handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for item in (PARAMS, TRAIN_STATE):
    handler = ocp.handlers.StandardCheckpointHandler()
    registry.add(item, ocp.args.StandardSave, handler)
    registry.add(item, ocp.args.StandardRestore, handler)
  # Every process writes (primary_host=None) and reads its own data iterator state.
  per_process = ocp.options.MultiprocessingOptions(primary_host=None)
  json_handlers = {
      DATA: ocp.handlers.JsonCheckpointHandler(data_file(jax.process_index(), jax.process_count()),
                                               multiprocessing_options=per_process),
      CONFIG: ocp.handlers.JsonCheckpointHandler(CONFIG_FILE),
      META: ocp.handlers.JsonCheckpointHandler("meta.json"),
  }
  for item, handler in json_handlers.items():
    registry.add(item, ocp.args.JsonSave, handler)
    registry.add(item, ocp.args.JsonRestore, handler)
  return registry


def data_file(process_index: int, process_count: int) -> str:
  return f"process_{process_index}-of-{process_count}.json"


def _versions() -> dict[str, str]:
  versions = {"python": platform.python_version()}
  for package in _VERSIONED_PACKAGES:
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = "not installed"
  return versions


def config_items(config, step: int | None) -> dict:
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
  # The JSON `phd_jax.config.to_json` writes (sorted keys; str for what JSON lacks): this
  # layer sits below the config module.
  resolved = json.loads(json.dumps(config.to_dict(), sort_keys=True, default=str))
  return {CONFIG: ocp.args.JsonSave(resolved), META: ocp.args.JsonSave(meta)}
