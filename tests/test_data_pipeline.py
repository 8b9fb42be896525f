"""Prepared tfds corpora through the packing pipeline: round trip, packing, order, resume,
host shares, workers and bad input. Uses a small corpus written by the test."""

import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from data_helpers import assert_batches_equal, assert_resumes_exactly, take
from phd_jax import config as config_lib
from phd_jax import data
from phd_jax.data import packing, stdlib_corpus, text_files
from phd_jax.masks import parse_variant
from phd_jax.model import ModelConfig, Transformer
from run_helpers import tiny_config


SEQ_LEN, BATCH = 32, 4


def _documents(n=24):
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "γάμμα", "δ", "échec", "naïve", "✓", "\n", "  ", "x=1;"]
  return [" ".join(rng.choice(words, size=rng.integers(1, 25))) for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """Text files, JSONL and parquet (with an empty document and invalid UTF-8), prepared."""
  root = tmp_path_factory.mktemp("corpus")
  docs = _documents()
  for i, text in enumerate(docs[:6]):
    (root / f"doc{i}.txt").write_text(text, encoding="utf-8")
  (root / "bad.txt").write_bytes(b"caf\xe9 ok \xff")  # invalid UTF-8
  (root / "blank.txt").write_bytes(b"")  # its key puts it in the train split
  with open(root / "part.jsonl", "w") as f:
    for text in docs[6:15]:
      f.write(json.dumps({"text": text, "id": 1}) + "\n")
  pq.write_table(pa.table({"text": docs[15:], "n": list(range(len(docs) - 15))}),
                 root / "part.parquet")
  data_dir = str(root / "tfds")
  files = text_files.expand([str(root / "*")])
  builder = text_files.make_builder("tiny_corpus", data_dir, {"train": files},
                                    validation_percent=25)
  text_files.prepare(builder, progress=False)
  expected = {}  # split -> {key: text}
  for path, key in files:
    for doc_key, text in text_files.read_documents(path, "text", key, {}):
      expected.setdefault(text_files.holdout_split(doc_key, 25), {})[doc_key] = text
  return dict(root=root, data_dir=data_dir, expected=expected, builder=builder)


def _config(corpus, **data_fields):
  c = tiny_config()
  c.seq_len, c.batch_size = SEQ_LEN, BATCH
  c.data.source, c.data.name, c.data.data_dir = "tfds", "tiny_corpus", corpus["data_dir"]
  c.data.prefetch = 0
  for k, v in data_fields.items():
    c.data[k] = v
  return c


def _framed(text):
  return [1] + [b + 3 for b in text.encode("utf-8")] + [2] if text else []


def test_prepare_round_trip(corpus):
  for split, expected in corpus["expected"].items():
    source = tfds.data_source("tiny_corpus", split=split, data_dir=corpus["data_dir"])
    got = {r["source"].decode(): r["text"].decode() for r in source}
    assert got == expected
  train = corpus["expected"]["train"]
  assert len(corpus["expected"]["validation"]) >= 3 and len(train) >= 15
  everything = {**train, **corpus["expected"]["validation"]}
  assert everything["bad.txt"] == "caf\ufffd ok \ufffd"
  assert sorted(everything.values())[0] == ""  # the empty document is kept
  assert set(_documents()) <= set(everything.values())


@pytest.mark.slow
def test_prepare_command_and_missing_field(corpus, tmp_path):
  cmd = [sys.executable, "-m", "phd_jax.data.prepare", "--name=cli_corpus",
         f"--data_dir={tmp_path}", f"--train={corpus['root']}/*.jsonl",
         f"--validation={corpus['root']}/doc*.txt"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "train: 9 documents" in out.stdout and "validation: 6 documents" in out.stdout
  with pytest.raises(ValueError, match=r"part.jsonl:1: no field 'body'; the record has \['id', 'text'\]"):
    list(text_files.read_documents(str(corpus["root"] / "part.jsonl"), "body", "k", {}))
  with pytest.raises(ValueError, match=r"no column 'body'; it has \['text', 'n'\]"):
    list(text_files.read_documents(str(corpus["root"] / "part.parquet"), "body", "k", {}))


def test_missing_dataset_split_field(corpus):
  with pytest.raises(ValueError, match=r"'nope'.*found: \['tiny_corpus:1.0.0'\]"):
    data.make_iterator(_config(corpus, name="nope"), process_index=0, process_count=1)
  with pytest.raises(ValueError, match=r"no split 'dev'; it has \['train', 'validation'\]"):
    data.make_iterator(_config(corpus, eval_split="dev"), "validation", 0, 1)
  with pytest.raises(ValueError, match=r"no field data.text_field='body'; it has \['source', 'text'\]"):
    data.make_iterator(_config(corpus, text_field="body"), process_index=0, process_count=1)


def test_packing_is_exact(corpus):
  """Each row's lane, concatenated over steps, is exactly the lane's framed documents."""
  c = _config(corpus)
  it = data.make_iterator(c, process_index=0, process_count=1)
  steps = 30  # several epochs of this small corpus
  batches = take(it, steps)
  texts = [r["text"].decode() for r in
           tfds.data_source("tiny_corpus", split="train", data_dir=corpus["data_dir"])]
  order = packing.DocumentOrder(len(texts), c.seed)
  assert sorted(order(i) for i in range(len(texts))) == list(range(len(texts)))
  assert [order(i) for i in range(len(texts))] != [order(i) for i in range(len(texts), 2 * len(texts))]
  for lane in range(BATCH):
    stream = np.concatenate([b["tokens"][lane] for b in batches])
    expected, j = [], 0
    while len(expected) < len(stream):
      expected += _framed(texts[order(packing.stream_index(lane, j, BATCH))])
      j += 1
    np.testing.assert_array_equal(stream, expected[:len(stream)])
  for b in batches:
    for tokens, seg, pos in zip(b["tokens"], b["segment_ids"], b["positions"]):
      assert (seg > 0).all()  # continuation packing never pads
      starts = np.flatnonzero(np.diff(seg, prepend=0))
      assert list(seg[starts]) == list(range(1, len(starts) + 1))
      for start, end in zip(starts, list(starts[1:]) + [SEQ_LEN]):
        np.testing.assert_array_equal(pos[start:end], np.arange(end - start))
      assert (tokens[starts[1:]] == 1).all()  # only the first piece may be a continuation
  counters = it.counters()
  assert counters["tokens"] == steps * BATCH * SEQ_LEN
  assert counters["empty_documents"] >= 1 and counters["documents"] > len(texts)
  cuts = sum(int((b["tokens"][:, 0] != 1).sum()) for b in batches[1:])  # continued rows
  assert counters["row_splits"] >= cuts > 0


def test_same_seed_same_batches(corpus):
  c = _config(corpus)
  a = take(data.make_iterator(c, process_index=0, process_count=1), 4)
  assert_batches_equal(a, take(data.make_iterator(c, process_index=0, process_count=1), 4))
  c.seed = 1
  b = take(data.make_iterator(c, process_index=0, process_count=1), 4)
  assert not all(np.array_equal(x["tokens"], y["tokens"]) for x, y in zip(a, b))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_mid_epoch_equals_uninterrupted(corpus, prefetch):
  c = _config(corpus, prefetch=prefetch)
  for stop in (3, 8):  # inside the first epoch and after it
    assert_resumes_exactly(c, stop, 12)


def test_host_shares_cover_and_host_count_changes(corpus):
  c = _config(corpus)
  c.batch_size = 8
  full = take(data.make_iterator(c, process_index=0, process_count=1), 9)
  hosts = [data.make_iterator(c, process_index=p, process_count=2) for p in range(2)]
  for step in range(4):
    shares = [next(h) for h in hosts]
    for key in ("tokens", "segment_ids", "positions"):
      np.testing.assert_array_equal(np.concatenate([s[key] for s in shares]), full[step][key])
  state = data.merge_states([h.get_state() for h in hosts])
  assert all(lane is not None for lane in state["lanes"])
  for count in (4, 1):  # resume the 2-process state on 4 processes and on 1
    resumed = [data.make_iterator(c, process_index=p, process_count=count) for p in range(count)]
    for r in resumed:
      r.set_state(state)
    for step in range(4, 9):
      got = np.concatenate([next(r)["tokens"] for r in resumed])
      np.testing.assert_array_equal(got, full[step]["tokens"])
  with pytest.raises(ValueError, match="lacks rows"):
    data.make_iterator(c, process_index=1, process_count=2).set_state(hosts[0].get_state()
                                                                       | {"lanes": [None] * 8})


def test_export_gathers_all_processes(corpus, monkeypatch):
  """Under jax.distributed, every process's exported state is the merged global state."""
  from jax.experimental import multihost_utils
  hosts = [data.make_iterator(_config(corpus), process_index=p, process_count=2)
           for p in range(2)]
  for h in hosts:
    take(h, 3)
  hosts[0]._state["counters"]["tokens"] += 2**40  # must survive the int32 halves
  local = [h.get_state() for h in hosts]
  sent = []
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: sent.append(x) or np.stack([x, x]))
  for h in hosts:
    h._source._gather = True
    h.get_state()
  monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: np.stack(sent))
  for h in hosts:
    assert h.get_state() == data.merge_states(local)


