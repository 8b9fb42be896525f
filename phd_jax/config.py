"""Experiment configs: loading a config file, the one validation, and typed views.

A config file is a Python file anywhere on disk with `get_config(variant=None)` returning an
ml_collections ConfigDict; the files in `configs/` start from `phd_jax.defaults`.
`load_config("dir/file.py:VARIANT")` loads one by path, as `--config` does.

`validate(config)` is the one place that decides whether a config can run: the dry run,
training, evaluation and the benchmarks all call it before building or compiling anything,
so none of them accepts what another refuses. It raises `ConfigError` (a ValueError) whose
one-line message names the field, its value and what would work. Its second half,
`check_files` (tokenizer, dataset, task files), can run on its own: the dry run sizes a
model first and refuses afterwards, so a pod is sized before the data exists. The warm
start is checked where it is loaded (`phd_jax.train.check_warm_start`): a transformers
model's shape is read by `phd_jax.hf`, a layer above this one.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os

import ml_collections

from phd_jax import attention as attention_lib
from phd_jax import checkpoint, data, sharding
from phd_jax.layers import DTYPES
from phd_jax.masks import PHDSpec, PLTSpec, parse_variant
from phd_jax.model import NORM_STYLES, REMAT_POLICIES, ModelConfig

SCHEDULES = ("cosine", "linear", "wsd")
WANDB_MODES = ("online", "offline", "disabled")  # of wandb.init
# The splits `phd_jax.data.prepare` writes (and so the "stdlib" corpus has).
PREPARED_SPLITS = ("train", "validation")


class ConfigError(ValueError):
  """A config that cannot run; the message names the field, the value and the remedy."""


# ---------------------------------------------------------------------------------------------
# Loading.


def load_config(path, variant: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(variant)` of the config file at `path` ("dir/file.py" or
  "dir/file.py:VARIANT"); relative paths are taken from the current directory."""
  path = os.fspath(path)
  if variant is None and ":" in path:
    path, variant = path.split(":", 1)
  if not os.path.isfile(path):
    where = "" if os.path.isabs(path) else f" (looked for {os.path.abspath(path)})"
    raise ConfigError(f"config file {path} does not exist{where}")
  name = "phd_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"config file {path} defines no get_config()")
  return module.get_config() if variant is None else module.get_config(variant)


def flat_fields(config) -> dict:
  """{"optim.lr": 4e-4, ...}: every leaf of the config by its dotted name."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update({f"{key}.{k}": v for k, v in flat_fields(value).items()})
    else:
      flat[key] = value
  return flat


def unknown_field_message(config, name: str) -> str | None:
  """None when `name` ("optim.lr") is a field of `config`, else an error naming the
  closest fields."""
  fields = flat_fields(config)
  if name in fields:
    return None
  group, _, last = name.rpartition(".")

  def initials(word):
    return "".join(part[:1] for part in word.split("_"))

  # An abbreviation either way ("learning_rate" for "lr"), then similar spellings, then the
  # same name in another group ("optm.lr").
  close = [f for f in fields if f.rpartition(".")[0] == group
           and initials(last) in (f.rpartition(".")[2], initials(f.rpartition(".")[2]))]
  close += difflib.get_close_matches(name, fields, n=3, cutoff=0.6)
  close += [f for f in fields if f.rpartition(".")[2] == last]
  close = list(dict.fromkeys(close))[:3]
  hint = f"; did you mean {' or '.join(close)}?" if close else ""
  return f"config has no field {name}{hint}"


def to_json(config) -> str:
  """The resolved config as JSON (saved with checkpoints and logs)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))


# ---------------------------------------------------------------------------------------------
# Typed views.


# PLTSpec fields set by `phd.plt_<field>` (configs saved before PLT lack them: the defaults).
PLT_SETTINGS = ("gate", "emb_scale", "hidden_scale", "norm_per_loop")


def phd_spec(config) -> PHDSpec | PLTSpec:
  """The variant's settings: `phd.variant`, and the `phd` fields of its kind (PHD:
  window_unit, positions; PLT: plt_gate, plt_emb_scale, ...)."""
  p = config.phd
  try:
    spec = parse_variant(p.variant)
    if isinstance(spec, PHDSpec):
      return dataclasses.replace(spec, window_unit=p.window_unit, positions=p.positions)
  except ValueError as e:
    raise ConfigError(f"phd.variant={p.variant!r}: {e}") from None
  for field, default in (("window_unit", "tokens"), ("positions", "shared")):
    if p[field] != default:
      raise ConfigError(f"phd.{field}={p[field]!r} sets PHD's hidden copies; {spec.name} is "
                        f"a PLT variant: leave it {default!r}")
  for field in PLT_SETTINGS:
    try:
      spec = dataclasses.replace(spec, **{field: p.get(f"plt_{field}", getattr(spec, field))})
    except ValueError as e:
      raise ConfigError(f"phd.plt_{field}: {e}") from None
  return spec


