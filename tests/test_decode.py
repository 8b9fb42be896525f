"""Inference against the training forward: caches, prefill, decoding, sampling, errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phd_jax import checkpoint, data, decode, generate, masks, sharding
from phd_jax import config as config_lib
from phd_jax.decode import engine
from phd_jax.masks import parse_variant
from phd_jax.model import Attention, Transformer

from decode_helpers import (CFG, assert_prefill_and_steps_equal_forward, brute_force_greedy,
                            full_prefill, random_tokens, training_logits)
from run_helpers import tiny_config
from tier_helpers import one_fast


def make_model(variant, window_unit="tokens", positions="shared", seed=0, scan_layers=True):
  spec = parse_variant(variant, window_unit=window_unit, positions=positions)
  cfg = dataclasses.replace(CFG, scan_layers=scan_layers)
  return Transformer(cfg, spec, rngs=nnx.Rngs(seed))


# (variant, window_unit, positions, scan_layers). Windows cross token boundaries (W not a
# multiple of K-1), chunks of 3..5 tokens are crossed while decoding. The caches of the
# scanned layers (the default) and of the per-layer loop are the same stacked arrays.
CASES = [(*case, True) for case in [
    ("Vanilla", "tokens", "shared"),
    ("PHD-2", "tokens", "shared"),
    ("PHD-3", "tokens", "expanded"),
    ("PHD-SWA-2-3-inf", "tokens", "shared"),
    ("PHD-SWA-3-3-inf", "tokens", "expanded"),
    ("PHD-SWA-4-5-inf", "positions", "shared"),
    ("PHD-SWA-3-2-inf", "positions", "expanded"),
    ("PHD-CSWA-2-3-4", "tokens", "expanded"),
    ("PHD-CSWA-3-5-4", "tokens", "shared"),
    ("PHD-CSWA-4-7-4", "tokens", "shared"),
    ("PHD-CSWA-4-3-3", "positions", "shared"),
    ("PHD-CSWA-3-2-5", "positions", "expanded"),
]] + [("PHD-SWA-3-3-inf", "tokens", "expanded", False),
      ("PHD-CSWA-4-3-3", "positions", "shared", False)]


@pytest.mark.slow
@pytest.mark.parametrize("variant,window_unit,positions,scan_layers", CASES)
def test_prefill_and_steps_equal_training_forward(variant, window_unit, positions,
                                                  scan_layers):
  model = make_model(variant, window_unit, positions, scan_layers=scan_layers)
  assert_prefill_and_steps_equal_forward(model, prompt_lengths=(7, 1, 5), steps=8,
                                         cache_len=16)


@pytest.mark.slow
@pytest.mark.parametrize("variant,window_unit", [
    ("Vanilla", "tokens"), ("PHD-3", "tokens"), ("PHD-SWA-3-3-inf", "tokens"),
    ("PHD-CSWA-4-3-3", "positions")])
def test_bucket_padding_takes_no_slots_of_an_explicit_cache_len(variant, window_unit):
  # 9 tokens pad to the 16-token bucket; 9 + 11 greedy steps fill cache_len=20 exactly
  model = make_model(variant, window_unit)
  decoder = decode.Decoder(model)
  prompts = random_tokens(10, 9, 4)
  assert decoder.layout(prompts, cache_len=20)[0].tokens_BT.shape[1] == 16
  logits_BV, cache = decoder.prefill(prompts, cache_len=20)
  got = [logits_BV]
  for _ in range(11):
    logits_BV, cache = decoder.step(cache, np.argmax(got[-1], -1))
    got.append(logits_BV)
  assert int(cache.length) == cache.cache_len == 20
  with pytest.raises(ValueError, match="cache is full"):
    decoder.step(cache, [1, 1])
  got_BSV = np.stack(got, axis=1)
  sequences = [p + np.argmax(got_SV, -1).tolist() for p, got_SV in zip(prompts, got_BSV)]
  want_BTV = training_logits(model, sequences)
  for row, prompt in enumerate(prompts):
    want_SV = want_BTV[row, len(prompt) - 1:len(prompt) + 11]
    np.testing.assert_allclose(got_BSV[row], want_SV, atol=1e-5, rtol=1e-5)
    assert sequences[row][len(prompt):] == np.argmax(want_SV, -1).tolist()


def test_prefill_refuses_a_cache_len_that_cannot_hold_the_real_tokens():
  decoder = decode.Decoder(make_model("PHD-2"))
  with pytest.raises(ValueError, match=r"prompt 1 has 9 tokens; with max_new_tokens=1 the "
                                       r"cache needs 9 slots, but cache_len=8"):
    decoder.prefill([[1] * 3, [2] * 9], cache_len=8)
  with pytest.raises(ValueError, match="max_new_tokens=12 the cache needs 20 slots, but "
                                       "cache_len=19"):
    decoder.prefill([[1] * 9], cache_len=19, max_new_tokens=12)


def hidden_copy_positions(monkeypatch, model, prompt):
  """Token positions whose hidden copies the prefill runs, for every layer (the model runs
  its layers in a Python loop, so the spy sees each layer's values, not a scan's tracer)."""
  seen = []
  qkv = Attention.qkv

  def spy(self, x_BTKD, rope_positions_BTK):
    if x_BTKD.shape[2] > 1:  # this forward runs hidden copies
      seen.append(rope_positions_BTK[0, :, 1])
    return qkv(self, x_BTKD, rope_positions_BTK)

  monkeypatch.setattr(Attention, "qkv", spy)
  decoder = decode.Decoder(model, prompt_buckets=None)
  laid, hidden_tokens = decoder.layout([prompt])

  @jax.jit  # a fresh function, so the spy is traced
  def prefill(state):
    model = nnx.merge(decoder.graphdef, state)
    cache = decode.init_cache(model.cfg, model.spec, 1, laid.cache_len, laid.first_slot_B)
    engine.prefill(model, cache, laid.tokens_BT, hidden_tokens)
    return list(seen)

  return [np.asarray(p).tolist() for p in prefill(decoder.state)]


@pytest.mark.parametrize("variant,length,expected", [
    ("PHD-CSWA-3-2-4", 11, [8, 9, 10]),  # last chunk 8..11, partial
    ("PHD-CSWA-3-2-4", 8, [5, 6, 7]),  # last chunk full, but SWA's 3 tokens suffice
    ("PHD-CSWA-3-1-4", 8, [6, 7]),  # 1 + ceil((2*1 - 1) / 2) tokens
    ("PHD-CSWA-3-2-4", 9, [8]),  # last token opens a new chunk
    ("PHD-SWA-3-2-inf", 6, [3, 4, 5]),  # 2 layers x 2 hidden tokens back, + the last
    ("PHD-SWA-3-2-inf", 2, [0, 1]),  # shorter than that: all of them
    ("PHD-3", 6, [5]),  # only the last token's copies
])
def test_prefill_computes_hidden_copies_only_where_needed(monkeypatch, variant, length,
                                                          expected):
  # shared positions: the rope position is the token position
  model = make_model(variant, scan_layers=False)
  prompt = random_tokens(2, length)[0]
  seen = hidden_copy_positions(monkeypatch, model, prompt)  # one list per layer and forward
  assert sorted(sum(seen, [])) == sorted(expected * CFG.num_layers)


def reachable_hidden_tokens(spec, num_layers, num_tokens=48):
  """Trailing tokens whose hidden copies reach the cache or the next token, read off the
  explicit mask: the keys of every layer that the last W window entries and the last
  token's final copy depend on, layer by layer down to the embeddings."""
  mask = np.asarray(masks.spec_mask(spec, num_tokens))
  hidden = np.arange(num_tokens * spec.k) % spec.k > 0
  entries = decode.window_entries(spec)
  needed = np.zeros(len(mask), bool)
  needed[np.flatnonzero(hidden)[-entries:]] = True  # the window cache's entries
  needed[-1] = True  # the next token's logits
  needed |= mask[-1]  # its last-layer keys
  for _ in range(num_layers - 1):
    needed |= mask[needed].any(axis=0)
  first = np.flatnonzero(needed & hidden)[0] // spec.k
  assert first > 0, "num_tokens too small to see the bound"
  return num_tokens - first


