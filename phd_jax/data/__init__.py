"""Data: `make_iterator(config, split)` yields this process's share of each global batch.

  it = make_iterator(config, split="train")
  batch = next(it)  # numpy int32 "tokens", "segment_ids" (0 = padding), "positions",
                    # each [config.batch_size // process_count, config.seq_len]
  state = it.get_state(); it.set_state(state)  # exact resume (JSON-serialisable)
  tok = make_tokenizer(config)

Sources (`config.data.source`): "synthetic" (a learnable Markov chain, no files),
"stdlib" (the interpreter's standard library, prepared on first use) and "tfds"
(array_record datasets read without TensorFlow).
"""

from __future__ import annotations

from phd_jax.data.iterator import BatchIterator
from phd_jax.data.synthetic import SyntheticSource
from phd_jax.data.tokenizers import ByteTokenizer

SOURCES = ("synthetic",)
TOKENIZERS = {"byte": lambda config: ByteTokenizer()}


def make_tokenizer(config):
  kind = config.data.tokenizer
  if kind not in TOKENIZERS:
    raise ValueError(f"data.tokenizer must be one of {sorted(TOKENIZERS)}; got {kind!r}")
  return TOKENIZERS[kind](config)


def _processes(process_index, process_count):
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  return process_index, process_count


def _check_shape(config, process_index, process_count):
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must lie in [0, {process_count})")
  if config.batch_size % process_count:
    raise ValueError(f"batch_size={config.batch_size} must be divisible by the number of "
                     f"processes ({process_count}): each reads an equal share")
  if config.seq_len <= 0:
    raise ValueError(f"seq_len must be positive; got {config.seq_len}")


def make_iterator(config, split: str = "train", process_index: int | None = None,
                  process_count: int | None = None) -> BatchIterator:
  """This process's share of every global batch, in an order fixed by `config.seed`."""
  process_index, process_count = _processes(process_index, process_count)
  source_name = config.data.source
  if source_name not in SOURCES:
    raise ValueError(f"data.source must be one of {list(SOURCES)}; got {source_name!r}")
  _check_shape(config, process_index, process_count)
  source = SyntheticSource(
      vocab_size=config.model.vocab_size, seq_len=config.seq_len,
      global_batch=config.batch_size, process_index=process_index,
      process_count=process_count, seed=config.seed, split=split)
  return BatchIterator(source.next_batch, {"step": 0}, prefetch=config.data.prefetch,
                       check_state=source.check_state)