def model_config(config) -> ModelConfig:
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = set(config.model.keys()) - fields
  if unknown:
    raise ConfigError(f"unknown model fields: {sorted('model.' + u for u in unknown)}")
  return ModelConfig(**config.model.to_dict())


def profile_range(config) -> range | None:
  """`profile_steps` "START:STOP": trace the steps START..STOP-1 (None: no trace)."""
  text = config.profile_steps
  if not text:
    return None
  try:
    first, last = (int(x) for x in str(text).split(":"))
  except ValueError:
    raise ConfigError(f"profile_steps must look like 'START:STOP'; got {text!r}") from None
  if not 0 <= first < last <= config.num_steps:
    raise ConfigError(f"profile_steps={text!r} needs 0 <= START < STOP <= num_steps="
                      f"{config.num_steps}")
  return range(first, last)


def eval_task_names(config) -> tuple[str, ...]:
  """The zero-shot tasks of in-loop evaluation (`eval_tasks`, comma separated)."""
  return tuple(t.strip() for t in config.eval_tasks.split(",") if t.strip())


# ---------------------------------------------------------------------------------------------
# Validation.


def _get(config, name):
  value = config
  for part in name.split("."):
    value = value[part]
  return value


def _integers(config, low: int, *names):
  for name in names:
    value = _get(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      what = "a positive integer" if low == 1 else f"an integer >= {low}"
      raise ConfigError(f"{name} must be {what}; got {value!r}")


def _in_range(name, value, low, high, *, closed_high=False):
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
      low <= value <= high if closed_high else low <= value < high)
  if not ok:
    raise ConfigError(f"{name} must lie in [{low}, {high}{']' if closed_high else ')'}; "
                      f"got {value!r}")


def _one_of(name, value, allowed):
  if value not in allowed:
    raise ConfigError(f"{name} must be one of {sorted(allowed)}; got {value!r}")


def _check_model(config):
  phd_spec(config)
  m = model_config(config)
  _integers(config, 1, "model.vocab_size", "model.d_model", "model.num_layers",
            "model.num_heads", "model.num_kv_heads", "model.head_dim", "model.mlp_dim")
  if m.num_heads % m.num_kv_heads:
    raise ConfigError(f"model.num_heads={m.num_heads} must be a multiple of "
                      f"model.num_kv_heads={m.num_kv_heads}")
  if m.head_dim % 2:
    raise ConfigError(f"model.head_dim={m.head_dim} must be even (RoPE rotates pairs)")
  _one_of("model.norm_style", m.norm_style, NORM_STYLES)
  _one_of("model.dtype", m.dtype, DTYPES)
  _one_of("model.remat", m.remat, REMAT_POLICIES)
  try:
    attention_lib.resolve(m.attention_impl)
  except ValueError as e:
    raise ConfigError(f"model.{e}") from None


def _check_optim(config):
  o = config.optim
  _one_of("optim.schedule", o.schedule, SCHEDULES)
  if not (isinstance(o.lr, (int, float)) and o.lr > 0):
    raise ConfigError(f"optim.lr must be > 0; got {o.lr!r}")
  if not 0 <= o.warmup_steps <= config.num_steps:
    raise ConfigError(f"optim.warmup_steps={o.warmup_steps} must lie in [0, num_steps="
                      f"{config.num_steps}]")
  _in_range("optim.min_lr_ratio", o.min_lr_ratio, 0.0, 1.0, closed_high=True)
  if not 0.0 < o.decay_fraction <= 1.0:
    raise ConfigError(f"optim.decay_fraction must lie in (0, 1]; got {o.decay_fraction}")
  _in_range("optim.b1", o.b1, 0.0, 1.0)
  _in_range("optim.b2", o.b2, 0.0, 1.0)
  for name in ("eps", "weight_decay", "grad_clip", "z_loss"):
    _in_range(f"optim.{name}", o[name], 0.0, float("inf"))


def _check_loop(config):
  _integers(config, 1, "seq_len", "batch_size", "microbatches", "num_steps", "log_every")
  _integers(config, 0, "eval_every")
  if config.eval_every:
    _integers(config, 1, "eval_batches", "eval_limit")
  if config.batch_size % config.microbatches:
    raise ConfigError(f"batch_size={config.batch_size} must be divisible by "
                      f"microbatches={config.microbatches}")
  profile_range(config)
  checkpoint.check_options(config)  # the checkpointer's own settings, asked of it


def _check_eval_tasks(config, training: bool):
  if not (training and config.eval_every):
    return
  from phd_jax.eval.tasks import load_task  # pylint: disable=import-outside-toplevel
  for name in eval_task_names(config):
    try:
      load_task(config.eval_data_dir, name, limit=1)
    except ValueError as e:
      raise ConfigError(f"eval_tasks={config.eval_tasks!r}, eval_data_dir="
                        f"{config.eval_data_dir!r}: {e}") from None


