"""Helpers shared by the data tests."""

import numpy as np


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    for key in ("tokens", "segment_ids", "positions"):
      np.testing.assert_array_equal(a[key], b[key])
