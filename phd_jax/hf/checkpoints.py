"""phd_jax parameters and checkpoints <-> Hugging Face model directories.

  load_params(hf_dir, config, like=None)   HF weights as `config`'s parameters (warm starts)
  import_checkpoint(hf_dir, config, out)   an HF model as a phd_jax export (+ its tokenizer)
  save_hf(out, params, config)             parameters as an HF directory (+ tokenizer and
                                           generation config)
  export_checkpoint(path, out)             a checkpoint or export as an HF directory

PHD adds no parameters, so one set of weights serves every variant: importing chooses the
variant by the config, and exporting writes the dense architecture (OLMo2, Llama, Qwen3)
for Vanilla, or `PhdForCausalLM` (config + `modeling_phd.py` and `modeling_plt.py`,
loadable with `trust_remote_code=True`) for a PHD or PLT variant or on request. A PLT
variant with a window adds a gate per layer: its checkpoints carry them, and the variant
an import or warm start chooses must have gates reading the same input (or none where the
checkpoint has none). Parameters of either layer layout (stacked for `model.scan_layers`,
or per layer) are read and written.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import uuid

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from phd_jax import checkpoint
from phd_jax import config as config_lib
from phd_jax import state
from phd_jax.hf import files, generation, mapping, weights
from phd_jax.masks import PLTSpec

ARCHITECTURES = ("auto", "phd", "native")
EXPORT_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
MAX_SHARD_BYTES = 5 * 2**30  # transformers' default shard size
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MODELING_FILES = ("configuration_phd.py", "modeling_phd.py", "modeling_plt.py")
GATE_DESCRIPTIONS = {None: "no PLT gates", "query": "PLT gates that read the query",
               "hidden": "PLT gates that read the hidden state"}


def _model_config(config):
  try:
    return config_lib.model_config(config)
  except TypeError as e:  # a field this ModelConfig does not have
    raise ValueError(f"model fields: {e}") from None


def _gate_input(spec) -> str | None:
  """What the PLT gates of the variant's layers read; None when they have none."""
  return spec.gate if isinstance(spec, PLTSpec) and spec.gated else None


def check_model_fields(config, hf_dir: str) -> None:
  """ValueError listing each `config.model` field that differs from the HF model's, as
  the flags that would fix it, or naming a variant whose PLT gates differ from its layers'."""
  cfg, spec = _model_config(config), config_lib.phd_spec(config)
  hf_config, where = mapping.read_config(hf_dir), os.path.join(hf_dir, mapping.CONFIG_FILE)
  fields = mapping.model_fields(hf_config, where)
  wrong = {k: v for k, v in fields.items() if getattr(cfg, k) != v}
  if wrong:
    flags = " ".join(f"--config.model.{k}={v}" for k, v in wrong.items())
    raise ValueError(f"{hf_dir} does not match the config's model: "
                     + ", ".join(f"model.{k}={getattr(cfg, k)!r}" for k in wrong)
                     + f"; the checkpoint needs {flags}")
  held, wanted = mapping.gate_input(hf_config, where), _gate_input(spec)
  if held != wanted:
    raise ValueError(f"{hf_dir}: its layers have {GATE_DESCRIPTIONS[held]}, but phd.variant="
                     f"{spec.name} has {GATE_DESCRIPTIONS[wanted]}: choose a variant (and "
                     "phd.plt_gate) with the checkpoint's gates")


def _placements(expected: list[mapping.Tensor], flat: dict):
  """Parameter path and layer index (None: not stacked) of each per-layer tensor path."""
  out = {}
  for tensor in expected:
    path = tensor.path
    if path in flat:
      out[path] = (path, None)
    elif path[0] == "blocks" and ("blocks", *path[2:]) in flat:
      out[path] = (("blocks", *path[2:]), path[1])
    else:
      raise ValueError(f"the model has no parameter {'/'.join(map(str, path))}")
  return out


def _abstract_params(config):
  return jax.eval_shape(lambda: nnx.state(state.new_model(config), nnx.Param))