@pytest.mark.parametrize("k,window,unit,num_layers", [
    (2, 3, "tokens", 2), (3, 3, "tokens", 2), (3, 2, "tokens", 4), (4, 5, "tokens", 3),
    (5, 1, "tokens", 4), (8, 2, "tokens", 3), (16, 16, "tokens", 2), (4, 3, "tokens", 1),
    (3, 2, "positions", 2), (4, 3, "positions", 3), (2, 1, "positions", 1)])
def test_swa_hidden_tokens_is_what_the_mask_reaches(k, window, unit, num_layers):
  spec = masks.PHDSpec(k=k, window=window, window_unit=unit)
  got = engine.swa_hidden_tokens(spec, num_layers)
  assert got == reachable_hidden_tokens(spec, num_layers)
  if unit == "tokens" and window >= k - 2:  # the closed form of the docstring
    assert got <= -(-num_layers * window // (k - 1)) + 1
  else:
    assert got <= (num_layers * window + 1 if unit == "positions" else
                    num_layers * (k - 1) + 1)


@pytest.mark.slow
@pytest.mark.parametrize("variant,window_unit,positions",
                         [case[:3] for case in CASES if "SWA" in case[0] and case[3]])
def test_truncated_swa_prefill_equals_the_full_prefill(variant, window_unit, positions):
  model = make_model(variant, window_unit, positions)
  decoder = decode.Decoder(model, prompt_buckets=None)  # the fewest hidden copies
  bound = engine.swa_hidden_tokens(model.spec, CFG.num_layers)
  # one prompt longer than the bound, one shorter, one of a single token
  prompts = random_tokens(7, bound + 6, max(bound - 1, 1), 1)
  assert decoder.layout(prompts)[1] < bound + 6  # the truncation is exercised
  want_logits, want = full_prefill(decoder, prompts, 24)
  got_logits, got = decoder.prefill(prompts, cache_len=24)
  np.testing.assert_allclose(got_logits, want_logits, atol=1e-5, rtol=1e-5)
  assert int(got.length) == int(want.length)
  np.testing.assert_array_equal(got.first_slot, want.first_slot)
  for name in ("keys", "values"):
    np.testing.assert_allclose(getattr(got, name), getattr(want, name), atol=1e-5)
  # Window entries later tokens can see must be equal. CSWA leaves out (or keeps inexact)
  # entries of earlier chunks, which no later token can see.
  chunk = model.spec.chunk or 1 << 30
  next_chunk_B1 = np.array([[len(p) // chunk] for p in prompts])
  live = lambda pos_BW: (pos_BW >= 0) & (pos_BW // chunk == next_chunk_B1)
  want_pos_BW, got_pos_BW = np.asarray(want.window.positions), np.asarray(got.window.positions)
  kept_BW = live(want_pos_BW)
  np.testing.assert_array_equal(live(got_pos_BW), kept_BW)
  np.testing.assert_array_equal(got_pos_BW[kept_BW], want_pos_BW[kept_BW])
  np.testing.assert_array_equal(np.asarray(got.window.copies)[kept_BW],
                                np.asarray(want.window.copies)[kept_BW])
  for name in ("keys", "values"):
    want_LBWGD = np.asarray(getattr(want.window, name))
    got_LBWGD = np.asarray(getattr(got.window, name))
    np.testing.assert_allclose(got_LBWGD[:, kept_BW], want_LBWGD[:, kept_BW], atol=1e-5)


@pytest.mark.parametrize("k", one_fast([2, 3, 8]))
def test_phd_cache_has_exactly_the_vanilla_shapes(k):
  prompts = random_tokens(3, 5, 3)
  _, vanilla = decode.Decoder(make_model("Vanilla")).prefill(prompts, cache_len=12)
  _, phd = decode.Decoder(make_model(f"PHD-{k}")).prefill(prompts, cache_len=12)
  shapes = lambda cache: jax.tree.map(lambda x: (x.shape, x.dtype), cache)
  assert phd.window is None and shapes(phd) == shapes(vanilla)


@pytest.mark.parametrize("variant,window_unit,hidden_entries", [
    ("Vanilla", "tokens", 0), ("PHD-5", "tokens", 0), ("PHD-SWA-3-16-inf", "tokens", 16),
    ("PHD-SWA-3-16-inf", "positions", 32), ("PHD-CSWA-5-4-32", "positions", 16)])
def test_kv_cache_bytes(variant, window_unit, hidden_entries):
  config = tiny_config(variant)
  config.phd.window_unit = window_unit
  m = config.model
  per_entry = 2 * m.num_layers * m.num_kv_heads * m.head_dim * 4  # K and V, float32
  got = decode.kv_cache_bytes(config, seq_len=100, batch=3)
  assert got["originals"] == 3 * 100 * per_entry
  assert got["hidden_window"] == 3 * hidden_entries * per_entry
  assert got["total"] == got["originals"] + got["hidden_window"] + got["bookkeeping"]
  assert got["bookkeeping"] < 1000  # row offsets and window positions only


@pytest.mark.slow
def test_greedy_generation_is_the_argmax_of_the_training_forward_and_repeatable():
  model = make_model("PHD-CSWA-3-3-4", window_unit="positions")
  prompts = random_tokens(4, 6, 2)
  got = decode.generate(model, prompts, 7)
  assert got == [brute_force_greedy(model, p, 7) for p in prompts]
  assert decode.generate(model, prompts, 7) == got


@pytest.mark.slow
def test_generation_stops_at_eos_for_each_row():
  model = make_model("PHD-SWA-2-2-inf")
  prompts = random_tokens(5, 4, 6)
  free = decode.generate(model, prompts, 8)
  eos = free[0][2]
  got = decode.generate(model, prompts, 8, eos_id=eos)
  expected = [row[:row.index(eos)] if eos in row else row for row in free]
  assert got == expected
  if all(eos in row for row in free):  # every row stopped: no tokens after the last EOS
    assert max(len(row) for row in got) < 8


@pytest.mark.slow
def test_sampling_is_seeded_and_its_limits_reduce_to_greedy():
  model = make_model("PHD-3")
  prompts = random_tokens(6, 5, 3)
  greedy = decode.generate(model, prompts, 6)
  hot = dict(temperature=5.0, seed=7)
  assert decode.generate(model, prompts, 6, **hot) == decode.generate(model, prompts, 6, **hot)
  assert decode.generate(model, prompts, 6, **hot) != decode.generate(model, prompts, 6,
                                                                      temperature=5.0, seed=8)
  assert decode.generate(model, prompts, 6, temperature=5.0, top_k=1) == greedy


@pytest.mark.parametrize("sampling,expected", [
    (dict(temperature=1.0), [1, 1, 1, 1, 1]),
    (dict(temperature=2.0, top_k=2), [1, 1, 0, 0, 0]),
    (dict(temperature=1.0, top_p=0.7), [1, 1, 0, 0, 0]),  # 0.64 alone is not enough
    (dict(temperature=1.0, top_k=3, top_p=0.95), [1, 1, 1, 0, 0]),
])
def test_sample_draws_from_the_restricted_softmax(sampling, expected):
  logits_V = np.array([3.0, 2.0, 1.0, 0.0, -1.0])
  keep = np.array(expected, bool)
  probs = np.where(keep, np.exp(logits_V / sampling["temperature"]), 0.0)
  probs /= probs.sum()
  draws = 20_000
  tokens = decode.sample(jnp.tile(logits_V, (draws, 1)), jax.random.key(0),
                         decode.Sampling(**sampling))
  freq = np.bincount(np.asarray(tokens), minlength=5) / draws
  assert set(np.flatnonzero(freq)) == set(np.flatnonzero(keep))
  np.testing.assert_allclose(freq, probs, atol=0.015)


@pytest.mark.slow
def test_steps_past_the_cache_or_with_wrong_batch_are_refused():
  decoder = decode.Decoder(make_model("PHD-2"))
  _, cache = decoder.prefill([[1, 2, 3]], cache_len=4, max_new_tokens=2)
  with pytest.raises(ValueError, match="shape"):
    decoder.step(cache, [1, 2])
  _, cache = decoder.step(cache, [4])
  with pytest.raises(ValueError, match="cache is full"):
    decoder.step(cache, [5])


@pytest.mark.parametrize("prompts,kwargs,message", [
    ([], {}, "non-empty list"),
    ([[1, 2], []], {}, "prompt 1 must be a non-empty"),
    ([1, 2, 3], {}, "flat list"),
    ([[1, 2, 64]], {}, "outside"),
    ([[1.5, 2.0]], {}, "integer token ids"),
    ([[1] * 10], dict(cache_len=8), "cache_len=8"),
    ([[1] * 6], dict(cache_len=8, max_new_tokens=4), "needs 9 slots"),
    ([[1]], dict(max_new_tokens=0), "max_new_tokens"),
    ([[1]], dict(temperature=-1.0), "temperature"),
    ([[1]], dict(top_p=0.0), "top_p"),
    ([[1]], dict(top_k=-2), "top_k"),
    ([[1]], dict(eos_id=64), "eos_id"),
])
def test_bad_requests_get_a_clear_error(prompts, kwargs, message):
  model = make_model("PHD-2")
  kwargs = {"max_new_tokens": 2, **kwargs}
  with pytest.raises(ValueError, match=message):
    decode.generate(model, prompts, **kwargs)


@pytest.mark.slow
def test_generate_command_continues_prompts_from_an_exported_checkpoint(tmp_path):
  config = tiny_config("PHD-CSWA-2-2-4")
  config.model.update(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                      mlp_dim=64)
  model = Transformer(config_lib.model_config(config), config_lib.phd_spec(config),
                      rngs=nnx.Rngs(3))
  path = checkpoint.export_params(tmp_path / "export", nnx.state(model, nnx.Param), config)
  prompts = ["def f(", "x"]
  tokenizer = data.make_tokenizer(config)
  ids = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompts]
  expected = [tokenizer.decode(row)
              for row in decode.generate(model, ids, 6, eos_id=tokenizer.eos_id)]
  assert generate.continue_texts(str(path), prompts, 6) == expected
  assert generate.continue_texts(str(path), prompts, 6, mesh=(2, 2, 2)) == expected
  with pytest.raises(ValueError, match="non-empty strings"):
    generate.continue_texts(str(path), ["ok", ""], 6)


@pytest.mark.slow
@pytest.mark.parametrize("variant,window_unit", [
    ("PHD-SWA-3-3-inf", "tokens"), ("PHD-CSWA-4-3-3", "positions")])
def test_bucketed_prompts_give_the_same_logits_and_tokens(variant, window_unit):
  model = make_model(variant, window_unit)
  prompts = random_tokens(8, 11, 3, 6)  # padded to 16 tokens
  exact, bucketed = (decode.Decoder(model, prompt_buckets=b) for b in (None, (4, 16, 32)))
  assert bucketed.layout(prompts)[0].tokens_BT.shape[1] == 16
  np.testing.assert_allclose(bucketed.prefill(prompts)[0], exact.prefill(prompts)[0],
                             atol=1e-5, rtol=1e-5)
  assert bucketed.generate(prompts, 6) == exact.generate(prompts, 6)


@pytest.mark.slow
def test_prompt_lengths_compile_one_prefill_per_bucket(monkeypatch):
  traces = []
  prefill = engine.prefill

  def counted(*args):  # runs once per trace of a jitted prefill
    traces.append(args[2].shape)
    return prefill(*args)

  monkeypatch.setattr(engine, "prefill", counted)
  # a model structure no other test compiles, so every program here is new
  model = Transformer(dataclasses.replace(CFG, vocab_size=72),
                      parse_variant("PHD-CSWA-3-2-4"), rngs=nnx.Rngs(0))
  bucketed, exact = decode.Decoder(model), decode.Decoder(model, prompt_buckets=None)
  for length in range(1, 17):
    bucketed.prefill(random_tokens(length, length), max_new_tokens=4)
  assert sorted(shape[1] for shape in traces) == [1, 2, 4, 8, 16]
  traces.clear()
  for length in (5, 6):
    exact.prefill(random_tokens(length, length), max_new_tokens=4)
  assert len(traces) == 2  # without buckets, every length compiles
  traces.clear()
  for length in (9, 12):  # the 16-token bucket, although cache_len is shorter
    bucketed.prefill(random_tokens(length, length), cache_len=12)
  assert [shape[1] for shape in traces] == [16]


@pytest.mark.slow
def test_sharded_decoding_equals_one_device():
  """Rows over data x fsdp (3 prompts fill 4 rows), heads, caches and vocabulary over
  tensor, on a 2 x 2 x 2 mesh of the 8 fake CPU devices."""
  mesh = jax.make_mesh((2, 2, 2), sharding.AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
  model = make_model("PHD-CSWA-3-3-4")
  graphdef, state = nnx.split(model)
  placed = nnx.merge(graphdef, jax.device_put(state, sharding.tree_shardings(state, mesh)))
  single, sharded = decode.Decoder(model), decode.Decoder(placed)
  assert single.mesh is None and sharded.mesh is mesh  # found from the parameters
  prompts = random_tokens(9, 7, 2, 5)
  want_logits, want_cache = single.prefill(prompts, max_new_tokens=3)
  got_logits, got_cache = sharded.prefill(prompts, max_new_tokens=3)
  assert got_cache.keys.sharding.spec[1:4] == (sharding.BATCH_AXES, None, "tensor")
  assert got_logits.shape[0] == 4
  np.testing.assert_allclose(got_logits[:3], want_logits, atol=1e-5, rtol=1e-5)
  tokens = [int(t) for t in np.argmax(want_logits, -1)]
  want_logits, _ = single.step(want_cache, tokens)
  got_logits, _ = sharded.step(got_cache, tokens + [0])
  np.testing.assert_allclose(got_logits[:3], want_logits, atol=1e-5, rtol=1e-5)
  sampled = dict(temperature=1.0, top_p=0.9, seed=3)
  assert sharded.generate(prompts, 5, **sampled) == single.generate(prompts, 5, **sampled)
