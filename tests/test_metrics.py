"""Analytic training FLOPs (`phd_jax.flops`): attention pairs from the variant's mask,
totals against XLA."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from phd_jax import config as config_lib
from phd_jax import flops, state
from phd_jax.loss import next_token_loss
from phd_jax.masks import parse_variant, spec_mask
from test_train import small_config


@pytest.mark.parametrize("variant", ["Vanilla", "PHD-3", "PHD-SWA-2-4-inf", "PHD-SWA-3-5-inf",
                                     "PHD-CSWA-3-4-8", "PHD-CSWA-4-3-5"])
@pytest.mark.parametrize("window_unit", ["tokens", "positions"])
def test_attention_pairs_equal_the_full_mask(variant, window_unit):
  spec = parse_variant(variant, window_unit=window_unit)
  for tokens in (1, 9, 64, 157):
    assert flops.attention_pairs(spec, tokens) == spec_mask(spec, tokens).sum(), tokens


@pytest.mark.parametrize("variant", ["Vanilla", "PHD-3"])
def test_flops_match_xla_count(variant):
  """XLA's count of a forward + backward also holds elementwise work and the masked half of
  the dense attention: within 3% when matmuls dominate (wide model, short sequence)."""
  config = small_config(variant)
  config.model.update(d_model=128, mlp_dim=512, head_dim=32, vocab_size=256, num_layers=1)
  batch, seq_len = 4, 8
  gdef = state.graphdef(config)
  params = nnx.state(nnx.eval_shape(lambda: state.new_model(config)), nnx.Param)

  def loss(p, tokens):
    return next_token_loss(nnx.merge(gdef, p)(tokens), tokens)[0]
  tokens = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
  compiled = jax.jit(jax.grad(loss)).lower(params, tokens)
  xla = compiled.compile().cost_analysis()["flops"]
  ours = batch * flops.flops_per_sequence(config_lib.model_config(config),
                                          config_lib.phd_spec(config), seq_len)
  assert ours == pytest.approx(xla, rel=0.03)


def test_peak_table_picks_the_specific_chip():
  assert flops.peak_flops("TPU v5 lite") == 197e12  # v5e, not v5p's number
  assert flops.peak_flops("TPU v5p") == 459e12
  assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert flops.peak_flops("NVIDIA A100-SXM4-40GB") == 312e12
  assert flops.peak_flops("cpu") is None
