"""The transformers export of PLT variants: PhdForCausalLM (modeling_phd.py running
modeling_plt.py, loaded with trust_remote_code) computes what the JAX PLT model computes,
and the export reads back into phd_jax exactly."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from phd_jax import checkpoint, convert, hf, state
import hf_helpers
from run_helpers import TINY_CONFIG
from tier_helpers import one_fast

# (norm/QK-norm style of the source checkpoint, variant, phd.plt_* settings)
CASES = [
    ("olmo2", "PLT-2-3", {}),
    ("olmo2", "PLT-3-4", {"plt_gate": "hidden", "plt_emb_scale": 0.7, "plt_hidden_scale": 0.3}),
    ("llama", "PLT-2", {"plt_norm_per_loop": False}),
    ("qwen3", "PLT-3-2", {"plt_gate": "hidden", "plt_norm_per_loop": False,
                          "plt_hidden_scale": 0.5}),
    ("llama", "PLT-2-5", {"plt_emb_scale": 0.707, "plt_hidden_scale": 0.053}),
]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  return {kind: hf_helpers.save_tiny(kind, root / kind) for kind in hf_helpers.ARCHITECTURES}


def _plt_params(hf_dir, config, seed=0):
  """`config`'s PLT parameters: the dense checkpoint's weights, and gates (if any) random
  and far from their initial ~1/2, so that a gate misread or swapped shows."""
  dense = dict(nnx.to_flat_state(hf.load_params(hf_dir, hf_helpers.phd_config(hf_dir))))
  rng = np.random.default_rng(seed)
  return nnx.from_flat_state([
      (path, var.replace(value=dense[path].get_value() if path in dense else
                         rng.normal(0.0, 0.5, var.get_value().shape).astype(np.float32)))
      for path, var in nnx.to_flat_state(_new_params(config))])


def _new_params(config):
  return nnx.state(state.new_model(config), nnx.Param)


def _load_torch(hf_dir):
  """The exported model through transformers, every tensor of the checkpoint used."""
  model, info = transformers.AutoModelForCausalLM.from_pretrained(
      hf_dir, trust_remote_code=True, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  return model.eval()


def _export(hf_dir, out, variant, settings):
  """The JAX PLT model of the checkpoint (with random gates) and its export."""
  config = hf_helpers.phd_config(hf_dir, variant, **settings)
  params = _plt_params(hf_dir, config)
  assert hf.save_hf(str(out), params, config) == "PhdForCausalLM"
  return state.model_from_params(config, params), _load_torch(out)


def _assert_same_logits_on_a_padded_batch(model, torch_model):
  tokens, mask, in_doc_positions = hf_helpers.padded_batch(length=10)
  expected = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask),
                              jnp.asarray(in_doc_positions)))
  with torch.no_grad():  # positions counted from the mask by the PyTorch model itself
    logits = torch_model(torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
  real = mask.astype(bool)  # padding computes whatever each side computes for it
  np.testing.assert_allclose(logits[real], expected[real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind,variant,settings", one_fast(CASES))
def test_pytorch_plt_model_equals_jax_on_a_padded_batch(hf_dirs, tmp_path, kind, variant,
                                                        settings):
  model, torch_model = _export(hf_dirs[kind], tmp_path / "plt", variant, settings)
  _assert_same_logits_on_a_padded_batch(model, torch_model)


def _greedy(model, prompt, steps):
  """JAX greedy tokens of the uncached forward, on one buffer of fixed length (one
  compile): the logits at the last token written cannot see the zeros after it."""
  forward = nnx.jit(lambda m, tokens: m(tokens))
  buffer = np.zeros((1, len(prompt) + steps), np.int32)
  buffer[0, :len(prompt)] = prompt
  for t in range(len(prompt), buffer.shape[1]):
    buffer[0, t] = np.argmax(np.asarray(forward(model, jnp.asarray(buffer)))[0, t - 1])
  return buffer[0, len(prompt):].tolist()


@pytest.mark.slow
def test_pytorch_plt_generation_equals_jax_greedy_decoding(hf_dirs, tmp_path):
  model, torch_model = _export(hf_dirs["olmo2"], tmp_path / "plt", "PLT-3-4",
                               {"plt_gate": "hidden"})
  prompt = [5, 17, 99, 3, 64, 12, 40]
  with torch.no_grad():
    out = torch_model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
  assert out[0, len(prompt):].tolist() == _greedy(model, prompt, 12)


# (layers scanned, tied embeddings, variant, phd.plt_* settings, the config.json it gives)
ROUND_TRIPS = [
    (True, False, "PLT-2-4", {}, dict(plt_num_loops=2, plt_window=4,
                                      plt_gate_use_hidden_states=False, plt_emb_scale=1.0,
                                      plt_hidden_scale=1.0, plt_normalize_per_loop=True)),
    (False, True, "PLT-3-2", {"plt_gate": "hidden", "plt_emb_scale": 0.5,
                              "plt_norm_per_loop": False},
     dict(plt_num_loops=3, plt_window=2, plt_gate_use_hidden_states=True, plt_emb_scale=0.5,
          plt_hidden_scale=1.0, plt_normalize_per_loop=False)),
]


@pytest.mark.parametrize("scan_layers,tie,variant,settings,fields", ROUND_TRIPS)
def test_plt_to_hf_to_plt_is_exact(hf_dirs, tmp_path, scan_layers, tie, variant, settings,
                                   fields):
  config = hf_helpers.phd_config(hf_dirs["olmo2"], variant, **settings)
  config.model.update(scan_layers=scan_layers, tie_embeddings=tie)
  config.seed = 3
  params = _new_params(config)
  # A few kilobytes per shard: the gates cross shard boundaries too.
  hf.save_hf(str(tmp_path / "hf"), params, config, max_shard_bytes=40_000)
  written = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert {k: written[k] for k in fields} == fields
  assert (written["phd_variant"], written.get("phd_k", 1)) == (variant, 1)  # no PHD copies
  hf_helpers.assert_params_equal(hf.load_params(str(tmp_path / "hf"), config), params)


@pytest.mark.slow
def test_command_line_export_of_a_plt_export_runs_in_transformers_and_imports_back(
    hf_dirs, tmp_path):
  settings = {"plt_gate": "hidden", "plt_hidden_scale": 0.25}
  config = hf_helpers.phd_config(hf_dirs["llama"], "PLT-2-3", **settings)
  params = _plt_params(hf_dirs["llama"], config)
  checkpoint.export_params(tmp_path / "export", params, config)
  out = tmp_path / "hf"
  assert convert.main(["to_hf", f"--checkpoint={tmp_path / 'export'}", f"--out={out}"]) == 0
  assert (out / "modeling_plt.py").is_file()
  _assert_same_logits_on_a_padded_batch(state.model_from_params(config, params),
                                        _load_torch(out))
  back = tmp_path / "back"
  assert convert.main(["from_hf", f"--hf_dir={out}", f"--config={TINY_CONFIG}:PLT-2-3",
                       *(f"--config.phd.{k}={v}" for k, v in settings.items()),
                       f"--out={back}"]) == 0
  saved = checkpoint.saved_config(back)
  assert (saved.phd.variant, saved.phd.plt_gate, saved.model.norm_style) == (
      "PLT-2-3", "hidden", "pre")
  hf_helpers.assert_params_equal(nnx.state(state.load_model(str(back)).model, nnx.Param), params)


# ---------------------------------------------------------------------------------------------
# Refusals: one line naming what to change.


def test_a_variant_whose_gates_differ_from_the_checkpoints_is_refused(hf_dirs, tmp_path):
  plt = hf_helpers.phd_config(hf_dirs["olmo2"], "PLT-2-4")
  hf.save_hf(str(tmp_path / "plt"), _new_params(plt), plt)
  cases = [  # (checkpoint, variant, phd.plt_gate, what the error says)
      (tmp_path / "plt", "PLT-2-4", "hidden", "its layers have PLT gates that read the query, "
       "but phd.variant=PLT-2-4 has PLT gates that read the hidden state"),
      (tmp_path / "plt", "Vanilla", "query", "its layers have PLT gates that read the query, "
       "but phd.variant=Vanilla has no PLT gates"),
      (hf_dirs["olmo2"], "PLT-2-4", "query", "its layers have no PLT gates, but "
       "phd.variant=PLT-2-4 has PLT gates that read the query"),
  ]
  for hf_dir, variant, gate, message in cases:
    with pytest.raises(ValueError, match=message):
      hf.load_params(str(hf_dir), hf_helpers.phd_config(hf_dir, variant, plt_gate=gate))


def test_plt_exports_as_phd_only(hf_dirs, tmp_path):
  config = hf_helpers.phd_config(hf_dirs["olmo2"], "PLT-2")
  with pytest.raises(ValueError, match="architecture='native' has no PLT loops; PLT-2 exports"):
    hf.save_hf(str(tmp_path / "out"), _new_params(config), config,
               architecture="native")
