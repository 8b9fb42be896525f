"""PLT decoding (phd_jax/decode/loops.py) against the training forward: prefill and steps,
the truncated prefill, greedy generation, one forward per token, the cache's bytes, and
decoding on a mesh."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phd_jax import config as config_lib
from phd_jax import decode, flops, sharding
from phd_jax.decode import engine
from phd_jax.masks import parse_variant
from phd_jax.model import Attention
from phd_jax.plt import PLTTransformer
from decode_helpers import (CFG, assert_prefill_and_steps_equal_forward, brute_force_greedy,
                            full_prefill, random_tokens)
from run_helpers import tiny_config
from test_plt import randomize_gates


def make_model(variant, scan_layers=True, **settings):
  model = PLTTransformer(dataclasses.replace(CFG, scan_layers=scan_layers),
                         parse_variant(variant, **settings), rngs=nnx.Rngs(0))
  return randomize_gates(model) if model.spec.gated else model


# (variant, settings, scan_layers): the 14-token prompt is longer than every later-loop
# prefill (`engine.later_loop_tokens`: 5, 6, 1 and 2 tokens at 2 layers), W = 1 has a local
# part but no window cache, PLT-1 is Vanilla.
CASES = [("PLT-2-3", {}, True),
         ("PLT-3-2", dict(gate="hidden", norm_per_loop=False, hidden_scale=0.5), True),
         ("PLT-2", {}, True), ("PLT-3-1", dict(emb_scale=0.7), True), ("PLT-1", {}, True),
         ("PLT-3-2", dict(gate="hidden"), False)]


@pytest.mark.slow
@pytest.mark.parametrize("variant,settings,scan_layers", CASES)
def test_prefill_and_steps_equal_training_forward(variant, settings, scan_layers):
  model = make_model(variant, scan_layers, **settings)
  assert_prefill_and_steps_equal_forward(model, prompt_lengths=(14, 1, 9), steps=8,
                                         cache_len=24)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["PLT-3-3", "PLT-2-4"])
def test_later_loop_prefill_is_exact_and_one_token_fewer_is_not(variant):
  """`later_loop_tokens` trailing tokens give the full prefill's logits and state; one
  fewer changes them: the bound is tight."""
  model = make_model(variant)
  decoder = decode.Decoder(model, prompt_buckets=None)
  bound = engine.later_loop_tokens(model.spec, CFG.num_layers)
  prompts = random_tokens(7, bound + 5, max(bound - 1, 1), 1)
  assert decoder.layout(prompts)[1] == bound  # the truncation is exercised
  want_logits, want = full_prefill(decoder, prompts, 24)
  got_logits, got = decoder.prefill(prompts, cache_len=24)
  np.testing.assert_allclose(got_logits, want_logits, atol=1e-5, rtol=1e-5)
  for name in ("keys", "values", "loop_outputs"):
    np.testing.assert_allclose(getattr(got, name), getattr(want, name), atol=1e-5)
  for name in ("positions", "copies"):
    np.testing.assert_array_equal(getattr(got.window, name), getattr(want.window, name))
  filled_BW = np.asarray(want.window.positions) >= 0  # left padding's entries stay empty
  for name in ("keys", "values"):
    np.testing.assert_allclose(np.asarray(getattr(got.window, name))[:, filled_BW],
                               np.asarray(getattr(want.window, name))[:, filled_BW], atol=1e-5)
  laid, _ = decoder.layout(prompts, 1, 24)
  short_logits, short = engine._prefill_jit(decoder.graphdef, decoder.state, None,
                                            laid.first_slot_B, 24, bound - 1, laid.tokens_BT)
  differs = lambda a, b: np.abs(np.asarray(a[0]) - np.asarray(b[0])).max() > 1e-4
  assert (differs(short_logits, want_logits) or differs(short.loop_outputs, want.loop_outputs)
          or differs(short.window.keys[:, 0], want.window.keys[:, 0]))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["PLT-2-3", "PLT-3-2"])
def test_greedy_generation_equals_the_uncached_forward(variant):
  model = make_model(variant)
  prompts = random_tokens(5, 9, 3, 12)
  got = decode.generate(model, prompts, 7)
  assert got == [brute_force_greedy(model, prompt, 7) for prompt in prompts]


def test_a_step_is_one_forward_over_every_loop(monkeypatch):
  """Each layer runs once per decoding step, on one row per loop of the new token."""
  model = make_model("PLT-3-2", scan_layers=False)  # the spy sees each layer's call
  cache = decode.init_cache(model.cfg, model.spec, 2, 8)
  rows = []
  qkv = Attention.qkv

  def spy(self, x_BTKD, rope_positions_BTK):
    rows.append(x_BTKD.shape[1:3])
    return qkv(self, x_BTKD, rope_positions_BTK)

  monkeypatch.setattr(Attention, "qkv", spy)
  logits_BV, _ = jax.eval_shape(lambda c: engine.step(model, c, jnp.array([1, 2])), cache)
  assert rows == [(1, 3)] * CFG.num_layers  # one new token, its 3 loops
  assert logits_BV.shape == (2, CFG.vocab_size)


@pytest.mark.parametrize("variant,entries", [("PLT-2", 0), ("PLT-3-4", 6), ("PLT-2-64", 63)])
def test_kv_cache_bytes(variant, entries):
  config = tiny_config(variant)
  m = config.model
  per_entry = 2 * m.num_layers * m.num_kv_heads * m.head_dim * 4  # K and V, float32
  got = decode.kv_cache_bytes(config, seq_len=100, batch=3)
  assert got["originals"] == 3 * 100 * per_entry  # loop 0's: a vanilla model's cache
  assert got["hidden_window"] == 3 * entries * per_entry
  spec = parse_variant(variant)
  assert got["hidden_window"] == 3 * flops.hidden_window_bytes(config_lib.model_config(config),
                                                               spec)
  carried = 3 * (spec.loops - 1) * m.d_model * 4  # the last token's loop outputs
  indices = 3 * entries * 2 * 4 + 3 * 4 + 4  # window positions and loops, rows, length
  assert got["bookkeeping"] == carried + indices


@pytest.mark.slow
def test_sharded_decoding_equals_one_device():
  """Rows over data x fsdp (3 prompts fill 4 rows), heads, gates and caches over tensor,
  on a 2 x 2 x 2 mesh of the 8 fake CPU devices."""
  mesh = jax.make_mesh((2, 2, 2), sharding.AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
  model = make_model("PLT-3-3", gate="hidden")
  graphdef, state = nnx.split(model)
  placed = nnx.merge(graphdef, jax.device_put(state, sharding.tree_shardings(state, mesh)))
  single, sharded = decode.Decoder(model), decode.Decoder(placed)
  prompts = random_tokens(9, 7, 2, 5)
  want_logits, want_cache = single.prefill(prompts, max_new_tokens=3)
  got_logits, got_cache = sharded.prefill(prompts, max_new_tokens=3)
  assert got_cache.loop_outputs.sharding.spec[0] == sharding.BATCH_AXES
  np.testing.assert_allclose(got_logits[:3], want_logits, atol=1e-5, rtol=1e-5)
  tokens = [int(t) for t in np.argmax(want_logits, -1)]
  want_logits, _ = single.step(want_cache, tokens)
  got_logits, _ = sharded.step(got_cache, tokens + [0])
  np.testing.assert_allclose(got_logits[:3], want_logits, atol=1e-5, rtol=1e-5)
