"""The device mesh, the logical-axis rules and the shardings derived from them.

Mesh axes ("data", "fsdp", "tensor"), GSPMD style (Auto axis types): `data` replicates
the model and splits the batch, `fsdp` splits the batch AND the parameters / optimizer
state (gathered per layer by XLA), `tensor` splits heads, MLP and vocabulary (Megatron
style). Each axis is `ici * dcn` devices: the dcn part spans slices (TPU multislice) or
hosts (GPU clusters), so only its collectives cross the slow network.

One table, `RULES`, maps every logical axis name used by the model (parameters:
`layers.param(..., axes)`; activations: `layers.constrain(x, axes)`) to mesh axes.
"""

from __future__ import annotations

import math

import jax
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "tensor")

RULES = (
    # parameters
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("norm", None),
    ("layers", None),  # the stacked blocks' layer axis: every device holds every layer
    # activations: batch over every data-parallel axis; embed stays whole between blocks
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_vocab", "tensor"),
)
BATCH_AXES = dict(RULES)["activation_batch"]

# Parameters at least this large must be split by some model-parallel mesh axis when the
# mesh has one (fsdp or tensor > 1): a larger replicated one is a missing rule.
REPLICATED_PARAM_LIMIT = 1 << 20  # elements


def _resolve_axes(config, num_devices: int,
                  sizes=None) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(ici, dcn) sizes per axis; the ici -1 is filled from the device count. `sizes`
  replaces the config's (ici) sizes, with no dcn split."""
  dcn = (1,) * len(AXES) if sizes else tuple(config.mesh[f"dcn_{a}"] for a in AXES)
  for axis, size in zip(AXES, dcn):
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
      raise ValueError(f"mesh.dcn_{axis} must be a positive integer; got {size!r}")
  ici = list(sizes) if sizes else [config.mesh[a] for a in AXES]
  for axis, size in zip(AXES, ici):
    if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
      raise ValueError(f"mesh.{axis} must be a positive integer or -1 (fill); got {size!r}")
  if ici.count(-1) > 1:
    raise ValueError(f"at most one of mesh.data/fsdp/tensor may be -1; got {tuple(ici)}")
  if num_devices % math.prod(dcn):
    raise ValueError(f"{num_devices} devices do not split into mesh.dcn_* = {dcn} "
                     f"(product {math.prod(dcn)})")
  per_granule = num_devices // math.prod(dcn)
  known = math.prod(s for s in ici if s != -1)
  if -1 in ici:
    if per_granule % known:
      raise ValueError(f"mesh {dict(zip(AXES, ici))}: {per_granule} devices per slice/host "
                       f"group are not divisible by the fixed axes' product {known}")
    ici[ici.index(-1)] = per_granule // known
  if math.prod(ici) != per_granule:
    raise ValueError(f"mesh {dict(zip(AXES, ici))} uses {math.prod(ici)} devices per "
                     f"slice/host group but there are {per_granule} "
                     f"({num_devices} devices / dcn {math.prod(dcn)}); set one of mesh.data, "
                     "mesh.fsdp, mesh.tensor to -1 or make the product match")
  return tuple(ici), dcn


def make_mesh(config, devices=None, sizes=None) -> Mesh:
  """The ("data", "fsdp", "tensor") mesh over `devices` (default: all), Auto axis types.

  sizes: (data, fsdp, tensor) instead of the config's `mesh.*` (e.g. evaluating a saved
  run on other hardware), -1 filling.
  """
  devices = list(devices or jax.devices())
  ici, dcn = _resolve_axes(config, len(devices), sizes)
  axis_types = (AxisType.Auto,) * len(AXES)
  if math.prod(dcn) == 1:
    return jax.make_mesh(ici, AXES, axis_types=axis_types, devices=devices)
  # The slow network joins TPU slices; on GPU/CPU (a single "slice") it joins processes.
  by_process = len({getattr(d, "slice_index", 0) for d in devices}) == 1
  device_grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                     process_is_granule=by_process)
  return Mesh(device_grid, AXES, axis_types=axis_types)


def parse_sizes(text: str, sep: str = ",") -> tuple[int, int, int]:
  """"DATA,FSDP,TENSOR" mesh sizes such as "1,-1,1" (a command-line value)."""
  try:
    sizes = tuple(int(x) for x in text.split(sep))
  except ValueError:
    sizes = ()
  if len(sizes) != len(AXES):
    raise ValueError(f"mesh must be DATA{sep}FSDP{sep}TENSOR sizes such as 1{sep}-1{sep}1; "
                     f"got {text!r}")
  return sizes