def test_workers_match_in_process(corpus):
  c = _config(corpus)
  expected = take(data.make_iterator(c, process_index=0, process_count=1), 5)
  c.data.num_workers = 2
  it = data.make_iterator(c, process_index=0, process_count=1)
  assert_batches_equal(take(it, 5), expected)
  it.close()


def test_stdlib_corpus_prepares_and_splits_by_path(tmp_path):
  files = stdlib_corpus.source_files()
  relative = [rel for _, rel in files]
  assert len(files) > 300 and "os.py" in relative
  assert not any("test" in rel.split(os.sep)[:-1] or os.path.basename(rel).startswith("test_")
                 for rel in relative)
  c = tiny_config()
  c.data.data_dir = str(tmp_path)
  c.seq_len, c.batch_size = 64, 2
  val = next(data.make_iterator(c, "validation", process_index=0, process_count=1))
  source = tfds.data_source(stdlib_corpus.NAME, split="validation", data_dir=str(tmp_path))
  names = sorted(r["source"].decode() for r in source)
  assert names == sorted(rel for rel in relative
                         if zlib.crc32(rel.encode()) % 10_000 < stdlib_corpus.VALIDATION_PERCENT * 100)
  assert val["tokens"].shape == (2, 64) and (val["tokens"][:, 0] == 1).all()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["Vanilla", "PHD-CSWA-2-2-4"])