def _place(host: np.ndarray, like):
  """`host` as an array on `like`'s sharding (every process takes its own shards)."""
  sharding = getattr(like, "sharding", None)
  if sharding is None:
    return host
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def load_params(hf_dir: str, config, like=None):
  """The weights of the HF model in `hf_dir` as parameters of `config`'s model.

  Args:
    hf_dir: config.json plus model.safetensors or sharded safetensors with their index.
    config: an experiment config whose model fields equal the checkpoint's
      (`check_model_fields`); any PHD variant.
  Returns:
    An nnx.State shaped like `like` (parameters or ShapeDtypeStructs of `config`'s model),
    its arrays on `like`'s shardings; without `like`, numpy float32 arrays.
  """
  hf_config = mapping.read_config(hf_dir)
  check_model_fields(config, hf_dir)
  expected = mapping.tensors(_model_config(config), _gate_input(config_lib.phd_spec(config)))
  names = weights.shard_names(hf_dir)
  weights.check_tensors(hf_dir, expected, weights.headers(hf_dir, names), hf_config)
  flat = dict(nnx.to_flat_state(_abstract_params(config) if like is None else like))
  placements = _placements(expected, flat)
  host = {path: np.empty(var.get_value().shape, np.float32) for path, var in flat.items()}
  for tensor, array in weights.read(hf_dir, expected, names):
    path, layer = placements[tensor.path]
    mapping.write_ours(tensor, array, host[path] if layer is None else host[path][layer])
  return nnx.from_flat_state([(path, var.replace(value=_place(host.pop(path), var.get_value())))
                              for path, var in flat.items()])


def _tokenizer_files(directory: str) -> list[str]:
  """The tokenizer files in `directory` (each inside it, links included)."""
  return [files.inside(directory, name) for name in TOKENIZER_FILES
          if os.path.isfile(os.path.join(directory, name))]


def _copy(paths: list[str], out_dir: str) -> None:
  for path in paths:
    shutil.copy(path, os.path.join(out_dir, os.path.basename(path)))


def import_checkpoint(hf_dir: str, config, out: str) -> str:
  """Write the HF model in `hf_dir` as a phd_jax export at `out` (a new folder).

  The model fields of `config` are replaced by the checkpoint's; its tokenizer.json (when
  there is one) is copied into `out` and becomes the config's `hf` tokenizer; what HF
  generation reads besides the weights is kept as `config.hf` (`phd_jax.hf.generation`).
  The export warm-starts training (`checkpoint.warm_start=OUT`) and runs with
  evaluate/generate; the rest of `config` (data, optimizer) is recorded as given and
  checked when a run uses it. `hf_dir` is untrusted: every file read from it must lie
  inside it (`files.inside`), and all are checked before anything is written.
  """
  if os.path.exists(out):
    raise ValueError(f"--out={out} already exists")
  hf_config = mapping.read_config(hf_dir)
  config = copy.deepcopy(config)
  config.unlock()
  config.model.update(mapping.model_fields(hf_config, os.path.join(hf_dir, mapping.CONFIG_FILE)))
  config_lib.phd_spec(config)  # the variant; the model fields are the checkpoint's
  config.hf = generation.recorded(hf_dir, hf_config)
  tokenizer_files = _tokenizer_files(hf_dir)
  has_tokenizer = os.path.join(hf_dir, "tokenizer.json") in tokenizer_files
  if has_tokenizer:
    config.data.tokenizer = "hf"
    config.data.tokenizer_path = os.path.join(os.path.abspath(out), "tokenizer.json")
  # Host arrays as jax arrays on the CPU (no copy): Orbax stages jax arrays with one host
  # copy while saving, numpy arrays with more.
  cpu = jax.devices("cpu")[0]
  params = jax.tree.map(lambda a: jax.device_put(a, cpu), load_params(hf_dir, config))
  checkpoint.export_params(out, params, config)
  if has_tokenizer:
    _copy(tokenizer_files, out)
  return out


