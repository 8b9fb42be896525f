"""Helpers shared by the data tests."""

import json

import numpy as np

from phd_jax import data


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    for key in ("tokens", "segment_ids", "positions"):
      np.testing.assert_array_equal(a[key], b[key])



def assert_resumes_exactly(config, stop: int, total: int):
  """Restores the JSON state of an iterator stopped after `stop` batches into a fresh one:
  its batches `stop..total` and its counters equal an uninterrupted iterator's. Returns the
  saved state."""
  uninterrupted = data.make_iterator(config, process_index=0, process_count=1)
  full = take(uninterrupted, total)
  it = data.make_iterator(config, process_index=0, process_count=1)
  take(it, stop)
  state = json.loads(json.dumps(it.get_state()))
  resumed = data.make_iterator(config, process_index=0, process_count=1)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, total - stop), full[stop:])
  assert resumed.counters() == uninterrupted.counters()
  for iterator in (uninterrupted, it, resumed):
    iterator.close()
  return state
