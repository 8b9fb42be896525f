"""Hugging Face interoperability: import OLMo2 / Llama / Qwen3 checkpoints, export phd_jax
checkpoints, and a PyTorch PHD model (`modeling_phd.py`) for transformers users.

  python -m phd_jax.convert from_hf --hf_dir=DIR --config=configs/X.py:VARIANT --out=DIR
  python -m phd_jax.convert to_hf --workdir=RUN --out=DIR
  training: --config.checkpoint.warm_start=hf:DIR

Only `safetensors` is needed here; torch and transformers are not (the modeling files are
copied into exported directories, never imported by phd_jax).
"""

from phd_jax.hf.checkpoints import (check_model_fields, export_checkpoint, import_checkpoint,
                                    load_params, save_hf)
from phd_jax.hf.mapping import model_fields, read_config

WARM_START_PREFIX = "hf:"

__all__ = ["WARM_START_PREFIX", "check_model_fields", "export_checkpoint", "import_checkpoint",
           "load_params", "model_fields", "read_config", "save_hf"]
