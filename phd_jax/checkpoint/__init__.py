"""Checkpoints over Orbax: async saves, exact resume, restore on any mesh, params export.

A step folder `workdir/checkpoints/<step>/` holds, written together by one Orbax save, the
items of `items` (params, train_state, data, config, meta) and `integrity.json`, the size
and CRC-32 of every file, recorded just before the commit. One module per idea:
  integrity  what makes a folder whole: complete, and every file as written
  folders    finding the complete checkpoints a path names; the fallback past damaged ones
  items      what a folder holds and the Orbax handlers that write it
  reads      reading onto a target: damaged reads, another model's shapes, layer layouts
  run        `Checkpointer`: the training run's checkpoints (save, resume, set aside)
  params     params only: warm starts, exports, saved configs
"""

from phd_jax.checkpoint.folders import TMP_SUFFIX, complete_folders, newest_readable, resolve
from phd_jax.checkpoint.integrity import DamagedCheckpoint, folder_problem
from phd_jax.checkpoint.items import PARAMS, TRAIN_STATE
from phd_jax.checkpoint.params import export_params, load_params, saved_config
from phd_jax.checkpoint.reads import ModelMismatch
from phd_jax.checkpoint.run import Checkpointer, check_options

__all__ = ["Checkpointer", "DamagedCheckpoint", "ModelMismatch", "PARAMS", "TMP_SUFFIX",
           "TRAIN_STATE", "check_options", "complete_folders", "export_params", "folder_problem",
           "load_params", "newest_readable", "resolve", "saved_config"]
