"""prepare: bad JSONL records are skipped and counted by kind and named by file:line, a
null text is an empty document, non-string texts are refused, never stringified; trained
tokenizers survive `--overwrite`."""

import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from phd_jax.data import sources, text_files, tokenizers, train_tokenizer

# (raw line, the document it holds or the kind of bad record it is)
LINES = [
    ('{"text": "first"}', "first"),
    ('{"text": "cut', "not_json"),
    ('["a", "b"]', "not_object"),
    ('"just a string"', "not_object"),
    ('{"text": null}', ""),
    ('{"text": 12345}', "not_string"),
    ('{"text": ["a", "b"]}', "not_string"),
    ('{"text": {"a": 1}}', "not_string"),
    ('{"text": true}', "not_string"),
    ('{"text": "x \\ud800 y"}', "lone_surrogate"),
    ('{"text": "last \\u00e9"}', "last é"),
]
KINDS = {"not_json", "not_object", "not_string", "lone_surrogate"}


def write_corpus(root):
  root.mkdir(exist_ok=True)
  (root / "c.jsonl").write_text("\n".join(line for line, _ in LINES) + "\n\n")
  (root / "v.txt").write_text("held out")
  return root


def test_bad_jsonl_records_are_skipped_counted_and_named(tmp_path):
  root = write_corpus(tmp_path / "corpus")
  builder = text_files.make_builder("bad_lines", str(tmp_path / "tfds"),
                                    {"train": text_files.expand([str(root / "*.jsonl")]),
                                     "validation": text_files.expand([str(root / "*.txt")])})
  text_files.prepare(builder, progress=False)
  texts = [r["text"].decode() for r in tfds.data_source("bad_lines", split="train",
                                                        data_dir=str(tmp_path / "tfds"))]
  assert sorted(texts) == sorted(doc for _, doc in LINES if doc not in KINDS)
  expected_bad = {}
  for _, doc in LINES:
    if doc in KINDS:
      expected_bad[doc] = expected_bad.get(doc, 0) + 1
  assert builder.stats["all"]["bad"] == expected_bad
  assert builder.stats["all"]["documents"] == 4 and builder.stats["all"]["empty"] == 1
  lines = text_files.summary(builder.stats)
  assert "  skipped 8 bad records (all): 1 lone_surrogate, 1 not_json, 2 not_object, " \
         "4 not_string" in lines
  named = [line for line in lines if line.startswith("    ")]
  assert named[0].startswith(f"    {root / 'c.jsonl'}:2: not_json (")
  assert named[1] == f"    {root / 'c.jsonl'}:3: not_object (a JSON list, not an object)"
  assert named[3] == f"    {root / 'c.jsonl'}:6: not_string ('text' is a JSON int, not a string)"
  assert named[5] == "    ... and 3 more"


def test_bad_records_are_counted_once_with_a_hash_split(tmp_path):
  root = write_corpus(tmp_path / "corpus")
  (root / "more.jsonl").write_text("".join(f'{{"text": "doc {i}"}}\n' for i in range(20)))
  builder = text_files.make_builder("bad_split", str(tmp_path / "tfds"),
                                    {"train": text_files.expand([str(root / "*.jsonl")])},
                                    validation_percent=50)
  text_files.prepare(builder, progress=False)
  bad = [sum(counts.get("bad", {}).values()) for counts in builder.stats.values()]
  assert sorted(builder.stats) == ["train", "validation"] and sum(bad) == 8


def test_parquet_text_column_must_hold_strings(tmp_path):
  pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
  with pytest.raises(ValueError, match=r"n.parquet: column 'text' holds int64, not strings"):
    list(text_files.read_documents(str(tmp_path / "n.parquet"), "text", "n", {}))


def test_trained_tokenizers_survive_overwrite(tmp_path, capsys):
  root = tmp_path / "corpus"
  root.mkdir()
  texts = [f"document {i}: some words, repeated words\n" * 8 for i in range(30)]
  for i, text in enumerate(texts):
    (root / f"{i}.txt").write_text(text)
  data_dir = str(tmp_path / "tfds")

  def prepared(**kwargs):
    builder = text_files.make_builder("keep_tok", data_dir, {"train": text_files.expand(
        [str(root / "*.txt")])}, validation_percent=20)
    text_files.prepare(builder, progress=False, **kwargs)
    return builder.data_dir

  dataset_dir = prepared()
  model = train_tokenizer.train_sentencepiece(
      texts, train_tokenizer.default_output(dataset_dir, "bpe", 300), vocab_size=300)
  old = os.path.join(dataset_dir, "tokenizers", "old.model")  # where models used to go
  os.makedirs(os.path.dirname(old))
  shutil.copy(model, old)
  shutil.copy(model + ".sha256", old + ".sha256")

  assert prepared(overwrite=True) == dataset_dir
  moved = os.path.join(os.path.dirname(model), "old.model")
  assert f"to {os.path.dirname(moved)}" in capsys.readouterr().out
  for path in (model, moved):
    assert tokenizers.SentencePieceTokenizer(path).encode(texts[0])
  with pytest.raises(ValueError, match=f"no such SentencePiece model file; .* now live beside "
                     f"its version folder: {moved}"):
    tokenizers.SentencePieceTokenizer(old)
  assert sources.available_datasets(data_dir) == ["keep_tok:1.0.0"]
  assert len(tfds.data_source("keep_tok", split="train", data_dir=data_dir)) > 0