def logical_to_spec(axes: tuple[str | None, ...]) -> PartitionSpec:
  """PartitionSpec of logical axis names; an unknown name is an error, not replication."""
  rules = dict(RULES)
  unknown = [a for a in axes if a is not None and a not in rules]
  if unknown:
    raise ValueError(f"logical axes {unknown} have no rule in phd_jax.sharding.RULES")
  return PartitionSpec(*(rules[a] if a is not None else None for a in axes))


def _mesh_axes_size(mesh: Mesh, entry) -> int:
  if entry is None:
    return 1
  names = entry if isinstance(entry, tuple) else (entry,)
  return math.prod(mesh.shape[n] for n in names)


def _variable_sharding(path, variable: nnx.Variable, mesh: Mesh) -> NamedSharding:
  axes = variable.get_metadata().get("out_sharding") or (None,) * variable.ndim
  spec = logical_to_spec(tuple(axes))
  for dim, logical, entry in zip(variable.shape, axes, spec):
    size = _mesh_axes_size(mesh, entry)
    if dim % size:
      name = "/".join(str(p) for p in path)
      raise ValueError(f"parameter {name} {tuple(variable.shape)}: axis {logical!r} of size "
                       f"{dim} is not divisible by mesh axes {entry} of size {size}; change "
                       "the model shape or mesh.fsdp / mesh.tensor")
  return NamedSharding(mesh, spec)


def tree_shardings(tree, mesh: Mesh):
  """NamedShardings for a pytree holding nnx Variables (params, optimizer moments) and
  plain arrays (replicated, e.g. step counters). Keeps the tree's structure."""
  def one(path, leaf):
    if isinstance(leaf, nnx.Variable):
      return leaf.replace(_variable_sharding(path, leaf, mesh))
    return NamedSharding(mesh, PartitionSpec())
  return jax.tree_util.tree_map_with_path(
      one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def check_not_replicated(abstract_tree, mesh: Mesh, limit: int = REPLICATED_PARAM_LIMIT):
  """Raise if the mesh splits the model but some large array is fully replicated."""
  model_axes = {a: mesh.shape[a] for a in ("fsdp", "tensor") if mesh.shape[a] > 1}
  if not model_axes:
    return
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_tree):
    size = math.prod(leaf.shape)
    if size >= limit and leaf.sharding.is_fully_replicated:
      name = jax.tree_util.keystr(path)
      raise ValueError(f"{name} {leaf.shape} ({size:,} elements) is replicated on every "
                       f"device although the mesh splits the model over {model_axes}: give it "
                       "logical axes that phd_jax.sharding.RULES map onto fsdp or tensor")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Input batches `[B, T]`: rows over the data-parallel axes."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, None))


def data_parallel_size(mesh: Mesh) -> int:
  return _mesh_axes_size(mesh, BATCH_AXES)


def check_batch(config, mesh: Mesh) -> int:
  """Validate batch_size against processes, devices and microbatches; return the rows each
  process loads."""
  b, m, procs = config.batch_size, config.microbatches, jax.process_count()
  dp = data_parallel_size(mesh)
  if b % procs:
    raise ValueError(f"batch_size={b} must be divisible by the number of processes {procs}")
  if b % m:
    raise ValueError(f"batch_size={b} must be divisible by microbatches={m}")
  if (b // m) % dp:
    raise ValueError(f"batch_size={b} / microbatches={m} = {b // m} sequences per "
                     f"microbatch must be divisible by the data-parallel devices "
                     f"(mesh data x fsdp = {dp})")
  # Each process feeds the rows its own devices hold; that is batch_size / processes only
  # when no two processes hold the same rows (the tensor axis stays inside a process).
  shape = (b, config.seq_len)
  index_map = batch_sharding(mesh).addressable_devices_indices_map(shape)
  rows = {index[0].indices(b)[:2] for index in index_map.values()}
  local_rows = sum(stop - start for start, stop in rows)
  if local_rows != b // procs:
    raise ValueError(f"with mesh {dict(mesh.shape)} each process holds {local_rows} of the "
                     f"batch_size={b} rows, not batch_size / processes = {b // procs}: "
                     "keep mesh.tensor within one host")
  return b // procs

