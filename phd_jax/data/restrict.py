"""Data-constrained training: the train split cut to its first `data.train_tokens` tokens.

`data.train_tokens` = U (0: the whole split) keeps the split's first documents in their
stored order, whole, up to and including the one that brings the total to U or more: the
smallest prefix of whole documents holding at least U tokens. Tokens are counted as they
are trained on, framed `[BOS] + ids + [EOS]` by the run's tokenizer (empty documents count
0 and are skipped by the packing), so `Restriction.tokens` (>= U, by less than one
document) is exactly what one epoch trains on; the trainer prints it at startup and writes
it to config.json as `data.train_tokens_exact`. A U beyond what the split holds is refused
in one line naming the field, its value and the split's size. Finding the prefix tokenizes
the split's first ~U tokens once per process (in the `data.num_workers` processes when set):
the pipeline's order needs the prefix's document count before its first batch.

Only the train split of document sources (stdlib, tfds) is restricted: the validation split
never is, and the token sources (synthetic, pointer_chase) draw fresh samples every step,
so they have no "first U tokens" (`config.validate` refuses the pair). The kept documents
then flow through the unchanged pipeline: each epoch is a fresh permutation of them
(`packing.DocumentOrder`), every process reads its lanes of the same restricted stream, and
a saved data state records the document count, so resuming under another U is refused.

Epochs seen: packed rows are never padded, so after s steps the run has consumed exactly
s * batch_size * seq_len tokens of the restricted stream, and `epochs(s)` is that over
`tokens`: a pure function of the step (the data state's and the train state's), hence equal
after a resume, never an accumulated float. Lanes move through the stream side by side, so
epoch e of the shuffled order ends at slightly different steps in different rows; the
token ratio is the standard count (tokens trained on / unique tokens).
"""

from __future__ import annotations

import dataclasses

CHUNK = 1024  # documents tokenized per read while looking for the prefix's end


@dataclasses.dataclass(frozen=True)
class Restriction:
  train_tokens: int  # U asked for (`data.train_tokens`)
  documents: int  # the split's first `documents` documents, in stored order
  tokens: int  # their framed tokens: what one epoch trains on

  def epochs(self, steps: int, tokens_per_step: int) -> float:
    """Epochs seen after `steps` steps of `tokens_per_step` (batch_size * seq_len) tokens."""
    return steps * tokens_per_step / self.tokens

  def __str__(self) -> str:
    return (f"data.train_tokens={self.train_tokens}: the train split's first "
            f"{self.documents} documents, {self.tokens} tokens per epoch")


def first_documents(load, num_documents: int, train_tokens: int,
                    split_label: str) -> Restriction:
  """The smallest prefix of whole documents with at least `train_tokens` tokens.

  `load(indices)` returns the framed token arrays of documents (`pipeline.load_tokens`);
  `split_label` names the split in the refusal of a `train_tokens` larger than it.
  """
  documents, tokens = 0, 0
  while tokens < train_tokens:
    if documents == num_documents:
      raise ValueError(f"data.train_tokens={train_tokens} is more than the train split holds: "
                       f"{split_label} has {tokens} tokens in {num_documents} documents")
    for framed in load(list(range(documents, min(documents + CHUNK, num_documents)))):
      documents, tokens = documents + 1, tokens + len(framed)
      if tokens >= train_tokens:
        break
  return Restriction(train_tokens, documents, tokens)
