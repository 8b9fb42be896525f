"""The batched scorer against a brute-force per-request forward of the model."""

import jax
import numpy as np
import pytest
from flax import nnx

from phd_jax import sharding
from phd_jax.eval import batching
from phd_jax.eval.scorer import Scorer, encode_pair
from phd_jax.masks import parse_variant
from phd_jax.model import ModelConfig, Transformer
from tier_helpers import one_fast

CFG = ModelConfig(vocab_size=38, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=48, rope_theta=10_000.0, attention_impl="dense")
SEQ_LEN = 16
VARIANTS = [("Vanilla", {}), ("PHD-3", {}), ("PHD-SWA-2-3-inf", {}),
            ("PHD-SWA-3-2-inf", {"window_unit": "positions"}),
            ("PHD-CSWA-3-2-4", {"positions": "expanded"})]


def make(variant, **kwargs):
  return Transformer(CFG, parse_variant(variant, **kwargs), rngs=nnx.Rngs(0))


def make_requests(seed=0):
  """Short and long (left-truncated) requests, repeated inputs, single-token options that
  share a context, and an option that extends another."""
  rng = np.random.default_rng(seed)
  ids = lambda n: rng.integers(1, CFG.vocab_size, n).tolist()
  requests = [(ids(rng.integers(1, 8)), ids(rng.integers(1, 6))) for _ in range(10)]
  requests += [(ids(rng.integers(SEQ_LEN, 3 * SEQ_LEN)), ids(rng.integers(1, 8)))
               for _ in range(4)]
  requests += [(ids(3), ids(SEQ_LEN))]  # a continuation of exactly seq_len tokens
  shared = ids(SEQ_LEN + 5)
  requests += [(shared, [t]) for t in (4, 9, 4, 20)]
  requests += [(shared[:6], shared[6:9]), (shared[:6], shared[6:8] + [3])]
  requests += [requests[0], requests[3]]
  return requests


def brute_force(model, requests):
  """Each request alone in its own row: its last seq_len + 1 tokens, right-padded (causal
  attention: padding after a position does not change its logits), no packing, no sharing."""
  fulls = [(c + x)[-(SEQ_LEN + 1):] for c, x in requests]
  rows = np.zeros((len(requests), SEQ_LEN), np.int32)
  for row, full in zip(rows, fulls):
    row[:len(full) - 1] = full[:-1]
  logits = np.asarray(jax.jit(lambda m, t: m(t))(model, rows), np.float64)
  out = []
  for logits_TV, full, (_, continuation) in zip(logits, fulls, requests):
    top = logits_TV.max(-1, keepdims=True)
    logp = logits_TV - top - np.log(np.exp(logits_TV - top).sum(-1, keepdims=True))
    n = len(continuation)
    at, targets = np.arange(len(full) - 1)[-n:], np.asarray(full[1:])[-n:]
    out.append((logp[at, targets].sum(), bool((logits_TV[at].argmax(-1) == targets).all())))
  return out


def check_equal(got, expected):
  np.testing.assert_allclose([g for g, _ in got], [e for e, _ in expected], rtol=1e-5,
                             atol=1e-5)
  assert [g for _, g in got] == [e for _, e in expected]


@pytest.mark.parametrize("variant,kwargs", one_fast(VARIANTS))
def test_scorer_equals_per_request_forward(variant, kwargs):
  model = make(variant, **kwargs)
  requests = make_requests()
  scorer = Scorer(model, seq_len=SEQ_LEN, batch_size=2)
  check_equal(scorer.loglikelihood(requests), brute_force(model, requests))


def test_scorer_sharded_over_eight_devices_equals_per_request_forward():
  model = make("PHD-CSWA-2-2-4")
  mesh = jax.make_mesh((2, 2, 2), sharding.AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  graphdef, state = nnx.split(model)
  sharded = nnx.merge(graphdef, jax.device_put(state, sharding.tree_shardings(state, mesh)))
  requests = make_requests(seed=1)
  scorer = Scorer(sharded, seq_len=SEQ_LEN, batch_size=3, mesh=mesh)
  assert scorer.batch_size == 4  # rounded up to the data-parallel devices (data x fsdp)
  check_equal(scorer.loglikelihood(requests), brute_force(model, requests))


def test_plan_shares_prefixes_and_packs_rows():
  requests = make_requests()
  plan = batching.plan(requests, SEQ_LEN)
  inputs = {tuple(batching.windows(c, x, SEQ_LEN)[0][0]) for c, x in requests}
  # No input that is a prefix of another is run on its own.
  served = [i for i in inputs if not any(j != i and j[:len(i)] == i for j in inputs)]
  assert (plan.segment_ids > 0).sum() == sum(len(i) for i in served)
  assert plan.num_rows == -(-sum(len(i) for i in served) // SEQ_LEN)  # rows are full


@pytest.mark.slow
def test_long_continuations_and_rolling_loglikelihood_score_in_windows():
  model = make("PHD-SWA-2-3-inf")
  rng = np.random.default_rng(3)
  documents = [[1] + rng.integers(3, CFG.vocab_size, n).tolist() for n in (5, 40)]
  scorer = Scorer(model, seq_len=SEQ_LEN, batch_size=2)

  def windowed(doc, c):
    """Targets [c, c + 16), [c + 16, c + 32), ... each after the 16 tokens before them."""
    return sum(brute_force(model, [(doc[max(0, s - SEQ_LEN):s], doc[s:s + SEQ_LEN])])[0][0]
               for s in range(c, len(doc), SEQ_LEN))

  got = scorer.loglikelihood([(d[:3], d[3:]) for d in documents])
  np.testing.assert_allclose([g for g, _ in got], [windowed(d, 3) for d in documents],
                             rtol=1e-5)
  np.testing.assert_allclose(scorer.loglikelihood_rolling(documents + [[1]]),
                             [windowed(d, 1) for d in documents] + [0.0], rtol=1e-5)


class Chars:
  """A tokenizer with one id per character, to check encode_pair's split."""
  bos_id = 1

  def encode(self, text):
    return [ord(c) for c in text]


def test_encode_pair_moves_trailing_space_to_continuation():
  context, continuation = encode_pair(Chars(), "so ", "Sarah")
  assert context == [1, ord("s"), ord("o")]
  assert continuation == [ord(c) for c in " Sarah"]


def test_bad_requests_raise():
  scorer = Scorer(make("Vanilla"), seq_len=SEQ_LEN, batch_size=1)
  with pytest.raises(ValueError, match="continuation"):
    scorer.loglikelihood([([1], [])])
  with pytest.raises(ValueError, match="context"):
    scorer.loglikelihood([([], [2])])
