"""Packing documents into rows of T tokens, one lane of documents per row of the batch.

Row `r` of every global batch is filled from its own lane: the documents at positions
`r, r + B, r + 2B, ...` of the shuffled document stream (B = global batch size). Documents
are concatenated; one that does not fit the rest of the row is split and its tail continues
at the start of the lane's next row. Nothing is dropped and no row is padded; the split
cuts are counted: `row_splits` (documents cut at a row end; each costs the one target
across the cut) and `carried_tokens` (tokens placed in a row because they did not fit the
lane's previous row: they are trained on without their document's beginning).

Each piece of a document in a row is its own segment (ids 1, 2, ... in the row) with
positions restarting at 0, so the model sees a piece exactly as if it ran alone. A lane's
state is `(j, offset)`: the lane's next document and how many of its tokens are already
used; rows are a pure function of it.
"""

from __future__ import annotations

import numpy as np

COUNTERS = ("documents", "empty_documents", "tokens", "row_splits", "carried_tokens")


class DocumentOrder:
  """Stream position -> document index: every epoch is a fresh permutation of `n` docs."""

  def __init__(self, n: int, seed: int):
    self.n, self.seed = n, seed

  def __call__(self, i: int) -> int:
    # grain is imported here, not with the module: `phd_jax.data` (the source names the
    # config checks, the token sources) imports where grain is absent (accelerator images)
    from grain.experimental import index_shuffle  # pylint: disable=import-outside-toplevel
    epoch, k = divmod(i, self.n)
    if self.n == 1:
      return 0
    return int(index_shuffle(k, max_index=self.n - 1, seed=(self.seed + epoch) % 2**32,
                             rounds=4))


def stream_index(lane: int, j: int, global_batch: int) -> int:
  return lane + global_batch * j


class RowFiller:
  """Fills one row from a lane's documents, fed one at a time by `feed`."""

  def __init__(self, seq_len: int, j: int, offset: int, num_documents: int):
    self.tokens = np.zeros(seq_len, np.int32)
    self.segment_ids = np.zeros(seq_len, np.int32)
    self.positions = np.zeros(seq_len, np.int32)
    self.j, self.offset = j, offset
    self.filled, self.segment = 0, 0
    self.counters = dict.fromkeys(COUNTERS, 0)
    self._empty_run, self._num_documents = 0, num_documents

  @property
  def full(self) -> bool:
    return self.filled == len(self.tokens)

  def feed(self, doc_tokens: np.ndarray) -> None:
    """Consumes (part of) document `self.j`, framed as `[BOS] + ids + [EOS]`."""
    if len(doc_tokens) == 0:  # an empty document: skip and count
      self.counters["empty_documents"] += 1
      self._empty_run += 1
      if self._empty_run > self._num_documents:
        raise ValueError(f"all {self._num_documents} documents of the dataset are empty")
      self.j, self.offset = self.j + 1, 0
      return
    self._empty_run = 0
    piece = doc_tokens[self.offset:self.offset + len(self.tokens) - self.filled]
    end = self.filled + len(piece)
    self.segment += 1
    self.tokens[self.filled:end] = piece
    self.segment_ids[self.filled:end] = self.segment
    self.positions[self.filled:end] = np.arange(len(piece))
    self.filled = end
    self.counters["tokens"] += len(piece)
    if self.offset:
      self.counters["carried_tokens"] += len(piece)
    if self.offset + len(piece) == len(doc_tokens):
      self.counters["documents"] += 1
      self.j, self.offset = self.j + 1, 0
    else:
      self.counters["row_splits"] += 1
      self.offset += len(piece)
