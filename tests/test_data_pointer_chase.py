"""Pointer-chasing rows: the table is a permutation, every answer is f^hops(query) read off
the row's own table, rows are reproducible and split-specific; answer accuracy equals the
model's argmax counted by hand."""

import pathlib

import jax
import numpy as np
import pytest

from phd_jax import config as config_lib
from phd_jax import data, state
from phd_jax.data import pointer_chase
from phd_jax.data.tokenizers import BOS_ID, FIRST_ID
from phd_jax.eval import chase

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def mechanism_config(**changes):
  c = config_lib.load_config(REPO_ROOT / "configs" / "mechanism.py", "Vanilla")
  c.update_from_flattened_dict(changes)
  return c


def batch(config, split="train", step=0):
  it = data.make_iterator(config, split, process_index=0, process_count=1)
  it.set_state({"step": step})
  try:
    return next(it)
  finally:
    it.close()


@pytest.mark.parametrize("nodes, hops, seq_len", [(16, 1, 64), (5, 3, 23)])
def test_answers_follow_the_rows_table(nodes, hops, seq_len):
  c = mechanism_config(**{"data.chase_nodes": nodes, "data.chase_hops": hops,
                          "seq_len": seq_len, "batch_size": 4})
  b = batch(c)
  mask_T = pointer_chase.answer_mask(seq_len, nodes)
  queries = pointer_chase.queries_per_row(seq_len, nodes)
  assert mask_T.sum() == queries >= 1
  for tokens, segments in zip(b["tokens"], b["segment_ids"]):
    symbols = tokens - FIRST_ID
    assert tokens[0] == BOS_ID and symbols[1 + 2 * nodes] == nodes  # separator
    table = dict(zip(symbols[1:1 + 2 * nodes:2], symbols[2:2 + 2 * nodes:2]))
    assert sorted(table) == sorted(table.values()) == list(range(nodes))  # a permutation
    for position in np.flatnonzero(mask_T):
      x = symbols[position]
      for _ in range(hops):
        x = table[x]
      assert symbols[position + 1] == x
    used = 2 + 2 * nodes + 2 * queries
    assert (segments[:used] == 1).all() and (segments[used:] == 0).all()


def test_rows_are_reproducible_and_split_specific():
  c = mechanism_config(batch_size=4)
  np.testing.assert_array_equal(batch(c, step=3)["tokens"], batch(c, step=3)["tokens"])
  assert not np.array_equal(batch(c, step=3)["tokens"], batch(c, step=4)["tokens"])
  assert not np.array_equal(batch(c)["tokens"], batch(c, "validation")["tokens"])


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="seq_len"):
    batch(mechanism_config(seq_len=20))
  with pytest.raises(ValueError, match="vocab_size"):
    batch(mechanism_config(**{"data.chase_nodes": 200}))


def test_answer_accuracy_is_the_models_argmax():
  c = mechanism_config(batch_size=8, **{"model.d_model": 32, "model.mlp_dim": 64,
                                        "model.head_dim": 8})
  model = state.new_model(c)
  metrics = chase.answer_metrics(model, c, None, num_batches=2)
  b1, b2 = batch(c, "validation", 0), batch(c, "validation", 1)
  mask_T = pointer_chase.answer_mask(c.seq_len, c.data.chase_nodes)
  hits, logprobs = [], []
  for b in (b1, b2):
    logits = np.asarray(model(b["tokens"], b["segment_ids"], b["positions"]))
    logp = np.asarray(jax.nn.log_softmax(logits))[:, mask_T]
    answers = b["tokens"][:, 1:][:, mask_T[:-1]]
    hits.append(logp.argmax(-1) == answers)
    logprobs.append(np.take_along_axis(logp, answers[..., None], -1))
  assert metrics["answers"] == 2 * 8 * mask_T.sum()
  assert metrics["accuracy"] == pytest.approx(np.concatenate(hits).mean())
  assert metrics["answer_loss"] == pytest.approx(-np.concatenate(logprobs).mean(), rel=1e-5)
