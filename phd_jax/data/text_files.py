"""Local text, JSONL or parquet files as a tfds dataset in array_record format.

`make_builder(name, data_dir, {split: expand(globs)})` then `prepare(builder)` writes one
(the `phd_jax.data.prepare` command and the embedded `stdlib` corpus both do). Every
`.jsonl` line and parquet row is a document (its `text_field`); any other file is one
document. Invalid UTF-8 is replaced (U+FFFD), a null text is an empty document, and empty
documents are kept (the pipeline skips and counts them). JSONL lines that are not JSON, not
an object, whose text is not a string (a number, list, object) or holds a lone surrogate
are skipped and counted by kind (`summary` names the first few by file:line). Without a
validation split, `validation_percent` of the documents, chosen by a hash of their key
(file path relative to the glob's directory, and line or row), form it. Writing needs no
TensorFlow: tfds serialises the examples itself and writes them with array_record.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import shutil
import types
import zlib

import tensorflow_datasets as tfds

from phd_jax.data import tokenizers

FEATURES = ("text", "source")  # the document, and where it came from (file[:line])
MAX_NAMED = 5  # bad records named in the summary, per split


class Rejected(collections.namedtuple("Rejected", "kind where reason")):
  """A JSONL line that is not a document: skipped and counted by `kind`."""


def holdout_split(key: str, validation_percent: float) -> str:
  """Deterministic split of a document by the crc32 of its key."""
  in_validation = zlib.crc32(key.encode()) % 10_000 < validation_percent * 100
  return "validation" if in_validation else "train"


def _decode(data: bytes, stats: dict) -> str:
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError:
    stats["invalid_utf8"] = stats.get("invalid_utf8", 0) + 1
    return data.decode("utf-8", errors="replace")


def _jsonl_text(line: str, text_field: str, where: str):
  """The document of one JSONL line, or why it is not one (`Rejected`)."""
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    return Rejected("not_json", where, str(e))
  if not isinstance(record, dict):
    return Rejected("not_object", where, f"a JSON {type(record).__name__}, not an object")
  if text_field not in record:
    raise ValueError(f"{where}: no field {text_field!r}; the record has {sorted(record)}")
  text = record[text_field]
  if text is None:
    return ""
  if not isinstance(text, str):
    return Rejected("not_string", where, f"{text_field!r} is a JSON "
                    f"{type(text).__name__}, not a string")
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    return Rejected("lone_surrogate", where, f"{text_field!r} holds a lone surrogate "
                    f"{text[e.start]!r} at character {e.start}")
  return text


def read_documents(path: str, text_field: str, key: str, stats: dict):
  """Yields `(key, text)` for every document of one file; `text` is a `Rejected` for a
  JSONL line that holds no document."""
  if path.endswith(".jsonl"):
    with open(path, "rb") as f:
      for line_no, line in enumerate(f, 1):
        if line.strip():
          yield f"{key}:{line_no}", _jsonl_text(_decode(line, stats), text_field,
                                                f"{path}:{line_no}")
  elif path.endswith(".parquet"):
    import pyarrow as pa
    import pyarrow.parquet as pq
    parquet = pq.ParquetFile(path)
    columns = parquet.schema_arrow.names
    if text_field not in columns:
      raise ValueError(f"{path}: no column {text_field!r}; it has {columns}")
    kind = parquet.schema_arrow.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
      raise ValueError(f"{path}: column {text_field!r} holds {kind}, not strings")
    row = 0
    for batch in parquet.iter_batches(columns=[text_field]):
      for text in batch.column(0).to_pylist():
        yield f"{key}:{row}", text or ""
        row += 1
  else:
    with open(path, "rb") as f:
      yield key, _decode(f.read(), stats)


class TextFiles(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Documents of local files; `make_builder` sets the name, inputs and version."""

  VERSION = tfds.core.Version("1.0.0")
  inputs: dict = {}  # split -> list of (path, key prefix)
  text_field = "text"
  validation_percent = 0.0
  description = "Documents of local text, JSONL or parquet files."
  stats: dict = {}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=self.description,
        features=tfds.features.FeaturesDict({f: tfds.features.Text() for f in FEATURES}))

  def _split_generators(self, dl_manager):
    del dl_manager
    if "validation" in self.inputs or not self.validation_percent:
      return {split: self._generate_examples(files, None)
              for split, files in self.inputs.items()}
    return {split: self._generate_examples(self.inputs["train"], split)
            for split in ("train", "validation")}

  def _generate_examples(self, files, holdout):
    counts = self.stats.setdefault(holdout or "all", {})
    for path, key in files:
      for doc_key, text in read_documents(path, self.text_field, key, counts):
        if holdout and holdout_split(doc_key, self.validation_percent) != holdout:
          continue
        if isinstance(text, Rejected):
          _count_rejected(counts, text)
          continue
        counts["documents"] = counts.get("documents", 0) + 1
        counts["empty"] = counts.get("empty", 0) + (not text)
        yield doc_key, {"text": text, "source": doc_key}


