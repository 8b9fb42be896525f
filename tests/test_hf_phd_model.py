"""The PyTorch PHD model (modeling_phd.py, loaded with trust_remote_code) computes what the
JAX model computes, for every variant."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from phd_jax import decode, hf, state
import hf_helpers
from tier_helpers import one_fast

# (norm/QK-norm style of the source checkpoint, variant, window_unit, positions)
CASES = [
    ("olmo2", "Vanilla", "tokens", "shared"),
    ("olmo2", "PHD-3", "tokens", "shared"),
    ("olmo2", "PHD-3", "tokens", "expanded"),
    ("olmo2", "PHD-SWA-3-2-inf", "tokens", "shared"),
    ("olmo2", "PHD-SWA-3-2-inf", "positions", "shared"),
    ("olmo2", "PHD-CSWA-3-2-4", "tokens", "shared"),
    ("olmo2", "PHD-CSWA-3-3-4", "positions", "expanded"),
    ("llama", "PHD-CSWA-2-2-4", "tokens", "shared"),
    ("qwen3", "PHD-SWA-2-3-inf", "tokens", "expanded"),
]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  return {kind: hf_helpers.save_tiny(kind, root / kind) for kind in hf_helpers.ARCHITECTURES}


def _export_phd(hf_dir, out, variant, window_unit, positions):
  """The JAX model of the checkpoint as `variant`, and its PhdForCausalLM export."""
  config = hf_helpers.phd_config(hf_dir, variant, window_unit=window_unit, positions=positions)
  params = hf.load_params(hf_dir, config)
  assert hf.save_hf(str(out), params, config, architecture="phd") == "PhdForCausalLM"
  torch_model = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
  return state.model_from_params(config, params), torch_model.eval()


@pytest.mark.parametrize("kind,variant,window_unit,positions", one_fast(CASES))
def test_pytorch_phd_model_equals_jax_on_a_padded_batch(hf_dirs, tmp_path, kind, variant,
                                                        window_unit, positions):
  model, torch_model = _export_phd(hf_dirs[kind], tmp_path / "phd", variant, window_unit,
                                   positions)
  tokens, mask, in_doc_positions = hf_helpers.padded_batch(length=10)
  expected = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask),
                              jnp.asarray(in_doc_positions)))
  with torch.no_grad():  # positions counted from the mask by the PyTorch model itself
    logits = torch_model(torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
  real = mask.astype(bool)
  np.testing.assert_allclose(logits[real], expected[real], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_pytorch_phd_generation_equals_phd_jax_decoding(hf_dirs, tmp_path):
  model, torch_model = _export_phd(hf_dirs["olmo2"], tmp_path / "phd", "PHD-CSWA-3-2-4",
                                   "tokens", "shared")
  prompt = [5, 17, 99, 3, 64, 12, 40]
  with torch.no_grad():
    out = torch_model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)
  assert out[0, len(prompt):].tolist() == decode.generate(model, [prompt], 16)[0]
