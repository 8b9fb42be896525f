"""PLT (phd_jax/plt.py): the attention rules against a brute-force transcription, the fast
attention against the dense reference, the model against an independent NumPy decoder, the
cross-loop shift at document boundaries, and training, layouts, sharding and checkpoints."""

import dataclasses
import itertools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phd_jax import config as config_lib
from phd_jax import data, masks, sharding, state, train
from phd_jax.attention.loops import dense_loop_attention, loop_attention
from phd_jax.loss import next_token_loss
from phd_jax.masks import PLTSpec, parse_variant
from phd_jax.model import ModelConfig, Transformer, stack_layers, unstack_layers
from phd_jax.optim import decay_mask
from phd_jax.plt import PLTTransformer, shift_to_next_token
from reference_model import reference_logits
from run_helpers import read_metrics, small_config
from tier_helpers import one_fast

CFG = ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=48, rope_theta=10_000.0)
DOCS = [[5, 6, 2], [10, 3]]  # document lengths per row (13 tokens); row 1 ends in padding


def packing():
  """Segment ids (padding 0) and in-document positions `[2, 13]` of DOCS."""
  segment_ids = np.array([np.repeat(np.arange(1, len(d) + 1), d) for d in DOCS])
  segment_ids[1, 10:] = 0
  positions = np.array([np.concatenate([np.arange(n) for n in d]) for d in DOCS])
  return jnp.asarray(segment_ids, jnp.int32), jnp.asarray(positions, jnp.int32)


def make(variant, cfg=CFG, seed=0, **settings):
  return PLTTransformer(cfg, parse_variant(variant, **settings), rngs=nnx.Rngs(seed))


def tokens(B=2, T=13, seed=1):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, CFG.vocab_size)


@nnx.jit
def forward(model, toks, segment_ids=None, positions=None):
  return model(toks, segment_ids, positions)


# ---------------------------------------------------------------------------------------------
# The rules.


def brute_force_masks(T, loops, W, seg=None):
  """The rules of the issue, one (query, key) pair at a time: loop 0 causal; a later
  loop's global part over loop 0's keys up to its token, its local part over its own
  loop's keys of the W tokens ending at its own; nothing across documents."""
  seg = [1] * T if seg is None else list(seg)
  glob = np.zeros((loops * T, loops * T), bool)
  local = np.zeros_like(glob)
  for l, p, m, q in itertools.product(range(loops), range(T), range(loops), range(T)):
    if seg[p] != seg[q] or q > p:
      continue
    glob[l * T + p, m * T + q] = m == 0
    local[l * T + p, m * T + q] = l > 0 and m == l and p - q < W
  return glob, local


RULE_CASES = [(1, 2, 0), (5, 1, 0), (5, 2, 1), (7, 2, 3), (9, 3, 4), (6, 3, 0), (8, 4, 2),
              (4, 2, 9)]


@pytest.mark.parametrize("T,loops,W", RULE_CASES)
def test_rule_matches_brute_force(T, loops, W):
  spec = PLTSpec(loops=loops, window=W)
  for got, want in zip(masks.plt_mask(spec, T), brute_force_masks(T, loops, W), strict=True):
    assert isinstance(got, np.ndarray) and got.shape == (loops * T, loops * T)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("T,loops,W", RULE_CASES[2:])
def test_packed_documents_with_batch_and_under_jit(T, loops, W):
  rng = np.random.default_rng(T * 10 + W)
  seg = np.sort(rng.integers(0, 3, size=(3, T)), axis=1)
  spec = PLTSpec(loops=loops, window=W)
  numpy_masks = masks.plt_mask(spec, T, seg)
  traced_masks = jax.jit(lambda s: masks.plt_mask(spec, T, s))(jnp.asarray(seg))
  for b in range(3):
    want = brute_force_masks(T, loops, W, seg[b])
    for got, traced, expected in zip(numpy_masks, traced_masks, want, strict=True):
      np.testing.assert_array_equal(got[b], expected)
      np.testing.assert_array_equal(np.asarray(traced)[b], expected)


