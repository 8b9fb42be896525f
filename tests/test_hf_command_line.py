"""`python -m phd_jax.convert` as a user meets it: an untrusted model directory, damaged
weights, bad flags, --config settings, and what HF generation reads kept by a round trip."""

import json
import os
import re
import shutil
import struct

import numpy as np
import pytest
import transformers
from flax import nnx

from phd_jax import checkpoint, convert, hf, state
from phd_jax.data import tokenizers
from phd_jax.hf import mapping, weights
import hf_helpers
from run_helpers import TINY_CONFIG, tiny_config

# Not the ids the tokenizer written beside them would give: the import keeps the source's.
SOURCE_IDS = {"bos_token_id": 5, "eos_token_id": 7}
MAX_POSITIONS = 96  # neither tiny.py's seq_len (256) nor the --config.seq_len given below


def _one_line_error(result) -> str:
  assert result.returncode == 1, (result.stdout, result.stderr)
  assert result.stderr.startswith("phd_jax.convert: error: "), result.stderr
  assert result.stderr.count("\n") == 1, result.stderr
  return result.stderr


def _from_hf(hf_dir, out, *settings, config=TINY_CONFIG):
  return hf_helpers.convert("from_hf", f"--hf_dir={hf_dir}", f"--config={config}",
                            f"--out={out}", *settings)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
  """A tiny OLMo2 checkpoint in several shards with their index."""
  return hf_helpers.save_tiny("olmo2", tmp_path_factory.mktemp("hf") / "olmo2",
                              max_shard_size="30KB")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """(source, export): a Vanilla Llama with its own special ids, context length and
  tokenizer, imported with three --config settings."""
  root = tmp_path_factory.mktemp("imported")
  hf_helpers.tiny_hf_model("llama", **SOURCE_IDS, max_position_embeddings=MAX_POSITIONS
                           ).save_pretrained(root / "source")
  hf_helpers.write_tokenizer_json(root / "source" / "tokenizer.json")
  result = _from_hf(root / "source", root / "export", "--config.seq_len=64",
                    "--noconfig.model.scan_layers", "--config.optim.lr=0.01")
  assert result.returncode == 0, result.stderr
  return root / "source", root / "export"


# ---------------------------------------------------------------------------------------------
# An untrusted model directory.


@pytest.mark.slow
@pytest.mark.parametrize("how", ["relative", "absolute", "link"])
def test_index_entries_leading_out_of_the_model_directory_are_refused(tmp_path, sharded, how):
  model, outside = tmp_path / "model", tmp_path / "outside.safetensors"
  shutil.copytree(sharded, model)
  index = json.loads((model / weights.INDEX_FILE).read_text())
  moved = sorted(set(index["weight_map"].values()))[-1]
  (model / moved).rename(outside)  # a valid shard, now outside the model directory
  entry = {"relative": "../outside.safetensors", "absolute": str(outside),
           "link": "link.safetensors"}[how]
  if how == "link":
    (model / entry).symlink_to(outside)
  index["weight_map"] = {name: entry if shard == moved else shard
                         for name, shard in index["weight_map"].items()}
  (model / weights.INDEX_FILE).write_text(json.dumps(index))

  err = _one_line_error(_from_hf(model, tmp_path / "out"))
  tensor = next(name for name, shard in index["weight_map"].items() if shard == entry)
  assert (f"weight_map[{tensor!r}] = {entry!r} resolves to {os.path.realpath(outside)}, "
          f"outside {model}") in err
  assert not (tmp_path / "out").exists()


