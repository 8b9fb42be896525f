"""Train a SentencePiece tokenizer on the configured corpus and save it beside the data.

  python -m phd_jax.data.train_tokenizer --config=configs/tiny.py --vocab_size=1024

reads the train split of `config.data` (stdlib or tfds), trains a byte-fallback model with
the project's special ids (0 pad, 1 BOS, 2 EOS, 3 unk) and writes
`<data_dir>/<name>/tokenizers/<version>/sp_<type>_<vocab>.model` (or `--output`) with
`<model>.sha256` beside it, then prints the config overrides that use it. The model is kept
outside the dataset's version folder, so `prepare --overwrite` does not delete it. Text is
kept verbatim (identity normalisation, whitespace and newlines preserved) so
decode(encode(text)) == text.
"""

from __future__ import annotations

import io
import os

import numpy as np

from phd_jax.data import packing, tokenizers

CHUNK_CHARS = 2048  # SentencePiece trains on "sentences": documents cut at newlines


def chunks(text: str, limit: int = CHUNK_CHARS):
  """Pieces of at most ~`limit` characters, cut after newlines where possible."""
  start = 0
  while start < len(text):
    end = min(start + limit, len(text))
    if end < len(text):
      cut = text.rfind("\n", start, end)
      end = cut + 1 if cut > start else end
    yield text[start:end]
    start = end


def train_sentencepiece(texts, output: str, vocab_size: int, model_type: str = "bpe",
                        max_sentences: int = 2_000_000) -> str:
  """Trains on an iterable of documents; writes `output` and `output.sha256`."""
  import sentencepiece as spm
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=(c for t in texts for c in chunks(t)), model_writer=model,
      vocab_size=vocab_size, model_type=model_type, byte_fallback=True,
      pad_id=tokenizers.PAD_ID, bos_id=tokenizers.BOS_ID, eos_id=tokenizers.EOS_ID, unk_id=3,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      add_dummy_prefix=False, allow_whitespace_only_pieces=True, split_digits=True,
      max_sentence_length=4 * CHUNK_CHARS, input_sentence_size=max_sentences,
      shuffle_input_sentence=True, character_coverage=0.9995, num_threads=os.cpu_count(),
      minloglevel=2)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "wb") as f:
    f.write(model.getvalue())
  with open(output + ".sha256", "w") as f:
    f.write(f"{tokenizers.sha256(output)}  {os.path.basename(output)}\n")
  return output


def corpus_texts(docs, max_documents: int, seed: int = 0):
  """Up to `max_documents` documents in a shuffled order."""
  order = packing.DocumentOrder(len(docs), seed)
  count = min(max_documents, len(docs))
  for start in range(0, count, 256):
    yield from docs.texts([order(i) for i in range(start, min(start + 256, count))])


def default_output(dataset_dir: str, model_type: str, vocab_size: int) -> str:
  return os.path.join(tokenizers.tokenizer_dir(dataset_dir),
                      f"sp_{model_type}_{vocab_size}.model")


def main(argv):
  from absl import flags
  from phd_jax.data import sources
  del argv
  f = flags.FLAGS
  config = f.config
  docs = sources.open_documents(config, "train")
  output = f.output or default_output(docs.data_dir, f.model_type, f.vocab_size)
  train_sentencepiece(corpus_texts(docs, f.max_documents), output, f.vocab_size, f.model_type)
  vocab = int(np.ceil(f.vocab_size / 128) * 128)
  print(f"wrote {output} (+ .sha256); train with\n  --config.data.tokenizer=sentencepiece "
        f"--config.data.tokenizer_path={output} --config.model.vocab_size={vocab}")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=False)
  flags.DEFINE_integer("vocab_size", 8192, "number of tokenizer ids")
  flags.DEFINE_enum("model_type", "bpe", ["bpe", "unigram"], "SentencePiece model type")
  flags.DEFINE_integer("max_documents", 1_000_000, "train on at most this many documents")
  flags.DEFINE_string("output", "", "model path (default: beside the dataset)")
  flags.mark_flags_as_required(["config"])
  app.run(main)
