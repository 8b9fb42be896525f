"""Input pipeline throughput next to the train step's appetite, in tokens per second.

  python bench/data.py                                  # tiny config, CPU-sized
  python bench/data.py --seq_len=4096 --batch_size=64 --num_workers=8 --no-train_step

Rows: the synthetic source, and the stdlib corpus through the byte-level and a SentencePiece
tokenizer (trained on the stdlib train split on first use, --sp_vocab ids, cached next to
the data). Each number is this process's batches produced per second times their tokens,
without prefetch (the trainer's prefetch thread overlaps it with the step). The last column
is the train step of the same config (tiny model by default) on this machine: the pipeline
keeps up while its column is larger.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from phd_jax import config as config_lib
from phd_jax import data
from phd_jax.data import sources, train_tokenizer

from common import config_path  # a sibling in bench/


def pipeline_tokens_per_s(config, steps: int) -> float:
  it = data.make_iterator(config, process_index=0, process_count=1)
  next(it)  # opens files, starts workers
  start = time.perf_counter()
  for _ in range(steps):
    next(it)
  seconds = time.perf_counter() - start
  it.close()
  return steps * config.batch_size * config.seq_len / seconds


def train_step_tokens_per_s(config, steps: int) -> float:
  import jax
  from phd_jax import train
  training = train.setup(config)
  state = training.init()
  it = data.make_iterator(config, process_index=0, process_count=1)
  batches = [training.global_batch(next(it)) for _ in range(steps + 2)]
  for batch in batches[:2]:  # compile
    state, metrics = training.step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for batch in batches[2:]:
    state, metrics = training.step(state, batch)
  jax.block_until_ready(metrics)
  return steps * config.batch_size * config.seq_len / (time.perf_counter() - start)


def sentencepiece_model(config, vocab_size: int) -> str:
  docs = sources.open_documents(config, "train")
  path = os.path.join(docs.data_dir, "tokenizers", f"sp_bpe_{vocab_size}.model")
  if not os.path.isfile(path):
    print(f"training {path} (first use)", flush=True)
    train_tokenizer.train_sentencepiece(train_tokenizer.corpus_texts(docs, len(docs)), path,
                                        vocab_size)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seq_len", type=int, default=0, help="default: the tiny config's")
  parser.add_argument("--batch_size", type=int, default=0, help="default: the tiny config's")
  parser.add_argument("--num_workers", type=int, default=0)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--sp_vocab", type=int, default=1024)
  parser.add_argument("--data_dir", default="", help="stdlib cache (default: the usual)")
  parser.add_argument("--train_step", action=argparse.BooleanOptionalAction, default=True)
  args = parser.parse_args()

  def config(source, tokenizer="byte", path=""):
    c = config_lib.load_config(config_path("tiny"))
    c.seq_len = args.seq_len or c.seq_len
    c.batch_size = args.batch_size or c.batch_size
    c.data.source, c.data.tokenizer, c.data.tokenizer_path = source, tokenizer, path
    c.data.num_workers, c.data.prefetch, c.data.data_dir = args.num_workers, 0, args.data_dir
    if tokenizer == "sentencepiece":
      c.model.vocab_size = int(np.ceil(args.sp_vocab / 128) * 128)
    config_lib.validate(c)
    return c

  rows = [("synthetic", "-", config("synthetic")), ("stdlib", "byte", config("stdlib"))]
  sp_path = sentencepiece_model(config("stdlib"), args.sp_vocab)
  rows.append(("stdlib", f"sentencepiece {args.sp_vocab}",
               config("stdlib", "sentencepiece", sp_path)))
  c = rows[0][2]
  print(f"batch {c.batch_size} x seq_len {c.seq_len}, workers {args.num_workers}, "
        f"{args.steps} batches each")
  print("| source | tokenizer | pipeline tokens/s | train step tokens/s | pipeline / step |")
  print("|---|---|---|---|---|")
  for source, tokenizer, c in rows:
    produced = pipeline_tokens_per_s(c, args.steps)
    if args.train_step:
      consumed = train_step_tokens_per_s(c, 10)
      step_cols = f"{consumed:,.0f} | {produced / consumed:.1f}x"
    else:
      step_cols = "- | -"
    print(f"| {source} | {tokenizer} | {produced:,.0f} | {step_cols} |", flush=True)


if __name__ == "__main__":
  main()