def test_a_tokenizer_file_linking_out_of_the_model_directory_is_refused(tmp_path, sharded):
  model = tmp_path / "model"
  shutil.copytree(sharded, model)
  hf_helpers.write_tokenizer_json(tmp_path / "elsewhere.json")
  (model / "tokenizer.json").symlink_to(tmp_path / "elsewhere.json")
  with pytest.raises(ValueError, match=r"tokenizer.json resolves to .*elsewhere.json, outside"):
    hf.import_checkpoint(str(model), tiny_config(), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_hub_cache_snapshots_linking_into_their_blobs_are_read(tmp_path, sharded):
  """The Hugging Face cache's layout: snapshots/<revision>/<file> -> ../../blobs/<hash>."""
  repo = tmp_path / "models--tiny--olmo2"
  snapshot = repo / "snapshots" / "0123abcd"
  snapshot.mkdir(parents=True)
  (repo / "blobs").mkdir()
  for i, name in enumerate(sorted(os.listdir(sharded))):
    shutil.copy(sharded / name, repo / "blobs" / f"blob{i}")
    (snapshot / name).symlink_to(os.path.join("..", "..", "blobs", f"blob{i}"))
  config = hf_helpers.phd_config(sharded)
  read = dict(nnx.to_flat_state(hf.load_params(str(snapshot), config)))
  for path, var in nnx.to_flat_state(hf.load_params(str(sharded), config)):
    np.testing.assert_array_equal(read[path].get_value(), var.get_value(), err_msg=str(path))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated shard", "header of 2**40 bytes"])
def test_damaged_safetensors_are_named_in_one_line(tmp_path, sharded, damage):
  model = tmp_path / "model"
  if damage == "truncated shard":
    shutil.copytree(sharded, model)
    damaged = sorted(model.glob("model-*.safetensors"))[0]
    damaged.write_bytes(damaged.read_bytes()[:-1000])
  else:  # the single-file layout, whose header length is its first 8 bytes
    hf_helpers.save_tiny("llama", model)
    damaged = model / weights.WEIGHTS_FILE
    damaged.write_bytes(struct.pack("<Q", 2**40) + damaged.read_bytes()[8:])
  err = _one_line_error(_from_hf(model, tmp_path / "out"))
  assert f"{damaged} is not a readable safetensors file" in err
  assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Flags and --config settings.


@pytest.mark.slow
def test_a_shard_size_of_zero_is_refused(tmp_path, imported, capsys):
  out = tmp_path / "hf"
  err = _one_line_error(hf_helpers.convert("to_hf", f"--checkpoint={imported[1]}",
                                           f"--out={out}", "--max_shard_gib=0"))
  assert "--max_shard_gib must be a positive number of GiB (e.g. 5); got 0" in err
  assert convert.main(["to_hf", f"--checkpoint={imported[1]}", f"--out={out}",
                       "--max_shard_gib=-2"]) == 1
  assert "got -2" in capsys.readouterr().err
  assert not out.exists()


@pytest.mark.slow
def test_config_settings_reach_the_export(imported):
  saved = checkpoint.saved_config(imported[1])
  assert (saved.seq_len, saved.model.scan_layers, saved.optim.lr) == (64, False, 0.01)
  assert (saved.model.d_model, saved.model.norm_style) == (64, "pre")  # the checkpoint's


@pytest.mark.slow
def test_a_setting_of_no_field_is_named_with_the_closest(tmp_path, imported):
  err = _one_line_error(_from_hf(imported[0], tmp_path / "out", "--config.optim.lrr=0.01"))
  assert "--config.optim.lrr=0.01: config has no field optim.lrr; did you mean optim.lr" in err
  assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("argument,message", [
    ("--config.model.d_model=32", r"--config.model.d_model=32: the checkpoint sets "
                                  r"model.d_model \(64, from its config.json\)"),
    ("--config.seq_len=long", r"--config.seq_len=long: invalid literal for int\(\)"),
    ("--config.seq_len 64", "unrecognised argument 64; settings look like --config.FIELD=VALUE"),
])
def test_settings_that_cannot_apply_are_refused_in_one_line(tmp_path, imported, capsys,
                                                            argument, message):
  argv = ["from_hf", f"--hf_dir={imported[0]}", f"--config={TINY_CONFIG}", f"--out={tmp_path / 'out'}"]
  assert convert.main(argv + argument.split()) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert re.search(message, err), err
  assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_variant_given_as_the_config_file_gets_the_right_form(tmp_path, imported, capsys):
  assert convert.main(["from_hf", f"--hf_dir={imported[0]}", "--config=PHD-2",
                       f"--out={tmp_path / 'out'}"]) == 1
  assert ("config file PHD-2 does not exist" in (err := capsys.readouterr().err)
          and err.rstrip().endswith("e.g. --config=configs/tiny.py:PHD-2"))


# ---------------------------------------------------------------------------------------------
# What HF generation reads besides the weights.


@pytest.mark.slow
def test_vanilla_round_trip_keeps_special_ids_context_and_generation_config(tmp_path, imported):
  source, export = imported
  out = tmp_path / "hf"
  result = hf_helpers.convert("to_hf", f"--checkpoint={export}", f"--out={out}")
  assert result.returncode == 0, result.stderr
  original = json.loads((source / "config.json").read_text())
  written = json.loads((out / "config.json").read_text())
  for field in ("architectures", "bos_token_id", "eos_token_id", "max_position_embeddings"):
    assert written[field] == original[field], field
  assert written["max_position_embeddings"] == MAX_POSITIONS  # not the seq_len of 64
  assert (json.loads((out / "generation_config.json").read_text())
          == json.loads((source / "generation_config.json").read_text()))
  generation = transformers.GenerationConfig.from_pretrained(out)
  assert (generation.bos_token_id, generation.eos_token_id) == (5, 7)
  assert transformers.AutoConfig.from_pretrained(out).max_position_embeddings == MAX_POSITIONS


def test_a_model_trained_from_scratch_exports_its_tokenizers_ids_and_length(tmp_path):
  config = tiny_config()  # the byte tokenizer, 256-token sequences
  params = nnx.state(state.new_model(config), nnx.Param)
  hf.save_hf(str(tmp_path / "hf"), params, config)
  written = json.loads((tmp_path / "hf" / "config.json").read_text())
  ids = {"bos_token_id": tokenizers.BOS_ID, "eos_token_id": tokenizers.EOS_ID}
  assert {k: written[k] for k in ids} == ids
  assert written["max_position_embeddings"] == 256
  assert json.loads((tmp_path / "hf" / "generation_config.json").read_text()) == ids


def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
  config = tiny_config()
  params = nnx.state(state.new_model(config), nnx.Param)
  calls = []

  def fail_on_the_tenth(tensor, array):
    calls.append(tensor.hf_name)
    if len(calls) == 10:
      raise OSError("disk full")
    return original(tensor, array)

  original = mapping.to_hf
  monkeypatch.setattr(mapping, "to_hf", fail_on_the_tenth)
  with pytest.raises(OSError, match="disk full"):
    hf.save_hf(str(tmp_path / "hf"), params, config, max_shard_bytes=1)  # a shard per tensor
  assert os.listdir(tmp_path) == []
