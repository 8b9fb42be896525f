"""Data: `make_iterator(config, split)` yields this process's share of each global batch.

  it = make_iterator(config, split="train")
  batch = next(it)  # numpy int32 "tokens", "segment_ids" (0 = padding), "positions",
                    # each [config.batch_size // process_count, config.seq_len]
  state = it.get_state(); it.set_state(state)  # exact resume (JSON-serialisable)
  it.counters()  # documents, empty_documents, tokens, row_splits, carried_tokens
  it.restriction  # data.train_tokens: the train split's first documents (`restrict`), or None
  tok = make_tokenizer(config)

Sources (`config.data.source`): "synthetic" (a learnable Markov chain over the model's
vocabulary, no files, no tokenizer), "pointer_chase" (a multi-step lookup task, no files,
no tokenizer), "stdlib" (the interpreter's standard library, prepared on first use) and
"tfds" (an array_record dataset `data.name` in `data.data_dir`).

Row r of every global batch is a fixed "lane" of the shuffled document stream (`packing`),
so batches depend on (seed, batch_size, step) only: any process count reads disjoint,
covering shares of the same global batches, and a state saved under N processes resumes
exactly under M (`pipeline`).
"""

from __future__ import annotations

from phd_jax.data import pointer_chase
from phd_jax.data.iterator import BatchIterator
from phd_jax.data.pipeline import PackedSource, merge_states
from phd_jax.data.synthetic import SyntheticSource
from phd_jax.data.tokenizers import check_vocab, make_tokenizer

SOURCES = ("synthetic", "pointer_chase", "stdlib", "tfds")
TOKEN_SOURCES = ("synthetic", "pointer_chase")  # token ids made directly: no text, no files
__all__ = ["make_iterator", "make_tokenizer", "merge_states", "SOURCES", "TOKEN_SOURCES"]


def _processes(process_index, process_count):
  import jax
  real_count = jax.process_count()
  process_index = jax.process_index() if process_index is None else process_index
  process_count = real_count if process_count is None else process_count
  return process_index, process_count, process_count == real_count and real_count > 1


def _check(config, process_index, process_count):
  if config.data.source not in SOURCES:
    raise ValueError(f"data.source must be one of {list(SOURCES)}; got {config.data.source!r}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must lie in [0, {process_count})")
  if config.batch_size % process_count:
    raise ValueError(f"batch_size={config.batch_size} must be divisible by the number of "
                     f"processes ({process_count}): each reads an equal share")
  if config.seq_len <= 0:
    raise ValueError(f"seq_len must be positive; got {config.seq_len}")


def _source(config, split, process_index, process_count, gather):
  shape = dict(seq_len=config.seq_len, global_batch=config.batch_size,
               process_index=process_index, process_count=process_count, seed=config.seed)
  if config.data.source == "synthetic":
    return SyntheticSource(vocab_size=config.model.vocab_size, split=split, **shape)
  if config.data.source == "pointer_chase":
    pointer_chase.check(config)
    return pointer_chase.PointerChaseSource(nodes=config.data.chase_nodes,
                                            hops=config.data.chase_hops,
                                            table=config.data.chase_table, split=split,
                                            **shape)
  from phd_jax.data import sources
  tokenizer = make_tokenizer(config)
  check_vocab(tokenizer, config)
  docs = sources.open_documents(config, split)
  name = sources.dataset_name(config)
  label = f"data.train_split={sources.split_name(config, split)!r} of dataset {name!r}"
  return PackedSource(docs, tokenizer, num_workers=config.data.num_workers,
                      worker_args=(config, split), gather=gather,
                      train_tokens=config.data.train_tokens if split == "train" else 0,
                      split_label=label, **shape)


def make_iterator(config, split: str = "train", process_index: int | None = None,
                  process_count: int | None = None) -> BatchIterator:
  """This process's share of every global batch, in an order fixed by `config.seed`.

  `split` "train" / "validation" read `data.train_split` / `data.eval_split`. Every
  iterator repeats its data forever, reshuffled each epoch. `data.train_tokens` > 0 cuts
  the train split (never the validation split) to its first documents (`restrict`); it
  raises ValueError when the split holds fewer tokens.
  """
  process_index, process_count, gather = _processes(process_index, process_count)
  _check(config, process_index, process_count)
  source = _source(config, split, process_index, process_count, gather)
  return BatchIterator(source, prefetch=config.data.prefetch)
