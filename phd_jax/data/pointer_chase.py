"""Pointer chasing: a synthetic task whose answers need several lookups in a row.

Each row is one document: a random permutation `f` of `nodes` symbols written as a table,
a separator, then queries `x y` with `y = f^hops(x)` until the row is full. The table has
one of three forms (`data.chase_table`):

  "pairs"        BOS  P(x1,f(x1)) ... P(xN,f(xN))  SEP  q1 f^h(q1)  q2 f^h(q2) ...
  "interleaved"  BOS  x1 f(x1)  x2 f(x2) ... xN f(xN)  SEP  q1 f^h(q1) ...
  "marked"       as interleaved, every value (f(x), answers) in its own id range

"pairs" writes each entry as one token (n^2 pair ids), so a lookup is one attention step
that matches x by content and reads f(x) from the same token: an answer after h hops needs
h such steps one after the other, hence at least h layers. The interleaved forms make a
lookup itself two steps (mark each symbol with its predecessor, then look it up: an
induction head), and with shared ids "the token after x" is also ambiguous (x occurs as
some f(y) too, followed by the next entry's key; only the position's parity tells them
apart). Table order and queries are random (their loss has a floor); answers are
deterministic, and `answer_mask` marks the positions that predict them (accuracy:
`phd_jax.eval.chase`).

Config: `data.source = "pointer_chase"`, `data.chase_nodes`, `data.chase_hops`,
`data.chase_table`. Row `g` at step `s` is a pure function of `(seed, split, s, g)`, as
in `synthetic`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from phd_jax.data.synthetic import SPLITS, SyntheticSource
from phd_jax.data.tokenizers import BOS_ID, FIRST_ID

TABLES = ("pairs", "interleaved", "marked")


@dataclasses.dataclass(frozen=True)
class RowFormat:
  """Where a row's parts sit and which ids they use."""
  nodes: int
  table: str  # one of TABLES

  @property
  def table_tokens(self) -> int:
    return self.nodes if self.table == "pairs" else 2 * self.nodes

  @property
  def value_offset(self) -> int:
    """Added to a symbol's id where it is written as a value."""
    return self.nodes if self.table == "marked" else 0

  @property
  def sep_id(self) -> int:
    return FIRST_ID + self.nodes + self.value_offset

  def pair_id(self, x, y):
    return self.sep_id + 1 + x * self.nodes + y

  @property
  def vocab_needed(self) -> int:
    return self.sep_id + 1 + (self.nodes**2 if self.table == "pairs" else 0)

  @property
  def first_query(self) -> int:
    return 2 + self.table_tokens  # after BOS, the table and SEP

  def queries_per_row(self, seq_len: int) -> int:
    return (seq_len - self.first_query) // 2

  def answer_mask(self, seq_len: int) -> np.ndarray:
    """`[seq_len]` bool: positions whose next token is an answer (the query symbols)."""
    mask = np.zeros(seq_len, bool)
    mask[self.first_query:self.first_query + 2 * self.queries_per_row(seq_len):2] = True
    return mask


def row_format(config) -> RowFormat:
  return RowFormat(config.data.chase_nodes, config.data.chase_table)


def check(config) -> None:
  nodes, hops, table = config.data.chase_nodes, config.data.chase_hops, config.data.chase_table
  if nodes < 2 or hops < 1:
    raise ValueError(f"data.chase_nodes must be >= 2 and data.chase_hops >= 1; got "
                     f"{nodes}, {hops}")
  if table not in TABLES:
    raise ValueError(f"data.chase_table must be one of {TABLES}; got {table!r}")
  fmt = row_format(config)
  if fmt.vocab_needed > config.model.vocab_size:
    raise ValueError(f"data.chase_nodes={nodes} with data.chase_table={table!r} needs "
                     f"model.vocab_size >= {fmt.vocab_needed}; got "
                     f"{config.model.vocab_size}")
  if fmt.queries_per_row(config.seq_len) < 1:
    raise ValueError(f"seq_len={config.seq_len} leaves no room for a query after a table of "
                     f"data.chase_nodes={nodes}; needs seq_len >= {fmt.first_query + 2}")


class PointerChaseSource(SyntheticSource):
  """`next_batch(state) -> (batch, state)` for this process's rows; state `{"step": s}`
  (state handling inherited from `SyntheticSource`)."""

  def __init__(self, *, nodes: int, hops: int, seq_len: int, global_batch: int,
               process_index: int, process_count: int, seed: int, split: str,
               table: str):
    if split not in SPLITS:
      raise ValueError(f"pointer_chase split {split!r} is not one of {sorted(SPLITS)}")
    self.format, self.hops, self.seq_len = RowFormat(nodes, table), hops, seq_len
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
    fmt = self.format
    f = rng.permutation(fmt.nodes)
    order = rng.permutation(fmt.nodes)
    queries = rng.integers(0, fmt.nodes, size=fmt.queries_per_row(self.seq_len))
    answers = queries
    for _ in range(self.hops):
      answers = f[answers]
    if fmt.table == "pairs":
      table = fmt.pair_id(order, f[order])
    else:
      table = FIRST_ID + np.stack([order, f[order] + fmt.value_offset], 1).ravel()
    qa = FIRST_ID + np.stack([queries, answers + fmt.value_offset], 1).ravel()
    row = np.zeros(self.seq_len, np.int32)
    row[0] = BOS_ID
    used = np.concatenate([table, [fmt.sep_id], qa])
    row[1:1 + len(used)] = used
    return row