def _architecture(cfg, spec, requested: str) -> str:
  if requested not in ARCHITECTURES:
    raise ValueError(f"architecture must be one of {ARCHITECTURES}; got {requested!r}")
  plt = isinstance(spec, PLTSpec)  # no dense architecture has loops
  native = mapping.native_architecture(cfg)
  if requested == "phd" or (requested == "auto" and (plt or spec.k > 1 or native is None)):
    return mapping.PHD_ARCHITECTURE
  if plt:
    raise ValueError(f"architecture='native' has no PLT loops; {spec.name} exports as 'phd' "
                     "(or 'auto')")
  if spec.k > 1:
    raise ValueError(f"architecture='native' would run the {spec.name} weights as Vanilla; "
                     "use 'auto' or 'phd'")
  if native is None:
    raise ValueError(f"no transformers architecture has norm_style={cfg.norm_style!r} with "
                     f"qk_norm={cfg.qk_norm}, qk_norm_per_head={cfg.qk_norm_per_head}; use "
                     "'auto' or 'phd'")
  return native


def _hf_tensors(params, cfg, gate, dtype):
  """(HF name, array) of every parameter in checkpoint order; each stacked parameter is
  brought to the host once."""
  flat = dict(nnx.to_flat_state(params))
  expected = mapping.tensors(cfg, gate)
  placements = _placements(expected, flat)
  on_host = {}
  for tensor in expected:
    path, layer = placements[tensor.path]
    if path not in on_host:
      on_host[path] = np.asarray(jax.device_get(flat[path].get_value()))
    array = on_host[path] if layer is None else on_host[path][layer]
    yield tensor.hf_name, mapping.to_hf(tensor, array).astype(EXPORT_DTYPES[dtype])


def save_hf(out: str, params, config, *, architecture: str = "auto", dtype: str = "float32",
            max_shard_bytes: int = MAX_SHARD_BYTES) -> str:
  """Write `params` of `config`'s model as an HF directory `out` (new or empty), whole or
  not at all: it is written beside `out` and renamed when complete.

  Args:
    architecture: "auto" (the dense architecture for Vanilla, PhdForCausalLM for PHD and
      PLT), "phd", or "native" (the dense one; Vanilla only).
    dtype: "float32" (exact) or "bfloat16".
  Returns:
    The architecture written.
  """
  if dtype not in EXPORT_DTYPES:
    raise ValueError(f"dtype must be one of {sorted(EXPORT_DTYPES)}; got {dtype!r}")
  cfg, spec = _model_config(config), config_lib.phd_spec(config)
  name = _architecture(cfg, spec, architecture)
  _check_out(out)
  special_ids, max_positions, generation_config = generation.for_export(config)
  hf_config = {**mapping.hf_config(cfg, spec, name, max_positions=max_positions, dtype=dtype),
               **special_ids}
  tokenizer_files = (_tokenizer_files(os.path.dirname(config.data.tokenizer_path))
                     if config.data.tokenizer == "hf" and config.data.tokenizer_path else [])
  modeling_files = ([os.path.join(os.path.dirname(__file__), f) for f in MODELING_FILES]
                    if name == mapping.PHD_ARCHITECTURE else [])
  staging = _staging_folder(out)
  try:
    weights.write(staging, _hf_tensors(params, cfg, _gate_input(spec), dtype), max_shard_bytes)
    for file, content in ((mapping.CONFIG_FILE, hf_config),
                          (generation.GENERATION_FILE, generation_config)):
      with open(os.path.join(staging, file), "w") as f:
        json.dump(content, f, indent=2)
    _copy([*modeling_files, *tokenizer_files], staging)
    os.replace(staging, out)  # `out` is absent or an empty folder
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return name


def _check_out(out: str) -> None:
  if os.path.exists(out) and not (os.path.isdir(out) and not os.listdir(out)):
    raise ValueError(f"--out={out} exists and is not an empty folder")


def _staging_folder(out: str) -> str:
  """A new hidden folder beside `out`, on the same file system (so renaming is atomic)."""
  out = os.path.abspath(out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  staging = os.path.join(os.path.dirname(out),
                         f".{os.path.basename(out)}.partial-{uuid.uuid4().hex[:8]}")
  os.mkdir(staging)
  return staging


def export_checkpoint(path, out: str, **options) -> str:
  """`save_hf` of a workdir's newest checkpoint, a step folder or an export (loaded onto
  one device with the config saved beside it); returns the architecture written."""
  _check_out(out)  # before loading the model
  loaded = state.load_model(path)
  return save_hf(out, nnx.state(loaded.model, nnx.Param), loaded.config, **options)