def _check_tokenizer(config, training: bool):
  """The tokenizer file (and its vocabulary against the model's)."""
  del training  # evaluation tokenizes too
  if config.data.source in data.TOKEN_SOURCES:  # no text
    return
  try:
    tokenizer = data.make_tokenizer(config)
  except ValueError as e:
    hint = (" (the config file's docstring or the README says where to get it)"
            if "tokenizer_path" in str(e) else "")
    raise ConfigError(f"{e}{hint}") from None
  data.check_vocab(tokenizer, config)


def _check_splits(config, training: bool):
  """The dataset splits a run reads, asked of the dataset's metadata, not its data."""
  d = config.data
  if d.source in data.TOKEN_SOURCES:  # no files; their splits are fixed
    return
  from phd_jax.data import sources  # pylint: disable=import-outside-toplevel
  splits = {}  # the splits this run reads, by their field
  if training:
    splits["train"] = "data.train_split"
  if config.eval_every or not training:
    splits["validation"] = "data.eval_split"
  for split, field in splits.items():
    name = _get(config, field)
    if d.source == "stdlib":
      if name.split("[")[0] not in PREPARED_SPLITS:
        raise ConfigError(f"{field}={name!r}: the stdlib corpus has the splits "
                          f"{list(PREPARED_SPLITS)}")
    else:
      try:
        sources.open_documents(config, split)
      except ValueError as e:
        raise ConfigError(f"{field}={name!r}: {e}") from None


def _as_config_error(check, config, training: bool) -> None:
  """`check(config, training)`, with what the modules it asks raise as a ConfigError."""
  try:
    check(config, training)
  except ConfigError:
    raise
  except ValueError as e:  # raised by the modules whose settings these are
    raise ConfigError(str(e)) from None
  except (KeyError, AttributeError) as e:
    raise ConfigError(f"config lacks the field {e}; start it from "
                      "phd_jax.defaults.get_config()") from None


def _check_source(config):
  _one_of("data.source", config.data.source, data.SOURCES)


def _check_train_tokens(config):
  """`data.train_tokens` (phd_jax/data/restrict.py). Whether the split holds that many is
  known only once they are tokenized: the data pipeline refuses more before the first step."""
  _integers(config, 0, "data.train_tokens")
  tokens, source = config.data.train_tokens, config.data.source
  if tokens and source in data.TOKEN_SOURCES:
    raise ConfigError(f"data.train_tokens={tokens} keeps the first documents of a dataset "
                      f"(data.source 'stdlib' or 'tfds'), but data.source={source!r} draws "
                      "fresh samples every step; set data.train_tokens=0")


def _check_tracking(config):
  """`metrics.wandb_*` (phd_jax/tracking.py); with a project set, that wandb imports. A
  config saved before the group existed logs to no W&B project."""
  metrics = config.get("metrics")
  if metrics is None:
    return
  for name in ("wandb_project", "wandb_entity"):
    if not isinstance(metrics[name], str):
      raise ConfigError(f"metrics.{name} must be a string; got {metrics[name]!r}")
  _one_of("metrics.wandb_mode", metrics.wandb_mode, WANDB_MODES)
  if metrics.wandb_project:
    try:
      import wandb  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError as e:
      raise ConfigError(f"metrics.wandb_project={metrics.wandb_project!r} logs to Weights & "
                        f"Biases, but wandb does not import ({e}): pip install wandb, or "
                        "--config.metrics.wandb_project='' to train without it") from None


def _check_settings(config, training: bool):
  _check_model(config)
  _check_loop(config)
  _check_optim(config)
  _check_source(config)
  _check_tracking(config)
  if training:
    _check_train_tokens(config)
    sharding.check_batch(config, sharding.make_mesh(config))


def check_files(config, *, training: bool = True) -> None:
  """The files part of `validate`: the in-loop evaluation's task files (training only),
  the tokenizer and the dataset splits the run reads. Raises one
  ConfigError naming every file that is missing or unusable (`; ` between them), so the
  files a pod needs can be gathered in one go."""
  problems = []
  for check in (_check_eval_tasks, _check_tokenizer, _check_splits):
    try:
      _as_config_error(check, config, training)
    except ConfigError as e:
      problems.append(str(e))
  if problems:
    raise ConfigError("; ".join(problems))


def validate(config, *, training: bool = True, files: bool = True) -> None:
  """Raise ConfigError naming the first setting that cannot work, before anything is built.

  Checks every field's value; then, for training, the mesh over the devices at hand and
  the batch over the mesh; then the files the run reads (`check_files`). `training=False`
  (evaluating or sampling a saved run) skips what only training uses: the mesh, the
  training split and the tasks. `files=False` skips the files: the dry run
  sizes a model before its data is downloaded, then calls `check_files` itself.
  """
  _as_config_error(_check_settings, config, training)
  if files:
    check_files(config, training=training)
