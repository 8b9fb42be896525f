"""Imported OLMo2 / Llama / Qwen3 checkpoints compute what transformers computes."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from phd_jax import decode, hf, state
import hf_helpers

KINDS = sorted(hf_helpers.ARCHITECTURES)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  return {kind: hf_helpers.save_tiny(kind, root / kind) for kind in KINDS}


def _imported(hf_dir, **model_fields):
  config = hf_helpers.phd_config(hf_dir)
  config.model.update(model_fields)
  return state.model_from_params(config, hf.load_params(hf_dir, config))


@pytest.mark.parametrize("kind", KINDS)
def test_vanilla_logits_equal_transformers_on_a_padded_batch(hf_dirs, kind):
  tokens, mask, positions = hf_helpers.padded_batch()
  with torch.no_grad():
    expected = hf_helpers.tiny_hf_model(kind)(
        torch.tensor(tokens), attention_mask=torch.tensor(mask),
        position_ids=torch.tensor(positions)).logits.numpy()
  logits = np.asarray(_imported(hf_dirs[kind])(jnp.asarray(tokens), jnp.asarray(mask),
                                                jnp.asarray(positions)))
  real = mask.astype(bool)  # padded rows hold whatever each side computes for padding
  np.testing.assert_allclose(logits[real], expected[real], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_both_layer_layouts_import_the_same_function(hf_dirs):
  tokens = jnp.asarray(hf_helpers.padded_batch()[0])
  scanned = _imported(hf_dirs["olmo2"], scan_layers=True)(tokens)
  looped = _imported(hf_dirs["olmo2"], scan_layers=False)(tokens)
  np.testing.assert_allclose(np.asarray(scanned), np.asarray(looped), atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generation_equals_transformers(hf_dirs, kind):
  prompts = [[5, 17, 99, 3, 64, 12], [7, 7, 120]]
  expected = []
  for prompt in prompts:  # one at a time: no padding conventions to match
    with torch.no_grad():
      out = hf_helpers.tiny_hf_model(kind).generate(torch.tensor([prompt]), max_new_tokens=16,
                                                    do_sample=False)
    expected.append(out[0, len(prompt):].tolist())
  assert decode.generate(_imported(hf_dirs[kind]), prompts, max_new_tokens=16) == expected
