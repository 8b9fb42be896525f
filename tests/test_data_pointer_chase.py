"""Pointer-chasing rows: the table is a permutation, every answer is f^hops(query) read off
the row's own table, rows are reproducible and split-specific; answer accuracy equals the
model's argmax counted by hand."""


import jax
import numpy as np
import pytest

from phd_jax import config as config_lib
from phd_jax import data, state
from phd_jax.data import pointer_chase
from phd_jax.data.tokenizers import BOS_ID, FIRST_ID
from phd_jax.eval import chase
from run_helpers import REPO_ROOT



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


def read_table(tokens, rows: pointer_chase.RowFormat) -> dict:
  """The row's table {x: f(x)} as symbols, decoded independently of the source."""
  n = rows.nodes
  if rows.table == "pairs":
    ids = tokens[1:1 + n] - (FIRST_ID + n + 1)
    return dict(zip(ids // n, ids % n))
  keys, values = tokens[1:1 + 2 * n:2] - FIRST_ID, tokens[2:2 + 2 * n:2] - FIRST_ID
  if rows.table == "marked":
    assert (values >= n).all() and (values < 2 * n).all()
    values = values - n
  return dict(zip(keys, values))


@pytest.mark.parametrize("table", pointer_chase.TABLES)
@pytest.mark.parametrize("nodes, hops, seq_len", [(16, 1, 64), (5, 3, 23)])
def test_answers_follow_the_rows_table(nodes, hops, seq_len, table):
  c = mechanism_config(**{"data.chase_nodes": nodes, "data.chase_hops": hops,
                          "data.chase_table": table, "seq_len": seq_len, "batch_size": 4,
                          "model.vocab_size": 300})
  b = batch(c)
  rows = pointer_chase.row_format(c)
  mask_T = rows.answer_mask(seq_len)
  queries = rows.queries_per_row(seq_len)
  table_len = nodes if table == "pairs" else 2 * nodes
  value_offset = nodes if table == "marked" else 0
  assert mask_T.sum() == queries == (seq_len - 2 - table_len) // 2 >= 1
  assert b["tokens"].max() < c.model.vocab_size
  for tokens, segments in zip(b["tokens"], b["segment_ids"]):
    assert tokens[0] == BOS_ID
    assert tokens[1 + table_len] == FIRST_ID + nodes + value_offset  # the separator
    f = read_table(tokens, rows)
    assert sorted(f) == sorted(f.values()) == list(range(nodes))  # a permutation
    for position in np.flatnonzero(mask_T):
      x = tokens[position] - FIRST_ID
      for _ in range(hops):
        x = f[x]
      assert tokens[position + 1] - FIRST_ID - value_offset == x
    used = 2 + table_len + 2 * queries
    assert (segments[:used] == 1).all() and (segments[used:] == 0).all()


def test_rows_are_reproducible_and_split_specific():
  c = mechanism_config(batch_size=4)
  np.testing.assert_array_equal(batch(c, step=3)["tokens"], batch(c, step=3)["tokens"])
  assert not np.array_equal(batch(c, step=3)["tokens"], batch(c, step=4)["tokens"])
  assert not np.array_equal(batch(c)["tokens"], batch(c, "validation")["tokens"])


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="needs seq_len >= 20"):  # BOS, 16 table ids, SEP
    batch(mechanism_config(seq_len=19))
  with pytest.raises(ValueError, match="vocab_size"):
    batch(mechanism_config(**{"data.chase_nodes": 200}))
  with pytest.raises(ValueError, match="vocab_size >= 276"):  # 3 + 16 + 1 + 16^2 ids
    batch(mechanism_config(**{"data.chase_table": "pairs", "data.chase_nodes": 16,
                              "model.vocab_size": 275}))
  with pytest.raises(ValueError, match="chase_table"):
    batch(mechanism_config(**{"data.chase_table": "pair"}))


@pytest.mark.slow
def test_answer_accuracy_is_the_models_argmax():
  c = mechanism_config(batch_size=8, **{"model.d_model": 32, "model.mlp_dim": 64,
                                        "model.head_dim": 8})
  model = state.new_model(c)
  metrics = chase.answer_metrics(model, c, None, num_batches=2)
  rows = pointer_chase.row_format(c)
  mask_T = rows.answer_mask(c.seq_len)

  def hits_and_logprobs(swap):
    hits, logprobs = [], []
    for step in (0, 1):
      b = batch(c, "validation", step)
      tokens = b["tokens"].copy()
      answers = tokens[:, 1:][:, mask_T[:-1]]
      if swap:  # row i reads row i-1's table (by hand: no np.roll)
        n = rows.table_tokens
        tokens[:, 1:1 + n] = b["tokens"][[len(tokens) - 1] + list(range(len(tokens) - 1)),
                                         1:1 + n]
      logits = np.asarray(model(tokens, b["segment_ids"], b["positions"]))
      logp = np.asarray(jax.nn.log_softmax(logits))[:, mask_T]
      hits.append(logp.argmax(-1) == answers)
      logprobs.append(np.take_along_axis(logp, answers[..., None], -1))
    return np.concatenate(hits), np.concatenate(logprobs)

  hits, logprobs = hits_and_logprobs(swap=False)
  assert metrics["answers"] == 2 * 8 * mask_T.sum()
  assert metrics["accuracy"] == pytest.approx(hits.mean())
  assert metrics["answer_loss"] == pytest.approx(-logprobs.mean(), rel=1e-5)
  assert metrics["first_accuracy"] == pytest.approx(hits[:, 0].mean())
  assert metrics["swapped_accuracy"] == pytest.approx(hits_and_logprobs(swap=True)[0].mean())
