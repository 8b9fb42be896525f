"""Every attention implementation equals the dense reference in outputs and gradients.

Shapes are tiny (13 tokens: not a multiple of any block or tile size) and documents are
packed with in-document positions, so segment, chunk and block boundaries all fall
mid-block. float32 must agree to 1e-4; in bfloat16 an implementation may be off the exact
(float32) result by at most twice the bfloat16 reference's own error plus 1e-2.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phd_jax import attention
from phd_jax.attention.cudnn import cudnn_attention, cudnn_supports
from phd_jax.attention.dense import dense_attention
from phd_jax.attention.splash import splash_attention
from phd_jax.attention.split import XlaCausal, split_attention
from phd_jax.attention.structured import joint_softmax, structured_attention
from phd_jax.masks import PHDSpec
from tier_helpers import one_fast

B, T, H, G, DH = 2, 13, 4, 2, 8
DOCS = [[5, 6, 2], [10, 3]]  # document lengths per row; row 1 ends in 3 padding tokens
VARIANTS = {  # windows and chunks small enough to matter within 13 tokens
    "PHD": dict(),
    "SWA-tokens": dict(window=3),
    "SWA-positions": dict(window=3, window_unit="positions"),
    "CSWA-tokens": dict(window=5, chunk=4),
    "CSWA-positions": dict(window=2, chunk=4, window_unit="positions"),
}
ALL_CASES = [(1, "PHD")] + [(k, v) for k in (2, 3, 4) for v in VARIANTS]


def _packing():
  segment_ids = np.array([np.repeat(np.arange(1, len(d) + 1), d) for d in DOCS])
  segment_ids[1, 10:] = 0  # padding is segment 0
  positions = np.array([np.concatenate([np.arange(n) for n in d]) for d in DOCS])
  return jnp.asarray(segment_ids, jnp.int32), jnp.asarray(positions, jnp.int32)


def _inputs(k: int, seed: int = 0):
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (B, T, k, H, DH))
  kv = [jax.random.normal(key, (B, T, k, G, DH)) for key in keys[1:3]]
  weights = jax.random.normal(keys[3], (B, T, k, H, DH))  # a loss that mixes all outputs
  return (q, *kv), weights


def _outputs_and_grads(impl, spec, qkv, weights, packed=True):
  segment_ids, positions = _packing() if packed else (None, None)

  def loss(q, k, v):
    out = impl(q, k, v, spec, segment_ids, positions)
    return (out.astype(jnp.float32) * weights).sum(), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(*qkv)
  return [np.asarray(x, np.float32) for x in (out, *grads)]


def _spec(k, variant):
  return PHDSpec(k=k, **(VARIANTS[variant] if k > 1 else {}))


def _rounded_inputs(k, dtype):
  qkv, weights = _inputs(k, seed=k)
  return [x.astype(dtype) for x in qkv], weights


@functools.lru_cache(maxsize=None)
def _dense(k, variant, dtype, packed, exact):
  """Dense outputs and gradients on the `dtype`-rounded inputs, in float32 if `exact`."""
  qkv, weights = _rounded_inputs(k, dtype)
  if exact:
    qkv = [x.astype(jnp.float32) for x in qkv]
  return _outputs_and_grads(dense_attention, _spec(k, variant), qkv, weights, packed)


def _assert_matches_dense(impl, k, variant, dtype=jnp.float32, packed=True):
  qkv, weights = _rounded_inputs(k, dtype)
  got = _outputs_and_grads(impl, _spec(k, variant), qkv, weights, packed)
  exact = _dense(k, variant, dtype, packed, exact=True)
  names = ("output", "dq", "dk", "dv")
  if dtype == jnp.float32:
    for name, a, b in zip(names, got, exact):
      np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4, err_msg=name)
    return
  reference = _dense(k, variant, dtype, packed, exact=False)
  for name, a, r, b in zip(names, got, reference, exact):
    bound = 2 * np.abs(r - b).max() + 1e-2
    assert np.abs(a - b).max() <= bound, (name, np.abs(a - b).max(), bound)


@pytest.mark.parametrize("k,variant", one_fast(ALL_CASES))
def test_structured_matches_dense(k, variant):
  _assert_matches_dense(structured_attention, k, variant)


@pytest.mark.slow
@pytest.mark.parametrize("k,variant", [(1, "PHD"), (2, "CSWA-positions"), (4, "SWA-tokens")])
def test_structured_blockwise_matches_dense(k, variant):
  """Query blocks of 5 tokens: 13 tokens make blocks of 5, 5 and 3, each rematerialised."""
  blockwise = lambda *a: structured_attention(*a, block_size=5)
  _assert_matches_dense(blockwise, k, variant)


@pytest.mark.slow
@pytest.mark.parametrize("k,variant", [(2, "SWA-positions"), (4, "CSWA-tokens")])
def test_structured_matches_dense_bfloat16(k, variant):
  _assert_matches_dense(structured_attention, k, variant, jnp.bfloat16)


def test_structured_without_segments():
  _assert_matches_dense(structured_attention, 3, "CSWA-tokens", packed=False)


@pytest.mark.parametrize("k,variant,dtype", one_fast([
    (1, "PHD", jnp.float32), (2, "CSWA-positions", jnp.float32),
    (3, "SWA-tokens", jnp.float32), (4, "PHD", jnp.float32),
    (4, "CSWA-tokens", jnp.bfloat16)]))
def test_split_merge_matches_dense(k, variant, dtype):
  """The kernel + band merge with its custom VJP (the GPU and TPU paths), on the XLA kernel."""
  split = lambda *a: split_attention(XlaCausal(), *a)
  _assert_matches_dense(split, k, variant, dtype)


@pytest.mark.slow
def test_split_merge_bfloat16_gradients_are_as_exact_as_structured():
  """At 128 tokens bfloat16 errors are well above the 1e-2 floor of the 13-token tests:
  the merge's backward must not round dP and D to bfloat16 before subtracting them."""
  spec, num_tokens = PHDSpec(k=3, window=16, chunk=32), 128
  segment_ids = np.repeat([[1] * 50 + [2] * 78, [1] * 100 + [2] * 20 + [0] * 8], 1, axis=0)
  positions = np.array([list(range(50)) + list(range(78)), list(range(100)) +
                        list(range(28))])
  keys = jax.random.split(jax.random.key(1), 4)
  shapes = [(B, num_tokens, 3, n, 16) for n in (H, G, G, H)]
  q, k, v, weights = [jax.random.normal(key, s) for key, s in zip(keys, shapes)]
  rounded = [x.astype(jnp.bfloat16) for x in (q, k, v)]

  def grads(impl, dtype):
    def loss(q, k, v):
      out = impl(q, k, v, spec, jnp.asarray(segment_ids), jnp.asarray(positions))
      return (out.astype(jnp.float32) * weights).sum()
    args = [x.astype(dtype) for x in rounded]
    return [np.asarray(g, np.float32)
            for g in jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)]

  exact = grads(dense_attention, jnp.float32)
  error = lambda impl: [np.abs(g - e).max() for g, e in zip(grads(impl, jnp.bfloat16), exact)]
  reference = np.maximum(error(dense_attention), error(structured_attention))
  split = error(lambda *a: split_attention(XlaCausal(), *a))
  for name, got, bound in zip(("dq", "dk", "dv"), split, 2 * reference):
    assert got <= bound, (name, got, bound)