@pytest.mark.parametrize("name", ["PLT-2", "PLT-2-64", "PLT-4-3", "PLT-1"])
def test_every_query_sees_its_own_token_and_nothing_later(name):
  spec, T = parse_variant(name), 10
  glob, local = masks.plt_mask(spec, T)
  loop, tok = np.divmod(np.arange(spec.loops * T), T)
  np.testing.assert_array_equal(glob[:T, :T], np.tril(np.ones((T, T), bool)))  # vanilla
  assert not (glob & (loop[None, :] > 0)).any()  # global: loop 0's keys only
  assert not (local & (loop[None, :] != loop[:, None])).any()  # local: own loop only
  assert not ((glob | local) & (tok[None, :] > tok[:, None])).any()
  assert glob[np.arange(spec.loops * T), tok].all()  # loop 0's key of its own token
  later = loop > 0
  assert (local[np.arange(spec.loops * T), np.arange(spec.loops * T)] == later *
          bool(spec.window)).all()
  assert (local.sum(1)[later] == np.minimum(tok[later] + 1, spec.window)).all()


@pytest.mark.parametrize("name,fields", [
    ("PLT-2", dict(loops=2)), ("PLT-2-64", dict(loops=2, window=64)),
    ("plt-3-4", dict(loops=3, window=4)), ("PLT-1", dict(loops=1))])
def test_names_round_trip(name, fields):
  spec = parse_variant(name, gate="hidden")
  assert spec == PLTSpec(**fields, gate="hidden")
  assert parse_variant(spec.name, gate="hidden") == spec
  assert spec.k == spec.loops  # the compute multiplier compare and metrics read


@pytest.mark.parametrize("name", ["PLT", "PLT-0", "PLT-1-4", "PLT-2-4-8", "PLT-2--4"])
def test_bad_names_raise(name):
  with pytest.raises(ValueError, match="loops|window|variant"):
    parse_variant(name)


@pytest.mark.parametrize("kwargs,field", [
    (dict(loops=2.0), "loops"), (dict(window=-1), "window"), (dict(gate="keys"), "gate"),
    (dict(emb_scale="1"), "emb_scale"), (dict(hidden_scale=True), "hidden_scale"),
    (dict(norm_per_loop=1), "norm_per_loop")])
def test_impossible_settings_name_the_field(kwargs, field):
  with pytest.raises(ValueError, match=field):
    PLTSpec(**kwargs)


def test_picture_cells_and_colours(tmp_path):
  from matplotlib.colors import to_rgb
  from matplotlib.image import imread

  spec, T = PLTSpec(loops=3, window=3), 6
  kinds = masks.plt_cell_kinds(spec, T)
  glob, local = brute_force_masks(T, 3, 3)
  loop0_query = (np.arange(3 * T) < T)[:, None]
  np.testing.assert_array_equal(kinds == 1, glob & loop0_query)
  np.testing.assert_array_equal(kinds == 2, glob & ~loop0_query)
  np.testing.assert_array_equal(kinds == 3, local)
  np.testing.assert_array_equal(kinds == 0, ~glob & ~local)
  out = tmp_path / "plt.png"
  masks.main(["PLT-3-3", "--tokens", str(T), "--out", str(out)])
  pixels = imread(out)[..., :3]
  for _, colour in masks.PLT_CELL_KINDS:
    assert (np.abs(pixels - to_rgb(colour)).max(-1) < 1.5 / 255).any(), colour


# ---------------------------------------------------------------------------------------------
# Attention of the later loops.


def _attention_inputs(seed=0):
  B, T, H, G, Dh = 2, 13, 4, 2, 8
  keys = jax.random.split(jax.random.key(seed), 7)
  q = jax.random.normal(keys[0], (B, T, 1, H, Dh))
  k, v, k0, v0 = (jax.random.normal(key, (B, T, 1, G, Dh)) for key in keys[1:5])
  gate = jax.nn.sigmoid(2 * jax.random.normal(keys[5], (B, T, 1, H)))
  weights = jax.random.normal(keys[6], (B, T, 1, H, Dh))  # a loss that mixes all outputs
  return (q, k, v, k0, v0, gate), weights


def _outputs_and_grads(attend, inputs, weights):
  def loss(*args):
    out = attend(*args)
    return (out * weights).sum(), out
  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6)),
                                               has_aux=True))(*inputs)
  return [np.asarray(x) for x in (out, *grads)]


@pytest.mark.parametrize("window,packed", [(3, True), (1, True), (5, False), (0, True),
                                           (20, True)])
