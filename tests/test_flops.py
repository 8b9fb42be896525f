"""The cost model (`phd_jax.flops`): training FLOPs from the variant's mask and against XLA,
the peak table, and the inference costs against values worked by hand and against what the
model and the decoder actually hold."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phd_jax import config as config_lib
from phd_jax import decode, flops, state
from phd_jax.loss import next_token_loss
from phd_jax.masks import parse_variant, plt_mask, spec_mask
from phd_jax.model import ModelConfig, Transformer
from phd_jax.plt import PLTTransformer
from run_helpers import small_config
from tier_helpers import one_fast

# Small enough to count by hand: per block 48 attention weights (q 16, k 8, v 8, o 16) and
# 72 MLP weights; 8 norm scales and 6 QK-norm scales (q over H x Dh = 4, k over G x Dh = 2).
HAND = ModelConfig(vocab_size=10, d_model=4, num_layers=2, num_heads=2, num_kv_heads=1,
                   head_dim=2, mlp_dim=6)


@pytest.mark.parametrize("variant", ["Vanilla", "PHD-3", "PHD-SWA-2-4-inf", "PHD-SWA-3-5-inf",
                                     "PHD-CSWA-3-4-8", "PHD-CSWA-4-3-5"])
@pytest.mark.parametrize("window_unit", ["tokens", "positions"])
def test_attention_pairs_equal_the_full_mask(variant, window_unit):
  spec = parse_variant(variant, window_unit=window_unit)
  for tokens in (1, 9, 64, 157):
    assert flops.attention_pairs(spec, tokens) == spec_mask(spec, tokens).sum(), tokens


@pytest.mark.parametrize("variant", ["PLT-1", "PLT-2", "PLT-3-4", "PLT-2-64"])
def test_plt_attention_pairs_equal_the_masks(variant):
  spec = parse_variant(variant)
  for tokens in (1, 9, 64, 157):
    global_mask, local_mask = plt_mask(spec, tokens)
    assert flops.attention_pairs(spec, tokens) == global_mask.sum() + local_mask.sum(), tokens


@pytest.mark.parametrize("variant", one_fast(["Vanilla", "PHD-3", "PLT-3-4"]))
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


def test_inference_costs_worked_by_hand():
  # 10*4 embedding + 4*10 output layer + 4 final norm + 2 x (48 + 72 + 8 + 6)
  assert flops.parameter_count(HAND) == 352
  # K and V, 2 layers, 1 head of 2: 8 numbers of 4 bytes, or 2 bytes in bfloat16
  assert flops.kv_bytes_per_token(HAND) == 32
  assert flops.kv_bytes_per_token(dataclasses.replace(HAND, dtype="bfloat16")) == 16
  phd, swa = parse_variant("PHD-2"), parse_variant("PHD-SWA-3-2-inf")
  assert flops.hidden_window_bytes(HAND, phd) == 0
  assert flops.hidden_window_bytes(HAND, swa) == 2 * 32  # W = 2 hidden tokens
  assert flops.inference_memory_bytes(HAND, phd, 5) == 4 * 352 + 5 * 32
  assert flops.inference_memory_bytes(HAND, swa, 5) == 4 * 352 + 5 * 32 + 64
  # Each (row, layer): 2 x 120 block weights; each (pair, layer): 4 x H x Dh = 16; the
  # output layer once: 2 x 4 x 10 = 80.
  # PHD-2, token 5 after 5 cached: copy 0 sees 5 originals + itself, copy 1 also copy 0.
  assert flops.decode_flops(HAND, phd, 5) == 2 * (2 * 240 + 13 * 16) + 80
  # PHD-SWA-3-2: copy 0 sees 6 as above; copy 1 sees 5 originals, copies 0-1 and the two
  # hidden copies of token 4 (hidden-stream distances 1, 2); copy 2 sees 5 originals, copies
  # 0-2 and token 4's copy 2 (distance 2; its copy 1 is at 3): 6 + 9 + 9 pairs.
  assert flops.decode_flops(HAND, swa, 5) == 2 * (3 * 240 + 24 * 16) + 80
  # Prefill of 5 tokens, PHD-2 with the last token's copies: 6 rows; 15 causal pairs among
  # originals, and token 4's copy 1 sees 4 earlier originals, its copy 0 and itself.
  assert flops.prefill_flops(HAND, phd, 5, 1) == 2 * (6 * 240 + 21 * 16) + 80
  # PHD-SWA-3-2 with the copies of the last 3 tokens: 11 rows. Hidden rows (token, copy):
  # (2,1) 2 originals + 2 own; (2,2) 2 + 3; (3,1) 3 + 2 + 2 window; (3,2) 3 + 3 + 1;
  # (4,1) 4 + 2 + 2; (4,2) 4 + 3 + 1: 39 pairs, and the 15 among originals.
  assert flops.prefill_flops(HAND, swa, 5, 3) == 2 * (11 * 240 + 54 * 16) + 80


def test_plt_costs_worked_by_hand():
  query, hidden = parse_variant("PLT-2-3"), parse_variant("PLT-2-3", gate="hidden")
  # a gate per layer: 2 x 2 query weights (H x Dh) or 4 x 2 (D x H), 2 biases; "hidden"
  # also has its norm's 4 scales
  assert flops.parameter_count(HAND, query) == 352 + 2 * (4 + 2)
  assert flops.parameter_count(HAND, hidden) == 352 + 2 * (8 + 2 + 4)
  assert flops.parameter_count(HAND, parse_variant("PLT-3")) == 352  # no window, no gate
  # Training, 4 tokens: 2 loops x 120 block weights and the output layer once per token,
  # the gate's 4 weights in loop 1; pairs: loop 0's causal 10, loop 1's 10 global and
  # 1 + 2 + 3 + 3 in the window of 3.
  matmuls = 2 * (2 * (2 * 120 + 4) + 40) * 4
  assert flops.flops_per_sequence(HAND, query, 4) == 3 * (matmuls + 16 * 2 * 29)
  # Cache: loop 0's K/V (Vanilla's 32 bytes per token) and, per later loop, the window's
  # 2 earlier tokens: PLT-3-3 holds 4 entries.
  plt3 = parse_variant("PLT-3-3")
  assert flops.kv_bytes_per_token(HAND) == 32
  assert flops.hidden_window_bytes(HAND, plt3) == 4 * 32
  assert flops.inference_memory_bytes(HAND, plt3, 5) == 4 * (352 + 12) + 5 * 32 + 4 * 32
  # Decoding token 5: loop 0 sees 5 cached + itself, loop 1 the same 6 and its window's 3;
  # both rows through the blocks, loop 1's gate (2 x 4 per layer), the output layer once.
  assert flops.decode_flops(HAND, query, 5) == 2 * (2 * 240 + 15 * 16) + 80 + 2 * 2 * 4
  # Prefill of 5 tokens with loop 1 on the last 2: 7 rows; loop 0's 15 causal pairs, loop
  # 1's 4 + 5 global and 1 + 2 in the window (it starts at token 3).
  assert flops.prefill_flops(HAND, query, 5, 2) == 2 * (7 * 240 + 27 * 16) + 80 + 2 * 2 * 4 * 2
  # which the later loops need: (loops - 1) x (1 + layers x (W - 1)), at most the prompt
  assert decode.hidden_prefill_tokens(plt3, [20], num_layers=2) == 2 * (1 + 2 * 2)
  assert decode.hidden_prefill_tokens(plt3, [7, 3], num_layers=2) == 7
  assert decode.hidden_prefill_tokens(plt3, [20]) == 20
  assert decode.hidden_prefill_tokens(parse_variant("PLT-3"), [20], num_layers=2) == 2


@pytest.mark.parametrize("variant", ["PLT-2", "PLT-3-4", "PLT-2-64"])
def test_plt_decode_attention_is_the_training_mask_row(variant):
  """A PLT decoding step attends to exactly the rows of its token in the training masks."""
  spec = parse_variant(variant)
  global_mask, local_mask = plt_mask(spec, 30)
  rows = (global_mask.sum(1) + local_mask.sum(1)).reshape(spec.loops, 30).sum(0)
  per_pair = 4 * HAND.num_layers * HAND.num_heads * HAND.head_dim
  first = flops.decode_flops(HAND, spec, 0)
  for context in range(30):
    assert flops.decode_flops(HAND, spec, context) - first == per_pair * (
        rows[context] - rows[0]), context


@pytest.mark.parametrize("variant", ["Vanilla", "PHD-3", "PHD-SWA-2-4-inf", "PHD-SWA-4-3-inf",
                                     "PHD-CSWA-3-4-8", "PHD-CSWA-4-6-5"])
@pytest.mark.parametrize("window_unit", ["tokens", "positions"])
def test_decode_attention_is_the_training_mask_row(variant, window_unit):
  """Decoding token T attends to exactly what row T of the training mask allows (chunk
  boundaries included): the FLOPs differ from the first token's by 4 x L x H x Dh per pair."""
  spec = parse_variant(variant, window_unit=window_unit)
  rows = np.asarray(spec_mask(spec, 30)).reshape(30, spec.k, -1).sum((1, 2))
  per_pair = 4 * HAND.num_layers * HAND.num_heads * HAND.head_dim
  first = flops.decode_flops(HAND, spec, 0)
  for context in range(30):
    assert flops.decode_flops(HAND, spec, context) - first == per_pair * (
        rows[context] - rows[0]), context