def _count_rejected(counts: dict, rejected: Rejected) -> None:
  bad = counts.setdefault("bad", {})
  bad[rejected.kind] = bad.get(rejected.kind, 0) + 1
  named = counts.setdefault("bad_named", [])
  if len(named) < MAX_NAMED:
    named.append(f"{rejected.where}: {rejected.kind} ({rejected.reason})")


def summary(stats: dict) -> list:
  """Lines saying what was read and which records were skipped, per split."""
  lines = []
  for split, counts in stats.items():
    counts = dict(counts)
    bad, named = counts.pop("bad", {}), counts.pop("bad_named", [])
    lines.append(f"  read ({split}): {json.dumps(counts)}")
    if bad:
      kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(bad.items()))
      lines.append(f"  skipped {sum(bad.values())} bad records ({split}): {kinds}")
      lines += [f"    {line}" for line in named]
      if sum(bad.values()) > len(named):
        lines.append(f"    ... and {sum(bad.values()) - len(named)} more")
  return lines


def make_builder(name: str, data_dir: str, inputs: dict, *, text_field: str = "text",
                 validation_percent: float = 0.0, version: str = "1.0.0",
                 description: str = TextFiles.description):
  """A TextFiles builder named `name`; `inputs` maps split -> [(path, key)]."""
  if not inputs.get("train"):
    raise ValueError(f"dataset {name!r}: no input files for the train split")
  namespace = dict(name=name, VERSION=tfds.core.Version(version), inputs=inputs,
                   text_field=text_field, validation_percent=validation_percent,
                   description=description, stats={})
  cls = types.new_class(f"TextFiles_{name}", (TextFiles,), {"skip_registration": True},
                        lambda ns: ns.update(namespace))
  return cls(data_dir=data_dir, file_format="array_record")


def _keep_tokenizers(dataset_dir: str) -> None:
  """Moves tokenizers trained into the version folder (an earlier layout) to
  `tokenizers.tokenizer_dir`, before `--overwrite` replaces that folder."""
  old = os.path.join(dataset_dir, "tokenizers")
  if not os.path.isdir(old):
    return
  new = tokenizers.tokenizer_dir(dataset_dir)
  os.makedirs(new, exist_ok=True)
  for name in os.listdir(old):
    if os.path.exists(os.path.join(new, name)):
      raise ValueError(f"{old}/{name} would replace {new}/{name}; move one of them away")
    shutil.move(os.path.join(old, name), new)
  print(f"moved the tokenizers in {old} to {new}: point data.tokenizer_path there")


def prepare(builder, *, overwrite: bool = False, progress: bool = True):
  """Writes the dataset (unless it exists and not `overwrite`); returns its directory.
  Tokenizers trained on it live outside the version folder and survive `overwrite`."""
  if overwrite and os.path.isdir(builder.data_dir):
    _keep_tokenizers(builder.data_dir)
    shutil.rmtree(builder.data_dir)
  if not progress:
    tfds.disable_progress_bar()
  builder.download_and_prepare()
  return builder.data_dir


def expand(patterns) -> list:
  """Sorted `(path, key)` of comma-separated globs; the key is the path relative to the
  glob's fixed directory, so the hold-out split does not change when the corpus moves."""
  files = []
  for pattern in patterns:
    for part in filter(None, pattern.split(",")):
      part = os.path.expanduser(part)
      matched = sorted(p for p in glob.glob(part, recursive=True) if os.path.isfile(p))
      if not matched:
        raise ValueError(f"no files match {part!r}")
      fixed = part[:min([part.find(ch) for ch in "*?[" if ch in part] + [len(part)])]
      base = fixed if fixed.endswith(os.sep) else os.path.dirname(fixed)
      files.extend((p, os.path.relpath(p, base or ".")) for p in matched)
  return files