def test_fast_equals_dense_in_value_and_gradient(window, packed):
  """Outputs and gradients with respect to q, k, v, loop 0's k and v, and the gate."""
  spec = PLTSpec(loops=2, window=window)
  segment_ids, positions = packing() if packed else (None, None)
  inputs, weights = _attention_inputs(window)
  fast = _outputs_and_grads(
      lambda *a: loop_attention("structured", *a, spec, segment_ids, positions), inputs, weights)
  dense = _outputs_and_grads(
      lambda *a: dense_loop_attention(*a, spec, segment_ids), inputs, weights)
  for name, a, b in zip(("output", "dq", "dk", "dv", "dk0", "dv0", "dgate"), fast, dense):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4, err_msg=name)
  assert (np.abs(dense[3]).max() > 0) == bool(window)  # the own loop's values matter iff W


# ---------------------------------------------------------------------------------------------
# The model.


def randomize_gates(model, seed=3):
  """Gate parameters far from their initial near-1/2 gates, so that a wrong gate shows."""
  def one(path, x):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if "attn/gate" not in name:
      return x
    return jax.random.normal(jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode())),
                             x.shape)
  nnx.update(model, jax.tree_util.tree_map_with_path(one, nnx.state(model, nnx.Param)))
  return model


MODEL_CASES = [
    ("PLT-2-3", dict(), {}),
    ("PLT-3-4", dict(gate="hidden", emb_scale=0.7, hidden_scale=0.3), {}),
    ("PLT-2", dict(norm_per_loop=False), {"norm_style": "pre"}),
    ("PLT-3-2", dict(norm_per_loop=False, hidden_scale=0.5), {"norm_style": "pre",
                                                              "scan_layers": False}),
    ("PLT-2-5", dict(gate="hidden"), {"attention_impl": "dense", "qk_norm_per_head": True}),
]


@pytest.mark.parametrize("variant,settings,cfg_fields", one_fast(MODEL_CASES))
def test_equals_independent_reference_on_packed_documents(variant, settings, cfg_fields):
  model = make(variant, dataclasses.replace(CFG, **cfg_fields), **settings)
  if model.spec.gated:
    randomize_gates(model)
  segment_ids, positions = packing()
  toks = tokens()
  np.testing.assert_allclose(np.asarray(forward(model, toks, segment_ids, positions)),
                             reference_logits(model, toks, segment_ids), rtol=2e-4, atol=2e-4)


def test_one_loop_is_vanilla_exactly():
  vanilla = Transformer(CFG, parse_variant("Vanilla"), rngs=nnx.Rngs(0))
  plt1 = make("PLT-1")
  assert jax.tree.structure(nnx.state(vanilla, nnx.Param)) == jax.tree.structure(
      nnx.state(plt1, nnx.Param))
  nnx.update(plt1, nnx.state(vanilla, nnx.Param))
  segment_ids, positions = packing()
  toks = tokens()
  np.testing.assert_array_equal(np.asarray(forward(plt1, toks, segment_ids, positions)),
                                np.asarray(forward(vanilla, toks, segment_ids, positions)))


def test_shift_gives_a_documents_first_token_zeros():
  h = jax.random.normal(jax.random.key(0), (2, 13, 1, 4))
  segment_ids, _ = packing()
  got = np.asarray(shift_to_next_token(h, segment_ids))
  seg = np.asarray(segment_ids)
  for b, t in itertools.product(range(2), range(13)):
    first = t == 0 or seg[b, t] != seg[b, t - 1]
    np.testing.assert_array_equal(got[b, t], 0 if first else np.asarray(h)[b, t - 1])
  np.testing.assert_array_equal(np.asarray(shift_to_next_token(h))[:, 1:], np.asarray(h)[:, :-1])
  assert not np.asarray(shift_to_next_token(h))[:, 0].any()


def test_a_later_loops_input_is_the_embedding_where_a_document_starts():
  """a * E(t) + b * 0 at a document's first token; a * E(t) + b * H(t-1) elsewhere."""
  model = make("PLT-2-3", emb_scale=0.5, hidden_scale=2.0)
  segment_ids, _ = packing()
  e = jax.random.normal(jax.random.key(1), (2, 13, 1, CFG.d_model))
  x = jax.random.normal(jax.random.key(2), (2, 13, 1, CFG.d_model))
  got = np.asarray(model.next_loop_input(e, x, segment_ids))
  h = np.asarray(model.final_norm(x))
  seg = np.asarray(segment_ids)
  for b, t in itertools.product(range(2), range(13)):
    previous = 0 if t == 0 or seg[b, t] != seg[b, t - 1] else h[b, t - 1]
    np.testing.assert_allclose(got[b, t], 0.5 * np.asarray(e)[b, t] + 2.0 * previous,
                               rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["PLT-3-3", "PLT-2"])
