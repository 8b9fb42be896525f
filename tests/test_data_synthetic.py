"""The synthetic source: determinism, exact resume, disjoint covering host shares."""


import numpy as np
import pytest

from data_helpers import assert_batches_equal, take
from phd_jax import data
from phd_jax.data import synthetic
from run_helpers import tiny_config



def _config(**overrides):
  c = tiny_config()
  c.data.source = "synthetic"
  c.seq_len, c.batch_size = 64, 8
  for k, v in overrides.items():
    c[k] = v
  return c


def test_shapes_and_layout():
  c = _config()
  batch = next(data.make_iterator(c, process_index=0, process_count=2))
  for key in ("tokens", "segment_ids", "positions"):
    assert batch[key].shape == (4, 64) and batch[key].dtype == np.int32
  for tokens, seg, pos in zip(batch["tokens"], batch["segment_ids"], batch["positions"]):
    real = seg > 0
    assert (tokens[~real] == 0).all() and (pos[~real] == 0).all()
    assert real[0] and (np.diff(real.astype(int)) <= 0).all()  # padding only at the end
    segments = seg[real]
    assert segments[0] == 1 and set(np.diff(segments)) <= {0, 1}
    starts = np.flatnonzero(np.diff(segments, prepend=0))
    assert (tokens[starts] == data.tokenizers.BOS_ID).all()
    for start, end in zip(starts, list(starts[1:]) + [real.sum()]):  # positions restart
      np.testing.assert_array_equal(pos[start:end], np.arange(end - start))
    inner = tokens[real][pos[real] > 0]
    assert inner.min() >= data.tokenizers.FIRST_ID and inner.max() < c.model.vocab_size


def test_follows_the_chain():
  """Every in-document transition is one of the chain's successors of the previous token."""
  c = _config()
  batch = next(data.make_iterator(c, process_index=0, process_count=1))
  successors = synthetic.markov_chain(c.model.vocab_size)
  tokens, pos = batch["tokens"], batch["positions"]
  follows = pos[:, 1:] >= 2
  prev, nxt = tokens[:, :-1][follows], tokens[:, 1:][follows]
  assert follows.sum() > 100
  assert (successors[prev] == nxt[:, None]).any(axis=1).all()


def test_same_seed_same_batches_other_seed_differs():
  c = _config()
  a = take(data.make_iterator(c, process_index=0, process_count=1), 3)
  b = take(data.make_iterator(c, process_index=0, process_count=1), 3)
  assert_batches_equal(a, b)
  other = next(data.make_iterator(_config(seed=1), process_index=0, process_count=1))
  assert not np.array_equal(other["tokens"], a[0]["tokens"])
  val = next(data.make_iterator(c, split="validation", process_index=0, process_count=1))
  assert not np.array_equal(val["tokens"], a[0]["tokens"])


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resume_equals_uninterrupted(prefetch):
  c = _config()
  c.data.prefetch = prefetch
  full = take(data.make_iterator(c, process_index=0, process_count=1), 5)
  it = data.make_iterator(c, process_index=0, process_count=1)
  take(it, 2)
  state = it.get_state()
  resumed = data.make_iterator(c, process_index=0, process_count=1)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 3), full[2:])
  it.set_state(state)  # rewinding an iterator that prefetched ahead
  assert_batches_equal(take(it, 3), full[2:])


def test_host_shares_disjoint_and_covering():
  """Shares of 1, 2 and 4 processes concatenate to the same global batch (resume too)."""
  c = _config()
  whole = take(data.make_iterator(c, process_index=0, process_count=1), 2)
  for count in (2, 4):
    its = [data.make_iterator(c, process_index=i, process_count=count) for i in range(count)]
    for step in range(2):
      shares = [next(it) for it in its]
      for key in ("tokens", "segment_ids", "positions"):
        np.testing.assert_array_equal(np.concatenate([s[key] for s in shares]),
                                      whole[step][key])
  resumed = data.make_iterator(c, process_index=1, process_count=2)
  resumed.set_state(its[0].get_state())  # a 4-process state resumes 2 processes
  assert resumed.get_state() == {"step": 2}


def test_bad_config_and_state():
  with pytest.raises(ValueError, match="batch_size=8 must be divisible"):
    data.make_iterator(_config(), process_index=0, process_count=3)
  with pytest.raises(ValueError, match="data.source"):
    c = _config()
    c.data.source = "nope"
    data.make_iterator(c, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="state"):
    data.make_iterator(_config(), process_index=0, process_count=1).set_state({"lanes": 3})


def test_byte_tokenizer_round_trip():
  tok = data.make_tokenizer(_config())
  text = "héllo\n\tworld ✓ \x00"
  ids = tok.encode(text)
  assert len(ids) == len(text.encode()) and min(ids) >= 3 and max(ids) < tok.vocab_size
  assert tok.decode(ids) == text
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 259)
  assert tok.decode([tok.bos_id] + ids[:2] + [tok.eos_id]) == "h\ufffd"  # cut mid-character
