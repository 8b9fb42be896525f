"""Tokenizers: byte-level, SentencePiece (trained here, byte fallback) and HF tokenizer.json."""

import hashlib

import numpy as np
import pytest

from phd_jax import data
from phd_jax.data import train_tokenizer
from run_helpers import tiny_config


TEXTS = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog.",
         "  indented\n\n\ttabs and  double  spaces", "naïve café, 3.14159 and 42"] * 20
UNSEEN = "日本語 🚀 Ωμέγα \x00 end  \n"


def _config(kind, path=""):
  c = tiny_config()
  c.data.tokenizer, c.data.tokenizer_path = kind, path
  return c


def _check_round_trip(tok, texts):
  for text in texts:
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    np.testing.assert_array_equal(tok.encode_batch([text])[0], ids)


def test_byte_tokenizer():
  tok = data.make_tokenizer(_config("byte"))
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 259)
  _check_round_trip(tok, TEXTS + [UNSEEN, ""])
  assert tok.encode("A\u00e9") == [ord("A") + 3, 0xC3 + 3, 0xA9 + 3]
  assert tok.decode([tok.bos_id, 0xC3 + 3, tok.eos_id]) == "\ufffd"  # half a character
  assert tok.decode(tok.encode("\ud800")) == "?"  # a lone surrogate cannot be UTF-8


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("sp") / "sp.model")
  return train_tokenizer.train_sentencepiece(TEXTS, path, vocab_size=384)


def test_sentencepiece_round_trip_with_byte_fallback(sentencepiece_model):
  tok = data.make_tokenizer(_config("sentencepiece", sentencepiece_model))
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 384)
  _check_round_trip(tok, TEXTS[:4] + [UNSEEN, ""])
  assert len(tok.encode(TEXTS[0])) < len(TEXTS[0].encode())  # it learned merges
  byte_pieces = [tok.sp.id_to_piece(i) for i in tok.encode("日")]
  assert byte_pieces == ["<0xE6>", "<0x97>", "<0xA5>"]  # unseen: UTF-8 bytes
  recorded = open(sentencepiece_model + ".sha256").read().split()[0]  # checked on load
  assert recorded == hashlib.sha256(open(sentencepiece_model, "rb").read()).hexdigest()


def test_sentencepiece_checksum_and_vocab_errors(sentencepiece_model, tmp_path):
  copy = tmp_path / "copy.model"
  copy.write_bytes(open(sentencepiece_model, "rb").read())
  (tmp_path / "copy.model.sha256").write_text("0" * 64 + "  copy.model\n")
  with pytest.raises(ValueError, match="does not match"):
    data.make_tokenizer(_config("sentencepiece", str(copy)))
  with pytest.raises(ValueError, match="no such SentencePiece model file"):
    data.make_tokenizer(_config("sentencepiece", str(tmp_path / "missing.model")))
  c = _config("sentencepiece", sentencepiece_model)
  c.model.vocab_size = 256
  with pytest.raises(ValueError, match="has 384 ids, more than model.vocab_size=256"):
    data.make_iterator(c, process_index=0, process_count=1)


def _hf_tokenizer_json(path, specials):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(TEXTS, trainer)
  tok.save(str(path))
  return str(path)


def test_hf_tokenizer_json(tmp_path):
  path = _hf_tokenizer_json(tmp_path / "tokenizer.json", ["<|endoftext|>"])
  tok = data.make_tokenizer(_config("hf", path))
  assert tok.bos_id == tok.eos_id == 0 and tok.pad_id == 0  # GPT-2 style: one special
  _check_round_trip(tok, TEXTS[:4] + [UNSEEN, ""])
  assert tok.decode([tok.bos_id] + tok.encode("fox") + [tok.eos_id]) == "fox"
  path = _hf_tokenizer_json(tmp_path / "llama.json", ["<unk>", "<s>", "</s>"])
  tok = data.make_tokenizer(_config("hf", path))
  assert (tok.bos_id, tok.eos_id) == (1, 2)
  path = _hf_tokenizer_json(tmp_path / "none.json", ["<pad>"])
  with pytest.raises(ValueError, match="no BOS/EOS token"):
    data.make_tokenizer(_config("hf", path))


def test_unknown_tokenizer():
  with pytest.raises(ValueError, match="data.tokenizer must be one of"):
    data.make_tokenizer(_config("wordpiece"))