def test_packed_documents_equal_each_document_alone(variant):
  """Nothing crosses a document boundary: not attention, not the cross-loop shift."""
  model = randomize_gates(make(variant)) if parse_variant(variant).gated else make(variant)
  lengths = [5, 8, 3]
  docs = [tokens(B=1, T=n, seed=10 + i) for i, n in enumerate(lengths)]
  seg = jnp.concatenate([jnp.full((1, n), i + 1) for i, n in enumerate(lengths)], axis=1)
  pos = jnp.concatenate([jnp.arange(n)[None] for n in lengths], axis=1)
  got = np.asarray(forward(model, jnp.concatenate(docs, axis=1), seg, pos))
  alone = np.concatenate([np.asarray(forward(model, d)) for d in docs], axis=1)
  np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-5)


def test_causal():
  model = randomize_gates(make("PLT-3-3"))
  toks = tokens(B=1, T=12)
  changed = toks.at[:, 7:].set((toks[:, 7:] + 5) % CFG.vocab_size)
  a, b = np.asarray(forward(model, toks)), np.asarray(forward(model, changed))
  np.testing.assert_allclose(a[:, :7], b[:, :7], rtol=1e-5, atol=1e-5)
  assert not np.allclose(a[:, 7:], b[:, 7:])


def test_gate_parameters_exist_only_with_a_window_and_carry_their_axes():
  assert nnx.state(make("PLT-3"), nnx.Param)["blocks"]["attn"].get("gate") is None
  query = nnx.state(make("PLT-2-4"), nnx.Param)["blocks"]["attn"]["gate"]
  assert query["weight"].get_metadata()["out_sharding"] == ("layers", "q_heads", "head_dim")
  assert query["bias"].get_metadata()["out_sharding"] == ("layers", "q_heads")
  hidden = nnx.state(make("PLT-2-4", gate="hidden"), nnx.Param)["blocks"]["attn"]["gate"]
  assert hidden["weight"].shape == (CFG.num_layers, CFG.d_model, CFG.num_heads)
  assert hidden["weight"].get_metadata()["out_sharding"] == ("layers", "embed", "q_heads")
  assert hidden["norm"]["scale"].get_metadata()["out_sharding"] == ("layers", "norm")
  decayed = decay_mask(nnx.to_pure_dict(hidden))
  assert decayed["weight"] and not decayed["bias"] and not decayed["norm"]["scale"]


def test_models_refuse_the_other_kind_of_variant():
  with pytest.raises(ValueError, match="PLT-2-4.*state.new_model"):
    Transformer(CFG, parse_variant("PLT-2-4"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="PHD-2"):
    PLTTransformer(CFG, parse_variant("PHD-2"), rngs=nnx.Rngs(0))


@pytest.mark.slow
@pytest.mark.parametrize("variant,gate", [("PLT-3-3", "query"), ("PLT-2-4", "hidden")])
def test_scanned_equals_looped_with_remat(variant, gate):
  """Same weights: same logits and gradients, scanned or a Python loop over the layers."""
  def loss_and_grads(model, toks):
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params):
      return next_token_loss(nnx.merge(graphdef, params)(toks), toks)[0]
    return jax.jit(jax.value_and_grad(loss))(params)

  scanned = randomize_gates(make(variant, dataclasses.replace(CFG, remat="full"), gate=gate))
  looped = make(variant, dataclasses.replace(CFG, remat="full", scan_layers=False), seed=1,
                gate=gate)
  nnx.update(looped, unstack_layers(nnx.state(scanned, nnx.Param)))
  toks = tokens()
  loss_s, grads_s = loss_and_grads(scanned, toks)
  loss_l, grads_l = loss_and_grads(looped, toks)
  np.testing.assert_allclose(loss_s, loss_l, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_s), jax.tree.leaves(stack_layers(grads_l)), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)
  assert np.abs(np.asarray(grads_s["blocks"]["attn"]["gate"]["bias"])).min() > 0


