"""Tokenizers: `.encode(str) -> list[int]`, `.decode(list[int]) -> str`, `.vocab_size`,
`.bos_id`, `.eos_id`, `.pad_id` (0), and `.encode_batch(texts) -> list[np.ndarray]`.

`encode` returns the text's ids only; the pipeline frames every document as
`[BOS] + encode(text) + [EOS]`. Padding is marked by `segment_ids == 0`, so the pad id only
has to be a valid embedding row.

- "byte": 0 = padding, 1 = BOS, 2 = EOS, byte b is id `b + 3` (259 ids; model vocabularies
  pad this up, e.g. to 384). No files.
- "sentencepiece": a model trained by `python -m phd_jax.data.train_tokenizer` with the same
  special ids (0 pad, 1 BOS, 2 EOS, 3 unk) and byte fallback; `<model>.sha256` beside it is
  checked on load. Models trained on a prepared dataset live in `tokenizer_dir(...)`.
- "hf": a Hugging Face `tokenizer.json`. BOS/EOS are the first of its special tokens found in
  `HF_BOS` / `HF_EOS` (GPT-2/NeoX use `<|endoftext|>` for both); id 0 is used as padding.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
FIRST_ID = 3  # the first id that is not a special token (byte 0 for the byte tokenizer)
HF_BOS = ("<|begin_of_text|>", "<s>", "<bos>", "<|endoftext|>", "<|im_start|>")
HF_EOS = ("<|end_of_text|>", "</s>", "<eos>", "<|endoftext|>", "<|im_end|>")


class ByteTokenizer:
  """UTF-8 bytes shifted past the three special ids; invalid UTF-8 decodes as U+FFFD."""

  pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID
  vocab_size = FIRST_ID + 256

  def encode(self, text: str) -> list[int]:
    return self._array(text).tolist()

  def encode_batch(self, texts) -> list[np.ndarray]:
    return [self._array(t) for t in texts]

  def decode(self, ids) -> str:
    data = bytes(i - FIRST_ID for i in ids if FIRST_ID <= i < self.vocab_size)
    return data.decode("utf-8", errors="replace")

  @staticmethod
  def _array(text: str) -> np.ndarray:
    data = text.encode("utf-8", errors="replace")  # lone surrogates become '?'
    return np.frombuffer(data, np.uint8).astype(np.int32) + FIRST_ID


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def tokenizer_dir(dataset_dir: str) -> str:
  """Where tokenizers trained on a prepared dataset (`<data_dir>/<name>/<version>`) go:
  `<data_dir>/<name>/tokenizers/<version>`, outside the version folder that
  `prepare --overwrite` replaces."""
  parent, version = os.path.split(os.path.normpath(dataset_dir))
  return os.path.join(parent, "tokenizers", version)


def _moved(path: str) -> str:
  """Where a model once written inside a dataset's version folder
  (`<name>/<version>/tokenizers/<file>`) is kept now."""
  folder, file = os.path.split(os.path.normpath(path))
  version_dir, leaf = os.path.split(folder)
  return os.path.join(tokenizer_dir(version_dir), file) if leaf == "tokenizers" else ""


def _check_file(path: str, what: str) -> None:
  """The file exists, and its sha256 is the one in `<path>.sha256` when that exists."""
  if not path:
    raise ValueError(f"data.tokenizer_path must name the {what} file")
  if not os.path.isfile(path):
    if (moved := _moved(path)) and os.path.isfile(moved):
      raise ValueError(f"data.tokenizer_path={path!r}: no such {what} file; tokenizers "
                       f"trained on a prepared dataset now live beside its version folder: "
                       f"{moved}")
    raise ValueError(f"data.tokenizer_path={path!r}: no such {what} file")
  if os.path.isfile(path + ".sha256"):
    with open(path + ".sha256") as f:
      expected = f.read().split()[0]
    if expected != (actual := sha256(path)):
      raise ValueError(f"data.tokenizer_path={path!r}: sha256 {actual} does not match "
                       f"{path}.sha256 ({expected}); the file changed since it was trained")


class SentencePieceTokenizer:

  def __init__(self, path: str):
    import sentencepiece as spm
    _check_file(path, "SentencePiece model")
    self.sp = spm.SentencePieceProcessor(model_file=path)
    self.vocab_size = self.sp.get_piece_size()
    self.pad_id, self.bos_id, self.eos_id = self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id()
    if min(self.bos_id, self.eos_id) < 0:
      raise ValueError(f"SentencePiece model {path} has no BOS or EOS id; train it with "
                       "python -m phd_jax.data.train_tokenizer")
    self.pad_id = max(self.pad_id, 0)

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(text)

  def encode_batch(self, texts) -> list[np.ndarray]:
    return [np.asarray(ids, np.int32) for ids in self.sp.encode(list(texts), num_threads=0)]

  def decode(self, ids) -> str:
    return self.sp.decode([int(i) for i in ids if i not in (self.pad_id, self.bos_id,
                                                              self.eos_id)])


class HFTokenizer:

  def __init__(self, path: str):
    import tokenizers
    _check_file(path, "tokenizer.json")
    self.tok = tokenizers.Tokenizer.from_file(path)
    self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
    vocab = self.tok.get_vocab(with_added_tokens=True)
    self.bos_id = next((vocab[t] for t in HF_BOS if t in vocab), None)
    self.eos_id = next((vocab[t] for t in HF_EOS if t in vocab), None)
    if self.bos_id is None or self.eos_id is None:
      raise ValueError(f"{path}: no BOS/EOS token among {HF_BOS} / {HF_EOS}")
    self.pad_id = PAD_ID

  def encode(self, text: str) -> list[int]:
    return self.tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts) -> list[np.ndarray]:
    encodings = self.tok.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, np.int32) for e in encodings]

  def decode(self, ids) -> str:
    return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)


TOKENIZERS = {
    "byte": lambda path: ByteTokenizer(),
    "sentencepiece": SentencePieceTokenizer,
    "hf": HFTokenizer,
}


def make_tokenizer(config):
  kind = config.data.tokenizer
  if kind not in TOKENIZERS:
    raise ValueError(f"data.tokenizer must be one of {sorted(TOKENIZERS)}; got {kind!r}")
  return TOKENIZERS[kind](config.data.tokenizer_path)


def check_vocab(tokenizer, config) -> None:
  """The model's embedding must have a row for every id the tokenizer produces."""
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ValueError(f"the {config.data.tokenizer} tokenizer has {tokenizer.vocab_size} ids, "
                     f"more than model.vocab_size={config.model.vocab_size}")
