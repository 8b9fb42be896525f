"""Bad Hugging Face inputs: one-line errors naming the file or field, before weights are read."""

import json
import shutil

import pytest

from phd_jax import convert, hf
import hf_helpers
from run_helpers import TINY_CONFIG


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
  """A tiny OLMo2 checkpoint in several shards with their index."""
  return hf_helpers.save_tiny("olmo2", tmp_path_factory.mktemp("hf") / "olmo2",
                              max_shard_size="30KB")


def _copy_with(source, target, **config_changes):
  """`source` with config.json fields changed (None deletes); the other files copied."""
  shutil.copytree(source, target, ignore=shutil.ignore_patterns("config.json"))
  config = json.loads((source / "config.json").read_text())
  config.update(config_changes)
  config = {k: v for k, v in config.items() if v is not None}
  (target / "config.json").write_text(json.dumps(config))
  return target


def _config(hf_dir):
  """tiny.py with the model fields of a valid OLMo2 checkpoint of this test shape."""
  return hf_helpers.phd_config(hf_dir)


def test_pickled_weights_are_refused(tmp_path, sharded):
  bin_only = tmp_path / "bin"
  bin_only.mkdir()
  (bin_only / "config.json").write_text((sharded / "config.json").read_text())
  (bin_only / "pytorch_model.bin").write_bytes(b"not unpickled")
  with pytest.raises(ValueError, match=r"only pickled weights \(pytorch_model.bin\)"):
    hf.load_params(str(bin_only), _config(sharded))


def test_missing_shard_is_named(tmp_path, sharded):
  broken = _copy_with(sharded, tmp_path / "broken")
  shard = sorted(broken.glob("model-*.safetensors"))[1]
  shard.unlink()
  with pytest.raises(ValueError, match=f"lists the shard {shard.name}, which is missing"):
    hf.load_params(str(broken), _config(sharded))


@pytest.mark.parametrize("changes,message", [
    ({"architectures": ["MistralForCausalLM"]}, r"architectures=\['MistralForCausalLM'\] is not "
                                                "supported"),
    ({"architectures": ["Qwen2ForCausalLM"]}, "always carry biases"),
    ({"attention_bias": True}, "attention_bias=true is not supported"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}},
     "rope_parameters.rope_type='llama3' is not supported"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling=.* is not supported"),
    ({"use_sliding_window": True}, "use_sliding_window=true is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
    ({"hidden_size": None}, "the field 'hidden_size' is missing"),
])
def test_unsupported_configs_name_the_field(tmp_path, sharded, changes, message):
  with pytest.raises(ValueError, match=message):
    hf.model_fields(hf.read_config(str(_copy_with(sharded, tmp_path / "bad", **changes))))


def test_config_that_disagrees_with_the_tensors_names_both(tmp_path, sharded):
  bad = _copy_with(sharded, tmp_path / "bad", intermediate_size=80)
  with pytest.raises(ValueError, match=r"model.layers.0.mlp.gate_proj.weight has shape "
                                       r"\(96, 64\), but config.json .*intermediate_size=80.* "
                                       r"implies \(80, 64\)"):
    hf.load_params(str(bad), hf_helpers.phd_config(bad))


def test_warm_start_config_mismatch_lists_the_flags_that_fix_it(sharded):
  config = hf_helpers.phd_config(sharded)
  config.model.update(d_model=128, num_layers=4)
  with pytest.raises(ValueError, match=r"model.d_model=128, model.num_layers=4; the checkpoint "
                                       r"needs --config.model.d_model=64 "
                                       r"--config.model.num_layers=2$"):
    hf.load_params(str(sharded), config)


def test_command_line_errors_are_one_line(tmp_path, sharded, capsys):
  config = TINY_CONFIG
  assert convert.main(["from_hf", f"--hf_dir={tmp_path / 'nothing'}", f"--config={config}",
                       f"--out={tmp_path / 'out'}"]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "config.json does not exist" in err
  assert not (tmp_path / "out").exists()
