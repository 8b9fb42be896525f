"""Reading a checkpoint onto a restore target: failed reads as `DamagedCheckpoint`, another
model's parameters as `ModelMismatch`, and the layer layout converted on the way.

Layer layouts: parameters are saved as the model holds them, stacked (`model.scan_layers`,
`blocks/wq` of shape [L, ...]) or per layer (`blocks/0/wq`, ...). Restoring reads the saved
layout from the params' tree metadata and, when it differs from the target's, restores in
the saved layout and converts with `model.stack_layers` / `unstack_layers`, placing the
result on the target's shardings. This covers params (warm starts, exports, evaluation,
generation) and whole train states alike: the optimizer moments mirror the params and
convert the same way.
"""

from __future__ import annotations

import logging as logging_lib
import sys

import jax
import orbax.checkpoint as ocp
from etils import epath

from phd_jax import model as model_lib
from phd_jax.checkpoint.integrity import DamagedCheckpoint
from phd_jax.checkpoint.items import PARAMS, handler_registry


class ModelMismatch(ValueError):
  """A checkpoint of another model (parameter shapes differ from the target's): not damage,
  so it is never set aside; the command line reports it as a bad setting."""


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


def quiet_abandoned_io() -> None:
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


def restore_error(folder, error: Exception) -> DamagedCheckpoint:
  quiet_abandoned_io()  # also after reads that started none (the params' metadata)
  first_line = str(error).split("See full TensorStore details")[0].splitlines()[0][:300]
  return DamagedCheckpoint(f"could not restore checkpoint {folder}: {type(error).__name__}: "
                           f"{first_line.strip()}")


def _saved_params_tree(folder: epath.Path):
  try:
    return ocp.StandardCheckpointHandler().metadata(folder / PARAMS).tree
  except Exception as e:  # unreadable metadata: damage
    raise restore_error(folder, e) from e


def check_shapes(folder: epath.Path, abstract_params) -> None:
  """Refuse (ModelMismatch) a checkpoint whose parameters have other shapes than the
  target's."""
  saved_leaves = jax.tree_util.tree_flatten_with_path(_saved_params_tree(folder))[0]
  wanted = jax.tree.leaves(abstract_params)
  if len(saved_leaves) != len(wanted):
    raise ModelMismatch(f"checkpoint {folder} holds {len(saved_leaves)} parameter "
                        f"arrays, the config's model {len(wanted)}")
  for (path, saved_leaf), want in zip(saved_leaves, wanted):
    if tuple(saved_leaf.shape) != tuple(want.shape):
      raise ModelMismatch(
          f"checkpoint {folder} holds params{jax.tree_util.keystr(path)} of shape "
          f"{tuple(saved_leaf.shape)}, the config's model {tuple(want.shape)}")


def restore_in_layout(folder: epath.Path, abstract, restore):
  """`restore(target) -> (tree, extra)` run on `abstract` (ShapeDtypeStructs with shardings,
  holding params-like mappings) in the layer layout saved in `folder`; the tree comes back
  in `abstract`'s layout and shardings. Trees that are not a Transformer's parameters (no
  'blocks') are restored as they are."""
  saved = _saved_params_tree(folder)
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


def restore_items(folder: epath.Path, args: dict):
  """The items `args` names ({item: restore args}) of a checkpoint or export folder."""
  quiet_abandoned_io()
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler(
      handler_registry=handler_registry()))
  try:
    return checkpointer.restore(folder, args=ocp.args.Composite(**args))
  except Exception as e:  # orbax/tensorstore raise many types; name the folder
    raise restore_error(folder, e) from e
  finally:
    checkpointer.close()