# ---------------------------------------------------------------------------------------------
# Configs, training, sharding and checkpoints (the transformers export: test_hf_plt.py).


def test_config_fields_reach_the_spec_and_bad_ones_are_named():
  config = small_config("PLT-2-4")
  config.phd.update(plt_gate="hidden", plt_emb_scale=0.7, plt_hidden_scale=0.05,
                    plt_norm_per_loop=False)
  config_lib.validate(config, training=False, files=False)
  assert config_lib.phd_spec(config) == PLTSpec(loops=2, window=4, gate="hidden",
                                                emb_scale=0.7, hidden_scale=0.05,
                                                norm_per_loop=False)
  assert isinstance(state.new_model(config), PLTTransformer)
  for field, value in (("phd.positions", "expanded"), ("phd.window_unit", "positions"),
                       ("phd.plt_gate", "keys")):
    bad = small_config("PLT-2-4", **{field: value})
    with pytest.raises(config_lib.ConfigError, match=field.replace(".", r"\.")):
      config_lib.validate(bad, training=False, files=False)
  assert config_lib.phd_spec(small_config("PHD-SWA-2-4")).window_unit == "tokens"


def _steps(config, mesh, num_steps):
  """Losses and the final state of `num_steps` training steps on the synthetic data."""
  training = train.setup(config, mesh)
  batches = data.make_iterator(config)
  train_state, losses = training.init(), []
  for _ in range(num_steps):
    train_state, metrics = training.step(train_state, training.global_batch(next(batches)))
    losses.append(float(metrics["loss"]))
  return losses, train_state


@pytest.mark.slow
def test_trains_through_the_real_train_step():
  """With the released model's a, b and gate input (at a = b = 1 the normed previous state
  drowns the embeddings of so small a model, and 24 steps show little)."""
  config = small_config("PLT-2-4", seq_len=32, batch_size=16, **{
      "phd.plt_gate": "hidden", "phd.plt_emb_scale": 0.707, "phd.plt_hidden_scale": 0.053,
      "model.remat": "full"})
  losses, _ = _steps(config, sharding.make_mesh(config, jax.devices()[:1]), 24)
  assert np.isfinite(losses).all()
  assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.25, losses


@pytest.mark.slow
def test_sharded_step_equals_one_device():
  """Data, fsdp and tensor axes split the gates with the heads; the step is unchanged."""
  overrides = {"optim.grad_clip": 0.0, "optim.eps": 1e-3}
  one = small_config("PLT-3-3", **overrides)
  split = small_config("PLT-3-3", mesh=(2, 2, 2), **overrides)
  losses, stepped = _steps(one, sharding.make_mesh(one, jax.devices()[:1]), 1)
  split_losses, split_stepped = _steps(split, sharding.make_mesh(split), 1)
  np.testing.assert_allclose(split_losses, losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(split_stepped.params), jax.tree.leaves(stepped.params),
                  strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)
  gate = split_stepped.params["blocks"]["attn"]["gate"]["weight"]
  assert gate.sharding.spec[1] == "tensor"  # q_heads


@pytest.mark.slow
def test_run_logs_loops_as_copies_and_its_checkpoint_loads_back(tmp_path):
  """The trainer's loop (metrics: a token's loops are its copies) and a checkpoint that
  loads back as a PLTTransformer with the trained logits."""
  config = small_config("PLT-2-3", num_steps=2, log_every=2, **{"checkpoint.every": 2})
  mesh = sharding.make_mesh(config, jax.devices()[:1])
  train.train(config, str(tmp_path), mesh=mesh)
  logged = [r for r in read_metrics(tmp_path) if "loss" in r][-1]
  assert logged["copies_per_s"] == pytest.approx(2 * logged["tokens_per_s"])
  loaded = state.load_model(str(tmp_path))
  assert isinstance(loaded.model, PLTTransformer) and loaded.model.spec.name == "PLT-2-3"
  _, trained = _steps(config, mesh, 2)
  toks = tokens(T=16)
  np.testing.assert_allclose(np.asarray(forward(loaded.model, toks)),
                             np.asarray(forward(state.model_from_params(config, trained.params),
                                                toks)), rtol=1e-5, atol=1e-5)
