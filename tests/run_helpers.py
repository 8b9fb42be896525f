"""What the tests that build or train a model share: the repository's paths, the small
configs, the settings of a seconds-long run (in-process or as command-line flags), and the
metrics a run logs."""

import json
import pathlib

from phd_jax import config as config_lib
from phd_jax import defaults

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "configs" / "tiny.py"

# A 2-layer model of width 32 on 16-token synthetic sequences: compiles and trains in
# seconds. Flattened config fields, for `config.update_from_flattened_dict` or, as
# `--config.FIELD=VALUE` flags, for a run of `python -m phd_jax.main` (`config_flags`).
SHORT_RUN = {
    "model.vocab_size": 64, "model.d_model": 32, "model.num_layers": 2, "model.num_heads": 4,
    "model.num_kv_heads": 2, "model.head_dim": 8, "model.mlp_dim": 64,
    "model.rope_theta": 10_000.0, "seq_len": 16, "batch_size": 8, "eval_every": 0,
    "data.source": "synthetic",
}


def tiny_config(variant=None):
  """configs/tiny.py (the variant: the file's own unless given)."""
  return config_lib.load_config(TINY_CONFIG, variant)


def small_config(variant="PHD-CSWA-2-2-4", mesh=(1, 1, 1), **overrides):
  """The defaults with SHORT_RUN: 20 steps at lr 1e-2 on the (data, fsdp, tensor) `mesh`.
  `overrides`: flattened fields, such as `num_steps=4` or `**{"optim.lr": 1e-3}`."""
  c = defaults.get_config(variant)
  c.update_from_flattened_dict({
      **SHORT_RUN, "num_steps": 20, "log_every": 5, "optim.lr": 1e-2,
      "optim.warmup_steps": 2, "data.prefetch": 0,
      "mesh.data": mesh[0], "mesh.fsdp": mesh[1], "mesh.tensor": mesh[2], **overrides})
  return c


def config_flags(fields: dict) -> list[str]:
  """`--config.FIELD=VALUE` flags for flattened config fields."""
  return [f"--config.{field}={value}" for field, value in fields.items()]


def read_metrics(workdir) -> list[dict]:
  """The records of `workdir`/metrics.jsonl, in the order written."""
  with open(pathlib.Path(workdir) / "metrics.jsonl", encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def losses(workdir) -> dict[int, float]:
  """{step: training loss} of the run in `workdir` (a step logged twice: its last value)."""
  return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}