@pytest.mark.slow
@pytest.mark.parametrize("k,variant,dtype,packed", [
    (3, "CSWA-tokens", jnp.float32, True), (2, "SWA-positions", jnp.bfloat16, False)])
def test_splash_interpret_matches_dense(k, variant, dtype, packed):
  interpreted = lambda *a: splash_attention(*a, interpret=True)
  _assert_matches_dense(interpreted, k, variant, dtype, packed)


@pytest.mark.slow
def test_splash_under_mesh_matches_dense():
  """Batch and kv heads split over a 2 x 2 mesh: the kernels run per shard (shard_map)."""
  mesh = jax.make_mesh((2, 2), ("data", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rules = (("activation_batch", "data"), ("kv_heads", "tensor"))
  interpreted = lambda *a: splash_attention(*a, interpret=True)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    _assert_matches_dense(interpreted, 2, "CSWA-positions")


def test_joint_softmax_is_softmax_of_concatenation():
  a, b, w = (jax.random.normal(jax.random.key(i), (2, 3, n)) for i, n in enumerate((7, 4, 11)))
  joint = lambda a, b: (jnp.concatenate(joint_softmax(a, b), -1) * w).sum()
  reference = lambda a, b: (jax.nn.softmax(jnp.concatenate([a, b], -1)) * w).sum()
  grads = jax.jit(lambda a, b: (jax.grad(joint, (0, 1))(a, b), jax.grad(reference, (0, 1))(a, b)))
  for x, y in zip(*grads(a, b)):
    np.testing.assert_allclose(x, y, atol=1e-6)
  np.testing.assert_allclose(jnp.concatenate(joint_softmax(a, b), -1),
                             jax.nn.softmax(jnp.concatenate([a, b], -1)), atol=1e-6)


@pytest.mark.slow
def test_cudnn_falls_back_where_cudnn_cannot_run():
  q = jnp.zeros((1, 4, 2, 4, 64), jnp.bfloat16)
  assert cudnn_supports(q)
  assert not cudnn_supports(q.astype(jnp.float32))  # cuDNN has no float32 flash attention
  assert not cudnn_supports(jnp.zeros((1, 4, 2, 4, 12), jnp.bfloat16))  # head_dim % 8
  assert not cudnn_supports(jnp.zeros((1, 5, 2, 4, 64), jnp.bfloat16))  # odd length
  (q, k, v), _ = _inputs(2)
  spec = _spec(2, "SWA-tokens")  # float32 on any backend: cudnn_attention runs structured
  np.testing.assert_array_equal(cudnn_attention(q, k, v, spec),
                                structured_attention(q, k, v, spec))


def test_resolve_on_cpu():
  assert attention.resolve("auto") == "structured"
  assert attention.resolve("dense") == "dense"
  for impl in ("splash", "cudnn"):
    with pytest.raises(ValueError, match="backend"):
      attention.resolve(impl)
  with pytest.raises(ValueError, match="attention_impl"):
    attention.resolve("flash")
