"""Tiny random transformers models (built locally, never downloaded) and the batches the
Hugging Face tests feed to them and to phd_jax."""

import pathlib
import subprocess
import sys

import numpy as np
import tokenizers
import torch
import transformers
from flax import nnx

from phd_jax import hf
from run_helpers import REPO_ROOT, tiny_config

ARCHITECTURES = {
    "olmo2": (transformers.Olmo2ForCausalLM, transformers.Olmo2Config, {}),
    "llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig, {}),
    "qwen3": (transformers.Qwen3ForCausalLM, transformers.Qwen3Config,
              {"tie_word_embeddings": True}),  # also covers tied embeddings
}
VOCAB = 128


def tiny_hf_model(kind: str, seed: int = 0, **fields):
  """2 layers of width 64, GQA 4/2 heads of 16; norm scales randomised so they matter."""
  model_cls, config_cls, defaults = ARCHITECTURES[kind]
  config = config_cls(**{
      "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
      "rope_parameters": {"rope_type": "default", "rope_theta": 10_000.0},
      "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
      **defaults, **fields})
  torch.manual_seed(seed)
  model = model_cls(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.3 * torch.randn_like(p))
  return model


def save_tiny(kind: str, directory, **save_options) -> pathlib.Path:
  tiny_hf_model(kind).save_pretrained(directory, **save_options)
  return pathlib.Path(directory)


def phd_config(hf_dir, variant: str = "Vanilla", **phd_fields):
  """configs/tiny.py with the model fields of the HF checkpoint in `hf_dir`."""
  config = tiny_config(variant)
  config.model.update(hf.model_fields(hf.read_config(hf_dir)))
  config.phd.update(phd_fields)
  return config


def assert_params_equal(actual, expected):
  """Two nnx parameter states hold the same paths and exactly the same values."""
  actual, expected = dict(nnx.to_flat_state(actual)), dict(nnx.to_flat_state(expected))
  assert sorted(actual) == sorted(expected)
  for path, var in expected.items():
    np.testing.assert_array_equal(np.asarray(actual[path].get_value()),
                                  np.asarray(var.get_value()), err_msg=str(path))


def padded_batch(seed: int = 0, length: int = 12):
  """tokens, attention mask (1 = token) and in-document positions `[3, length]`: one full
  row, one left-padded, one right-padded."""
  tokens = np.random.default_rng(seed).integers(0, VOCAB, (3, length))
  mask = np.ones((3, length), np.int64)
  mask[1, :4] = 0
  mask[2, length - 5:] = 0
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  return tokens, mask, positions


def write_tokenizer_json(path):
  """A word-level tokenizer.json over the tiny vocabulary, `<|endoftext|>` its last id."""
  vocab = {f"t{i}": i for i in range(VOCAB - 1)} | {"<|endoftext|>": VOCAB - 1}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.add_special_tokens(["<|endoftext|>"])
  tok.save(str(path))


def convert(*args) -> subprocess.CompletedProcess:
  """`python -m phd_jax.convert ARGS` as a user runs it (exit code, stdout, stderr)."""
  return subprocess.run([sys.executable, "-m", "phd_jax.convert", *map(str, args)],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
