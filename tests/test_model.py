"""The PHD decoder: vanilla equivalence, PHD invariances, packing, gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phd_jax.loss import next_token_loss
from phd_jax.masks import parse_variant
from phd_jax.model import ModelConfig, Transformer, copy_positions
from reference_model import reference_logits
from tier_helpers import one_fast

CFG = ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=48, rope_theta=10_000.0, attention_impl="dense")
VARIANTS = ["Vanilla", "PHD-2", "PHD-3", "PHD-SWA-2-3-inf", "PHD-SWA-3-4-inf",
            "PHD-CSWA-3-4-4", "PHD-CSWA-4-2-3"]


def make(variant, cfg=CFG, seed=0, **spec_kwargs):
  return Transformer(cfg, parse_variant(variant, **spec_kwargs), rngs=nnx.Rngs(seed))


@nnx.jit
def forward(model, toks, segment_ids=None, positions=None):
  return model(toks, segment_ids, positions)


def tokens(B=2, T=11, seed=1, vocab=CFG.vocab_size):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, vocab)


@pytest.mark.parametrize("norm_style,scan_layers", [("reordered", True), ("pre", True),
                                                    ("reordered", False)])
def test_vanilla_equals_independent_transformer(norm_style, scan_layers):
  model = make("Vanilla", dataclasses.replace(CFG, norm_style=norm_style,
                                              scan_layers=scan_layers))
  toks = tokens()
  np.testing.assert_allclose(np.asarray(model(toks)),
                             reference_logits(model, toks),
                             rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("variant", one_fast(VARIANTS))
def test_shapes_and_dtypes(variant):
  model = make(variant, dataclasses.replace(CFG, dtype="bfloat16"))
  logits = model(tokens())
  assert logits.shape == (2, 11, CFG.vocab_size) and logits.dtype == jnp.float32
  states = model.hidden_states(tokens())
  assert states.shape == (2, 11, model.spec.k, CFG.d_model) and states.dtype == jnp.bfloat16
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("variant", one_fast(VARIANTS[1:]))
def test_originals_are_the_vanilla_model(variant):
  """Copy 0 never sees hidden copies: a PHD model's originals are the vanilla model's."""
  phd, vanilla = make(variant), make("Vanilla")
  nnx.update(vanilla, nnx.state(phd, nnx.Param))
  toks = tokens()
  np.testing.assert_allclose(np.asarray(phd.hidden_states(toks)[:, :, 0]),
                             np.asarray(vanilla.hidden_states(toks)[:, :, 0]),
                             rtol=1e-5, atol=1e-5)


@nnx.jit
def run_blocks(model, x_BTKD):
  T = x_BTKD.shape[1]
  positions = jnp.broadcast_to(jnp.arange(T), x_BTKD.shape[:2])
  for block in model.blocks:
    x_BTKD, _ = block(x_BTKD, copy_positions(model.spec, positions), None, positions)
  return x_BTKD


@pytest.mark.parametrize("variant", one_fast(VARIANTS[1:]))
def test_perturbing_hidden_copies_leaves_originals(variant):
  model = make(variant, dataclasses.replace(CFG, scan_layers=False))  # blocks one by one
  x = jax.random.normal(jax.random.key(0), (2, 9, model.spec.k, CFG.d_model))
  noisy = x.at[:, :, 1:].add(jax.random.normal(jax.random.key(1), x[:, :, 1:].shape))
  out, out_noisy = run_blocks(model, x), run_blocks(model, noisy)
  np.testing.assert_allclose(np.asarray(out[:, :, 0]), np.asarray(out_noisy[:, :, 0]),
                             rtol=1e-5, atol=1e-5)
  assert not np.allclose(np.asarray(out[:, :, 1:]), np.asarray(out_noisy[:, :, 1:]))


@pytest.mark.parametrize("variant,positions", one_fast([(v, "shared") for v in VARIANTS] +
                                                      [(v, "expanded") for v in VARIANTS[1:]]))
def test_causal(variant, positions):
  model = make(variant, positions=positions)
  toks = tokens(B=1, T=12)
  changed = toks.at[:, 7:].set((toks[:, 7:] + 5) % CFG.vocab_size)
  a, b = np.asarray(forward(model, toks)), np.asarray(forward(model, changed))
  np.testing.assert_allclose(a[:, :7], b[:, :7], rtol=1e-5, atol=1e-5)
  assert not np.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("variant", one_fast(VARIANTS))
def test_packed_documents_equal_each_document_alone(variant):
  model = make(variant)
  lengths = [5, 8, 3]
  docs = [tokens(B=1, T=n, seed=10 + i) for i, n in enumerate(lengths)]
  packed = jnp.concatenate(docs, axis=1)
  seg = jnp.concatenate([jnp.full((1, n), i + 1) for i, n in enumerate(lengths)], axis=1)
  pos = jnp.concatenate([jnp.arange(n)[None] for n in lengths], axis=1)
  got = np.asarray(forward(model, packed, seg, pos))
  alone = np.concatenate([np.asarray(forward(model, d)) for d in docs], axis=1)
  np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-5)


def test_expanded_positions_change_hidden_copies_only():
  shared, expanded = make("PHD-3"), make("PHD-3", positions="expanded")
  toks = tokens()
  hs, he = shared.hidden_states(toks), expanded.hidden_states(toks)
  assert not np.allclose(np.asarray(hs[:, :, 1:]), np.asarray(he[:, :, 1:]))
  pos = jnp.arange(4)[None]
  np.testing.assert_array_equal(np.asarray(copy_positions(expanded.spec, pos))[0, 2], [6, 7, 8])


@pytest.mark.parametrize("variant", one_fast(["Vanilla", "PHD-CSWA-3-4-4"]))
@pytest.mark.parametrize("tie", [False, True])
def test_gradients_finite_and_nonzero(variant, tie):
  model = make(variant, dataclasses.replace(CFG, tie_embeddings=tie, remat="full"))
  toks = tokens()

  def loss_fn(m):
    return next_token_loss(m(toks), toks)[0]

  grads = nnx.jit(nnx.grad(loss_fn))(model)
  for path, g in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(grads)):
    g = np.asarray(g)
    assert np.isfinite(g).all(), path
    assert np.abs(g).max() > 0, path