@pytest.mark.parametrize("source", ["synthetic", "tfds"])
def test_packed_batch_through_model_equals_documents_alone(corpus, source, variant):
  """Each piece's logits in the packed rows equal the model run on that piece alone.

  "Alone" puts the piece first in an otherwise meaningless row without segment ids: the
  model is causal, so its first logits depend on the piece only.
  """
  c = _config(corpus, source=source)
  batch = next(b for b in data.make_iterator(c, process_index=0, process_count=1)
               if b["segment_ids"].max() > 2)  # rows that hold several documents
  cfg = ModelConfig(vocab_size=384, d_model=32, num_layers=2, num_heads=2, num_kv_heads=1,
                    head_dim=16, mlp_dim=64, rope_theta=10_000.0)
  model = Transformer(cfg, parse_variant(variant), rngs=nnx.Rngs(0))
  forward = nnx.jit(lambda m, *args: m(*args))
  packed = np.asarray(forward(model, batch["tokens"], batch["segment_ids"], batch["positions"]))
  pieces = [(row, np.flatnonzero(batch["segment_ids"][row] == s))
            for row in range(BATCH) for s in range(1, batch["segment_ids"][row].max() + 1)]
  alone_rows = np.full((len(pieces), SEQ_LEN), 7, np.int32)
  for n, (row, where) in enumerate(pieces):
    alone_rows[n, :len(where)] = batch["tokens"][row, where]
  alone = np.asarray(forward(model, alone_rows))
  for n, (row, where) in enumerate(pieces):
    np.testing.assert_allclose(packed[row, where], alone[n, :len(where)], atol=2e-5, rtol=2e-5)


def test_validation_refuses_a_missing_eval_split_at_startup(corpus):
  config = _config(corpus, eval_split="dev")
  config.batch_size = 8  # one row per fake device
  with pytest.raises(config_lib.ConfigError, match=r"data.eval_split='dev': .*no split 'dev'"):
    config_lib.validate(config)
  config.data.eval_split = "validation"
  config_lib.validate(config)
