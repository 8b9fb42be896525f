"""Round trips between phd_jax parameters, phd_jax exports and Hugging Face directories."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from phd_jax import checkpoint, convert, hf, state
from phd_jax.hf import weights
import hf_helpers
from run_helpers import TINY_CONFIG


def _hf_tensors(directory):
  """Every tensor of an HF directory, whatever its sharding."""
  out = {}
  for shard in sorted({*weights.shard_names(str(directory)).values()}):
    out.update(load_file(str(directory / shard)))
  return out


def _assert_tensors_equal(actual, expected):
  assert sorted(actual) == sorted(expected)
  for name in expected:
    assert actual[name].dtype == expected[name].dtype, name
    np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


@pytest.mark.parametrize("scan_layers,tie,variant", [(True, False, "Vanilla"),
                                                     (False, True, "PHD-CSWA-2-2-4")])
def test_phd_jax_to_hf_to_phd_jax_is_exact(tmp_path, scan_layers, tie, variant):
  hf_dir = hf_helpers.save_tiny("olmo2", tmp_path / "source")
  config = hf_helpers.phd_config(hf_dir, variant)
  config.model.update(scan_layers=scan_layers, tie_embeddings=tie)
  config.seed = 3
  params = nnx.state(state.new_model(config), nnx.Param)
  # A few kilobytes per shard: the index and several shards are written and read back.
  hf.save_hf(str(tmp_path / "hf"), params, config, max_shard_bytes=40_000)
  assert (tmp_path / "hf" / weights.INDEX_FILE).is_file()
  hf_helpers.assert_params_equal(hf.load_params(str(tmp_path / "hf"), config), params)


@pytest.mark.parametrize("kind", sorted(hf_helpers.ARCHITECTURES))
def test_hf_to_phd_jax_to_hf_returns_the_original_tensors(tmp_path, kind):
  source = hf_helpers.save_tiny(kind, tmp_path / "source", max_shard_size="30KB")
  config = hf_helpers.phd_config(source)
  params = hf.load_params(str(source), config)
  written = hf.save_hf(str(tmp_path / "out"), params, config)
  original = json.loads((source / "config.json").read_text())
  assert written == original["architectures"][0]
  _assert_tensors_equal(_hf_tensors(tmp_path / "out"), _hf_tensors(source))
  assert hf.model_fields(hf.read_config(str(tmp_path / "out"))) == hf.model_fields(original)


def test_command_line_round_trip_carries_weights_and_tokenizer(tmp_path):
  source = hf_helpers.save_tiny("llama", tmp_path / "source")
  hf_helpers.write_tokenizer_json(source / "tokenizer.json")
  config = TINY_CONFIG
  export = tmp_path / "export"
  assert convert.main(["from_hf", f"--hf_dir={source}", f"--config={config}:PHD-2",
                       f"--out={export}"]) == 0
  saved = checkpoint.saved_config(export)
  assert (saved.phd.variant, saved.model.norm_style, saved.model.d_model) == ("PHD-2", "pre", 64)
  assert saved.data.tokenizer == "hf"
  assert saved.data.tokenizer_path == str(export / "tokenizer.json")

  out = tmp_path / "out"
  assert convert.main(["to_hf", f"--checkpoint={export}", f"--out={out}", "--dtype=bfloat16",
                       "--architecture=phd"]) == 0
  expected = {name: array.astype(ml_dtypes.bfloat16)
              for name, array in _hf_tensors(source).items()}
  _assert_tensors_equal(_hf_tensors(out), expected)
  written = json.loads((out / "config.json").read_text())
  assert (written["architectures"], written["phd_k"], written["dtype"]) == (
      ["PhdForCausalLM"], 2, "bfloat16")
  assert (out / "modeling_phd.py").is_file()
  assert (out / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()


def test_export_refuses_to_run_phd_weights_as_a_dense_architecture(tmp_path):
  hf_dir = hf_helpers.save_tiny("olmo2", tmp_path / "source")
  config = hf_helpers.phd_config(hf_dir, "PHD-2")
  params = jax.eval_shape(lambda: nnx.state(state.new_model(config), nnx.Param))
  with pytest.raises(ValueError, match="would run the PHD-2 weights as Vanilla"):
    hf.save_hf(str(tmp_path / "out"), params, config, architecture="native")
