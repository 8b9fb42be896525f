"""Pointer chasing: a synthetic task whose answers need several lookups in a row.

Each row is one document: a random permutation `f` of `nodes` symbols written as a table
of `x f(x)` pairs in random order, a separator, then queries `x y` with `y = f^hops(x)`
until the row is full:

  BOS  x1 f(x1)  x2 f(x2) ... xN f(xN)  SEP  q1 f^h(q1)  q2 f^h(q2) ...  [padding]

Each answer needs `hops` lookups of the table, one after the other: a lookup is an
attention step that finds `x` in the table and reads the symbol after it, so a model needs
more layers for more hops and the answers test serial computation per token. Table symbols
and queries are random (their loss has a floor); answers are deterministic, and
`answer_mask` marks the positions that predict them (accuracy: `phd_jax.eval.chase`).

Config: `data.source = "pointer_chase"`, `data.chase_nodes`, `data.chase_hops`. Row `g` at
step `s` is a pure function of `(seed, split, s, g)`, as in `synthetic`.
"""

from __future__ import annotations

import numpy as np

from phd_jax.data.synthetic import SPLITS, SyntheticSource
from phd_jax.data.tokenizers import BOS_ID, FIRST_ID


def sep_id(nodes: int) -> int:
  return FIRST_ID + nodes


def queries_per_row(seq_len: int, nodes: int) -> int:
  return (seq_len - 2 - 2 * nodes) // 2


def answer_mask(seq_len: int, nodes: int) -> np.ndarray:
  """`[seq_len]` bool: positions whose next token is an answer (the query symbols)."""
  first_query = 2 + 2 * nodes
  mask = np.zeros(seq_len, bool)
  mask[first_query:first_query + 2 * queries_per_row(seq_len, nodes):2] = True
  return mask


def check(config) -> None:
  nodes, hops = config.data.chase_nodes, config.data.chase_hops
  if nodes < 2 or hops < 1:
    raise ValueError(f"data.chase_nodes must be >= 2 and data.chase_hops >= 1; got "
                     f"{nodes}, {hops}")
  if sep_id(nodes) >= config.model.vocab_size:
    raise ValueError(f"data.chase_nodes={nodes} needs model.vocab_size > {sep_id(nodes)}; "
                     f"got {config.model.vocab_size}")
  if queries_per_row(config.seq_len, nodes) < 1:
    raise ValueError(f"seq_len={config.seq_len} leaves no room for a query after a table of "
                     f"data.chase_nodes={nodes}; needs seq_len >= {2 * nodes + 4}")


class PointerChaseSource(SyntheticSource):
  """`next_batch(state) -> (batch, state)` for this process's rows; state `{"step": s}`
  (state handling inherited from `SyntheticSource`)."""

  def __init__(self, *, nodes: int, hops: int, seq_len: int, global_batch: int,
               process_index: int, process_count: int, seed: int, split: str):
    if split not in SPLITS:
      raise ValueError(f"pointer_chase split {split!r} is not one of {sorted(SPLITS)}")
    self.nodes, self.hops, self.seq_len = nodes, hops, seq_len
    self.rows = global_batch // process_count
    self.first_row = process_index * self.rows
    self.seed, self.split_id = seed, SPLITS[split]

  def next_batch(self, state):
    step = state["step"]
    rows = [self._row(np.random.default_rng([self.seed, self.split_id, step,
                                             self.first_row + i, 17]))
            for i in range(self.rows)]
    tokens = np.stack(rows)
    segment_ids = (tokens != 0).astype(np.int32)
    positions = np.where(segment_ids, np.arange(self.seq_len, dtype=np.int32), 0)
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}, \
        {"step": step + 1}

  def _row(self, rng) -> np.ndarray:
    n = self.nodes
    f = rng.permutation(n)
    order = rng.permutation(n)
    queries = rng.integers(0, n, size=queries_per_row(self.seq_len, n))
    answers = queries
    for _ in range(self.hops):
      answers = f[answers]
    symbols = np.concatenate([np.stack([order, f[order]], 1).ravel(), [n],
                              np.stack([queries, answers], 1).ravel()])
    row = np.zeros(self.seq_len, np.int32)
    row[0] = BOS_ID
    row[1:1 + len(symbols)] = FIRST_ID + symbols
    return row