@pytest.mark.parametrize("variant", ["PHD-3", "PHD-SWA-3-4-inf", "PHD-CSWA-2-4-8", "PLT-3-4",
                                     "PLT-2"])
def test_prefill_of_every_copy_is_the_training_forward(variant):
  """With every token's copies computed (the paper's SWA prefill), a prefill is the
  training forward (a third of `flops_per_sequence`) less the output layer on T-1 tokens."""
  spec, tokens = parse_variant(variant), 37
  forward = flops.flops_per_sequence(HAND, spec, tokens) / 3
  output_layer = 2 * HAND.d_model * HAND.vocab_size
  assert flops.prefill_flops(HAND, spec, tokens, tokens) == pytest.approx(
      forward - (tokens - 1) * output_layer, rel=1e-12)


@pytest.mark.parametrize("fields", [
    {}, {"tie_embeddings": True}, {"qk_norm": False}, {"qk_norm_per_head": True},
    {"num_kv_heads": 4, "num_layers": 3}])
def test_parameter_count_is_the_models(fields):
  cfg = dataclasses.replace(ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4,
                                        num_kv_heads=2, head_dim=8, mlp_dim=48), **fields)
  model = nnx.eval_shape(lambda: Transformer(cfg, parse_variant("PHD-3"), rngs=nnx.Rngs(0)))
  assert flops.parameter_count(cfg) == sum(
      x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  for spec in (parse_variant("PLT-3-4"), parse_variant("PLT-2-4", gate="hidden")):
    looped = nnx.eval_shape(lambda spec=spec: PLTTransformer(cfg, spec, rngs=nnx.Rngs(0)))
    assert flops.parameter_count(cfg, spec) == sum(
        x.size for x in jax.tree.leaves(nnx.state(looped, nnx.Param)))


@pytest.mark.parametrize("variant,window_unit,dtype", [
    ("Vanilla", "tokens", "float32"), ("PHD-5", "tokens", "bfloat16"),
    ("PHD-SWA-3-16-inf", "tokens", "float32"), ("PHD-SWA-3-16-inf", "positions", "bfloat16"),
    ("PHD-CSWA-5-4-32", "positions", "float32")])
def test_kv_bytes_are_what_the_decoder_allocates(variant, window_unit, dtype):
  config = small_config(variant)
  config.phd.window_unit = window_unit
  config.model.dtype = dtype
  cfg, spec = config_lib.model_config(config), config_lib.phd_spec(config)
  allocated = decode.kv_cache_bytes(config, seq_len=100, batch=1)
  assert 100 * flops.kv_bytes_per_token(cfg) == allocated["originals"]
  assert flops.hidden_window_bytes(cfg, spec) == allocated["hidden_window"]
  assert flops.window_entries(spec) == decode.window_entries(spec)
