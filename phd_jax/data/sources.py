"""Documents of a prepared tfds dataset (array_record), read without TensorFlow.

`open_documents(config, split)` resolves `config.data` (source, name, data_dir, splits,
text_field) to a random-access `Documents`; a missing dataset, split or field is a
`ValueError` that names it and lists what exists.
"""

from __future__ import annotations

import os

import numpy as np
from etils import epath

from phd_jax.data import stdlib_corpus


class Documents:
  """`len(docs)`, `docs.texts(indices) -> list[str]` (invalid UTF-8 replaced)."""

  def __init__(self, data_source, text_field: str, data_dir: str):
    self.data_source, self.text_field, self.data_dir = data_source, text_field, data_dir

  def __len__(self):
    return len(self.data_source)

  def texts(self, indices) -> list:
    records = self.data_source.__getitems__([int(i) for i in indices])
    return [_text(r[self.text_field]) for r in records]


def _text(value) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, np.ndarray) and value.dtype == object:
    return _text(value.item())
  return str(value)


def split_name(config, split: str) -> str:
  """"train" / "validation" map to the configured split names; others pass through."""
  return {"train": config.data.train_split, "validation": config.data.eval_split,
          "eval": config.data.eval_split}.get(split, split)


def available_datasets(data_dir: str) -> list:
  """`name[/config]:version` of every prepared dataset under `data_dir`."""
  root = epath.Path(data_dir)
  if not root.exists():
    return []
  found = []
  for info in list(root.glob("*/*/dataset_info.json")) + list(root.glob("*/*/*/dataset_info.json")):
    parts = info.parent.relative_to(root).parts
    found.append("/".join(parts[:-1]) + ":" + parts[-1])
  return sorted(found)


def _builder(name: str, data_dir: str | None):
  import tensorflow_datasets as tfds
  if not name:
    raise ValueError("data.name must name the tfds dataset when data.source='tfds'")
  try:
    return tfds.builder(name, data_dir=data_dir or None)
  except Exception as e:  # tfds raises several kinds; all mean "not found here"
    where = data_dir or "the default tfds data_dir"
    listing = available_datasets(data_dir) if data_dir else []
    raise ValueError(f"data.name={name!r}: no such prepared dataset in {where} "
                     f"({type(e).__name__}); found: {listing or 'nothing'}") from None


def dataset_name(config) -> str:
  return stdlib_corpus.NAME if config.data.source == "stdlib" else config.data.name


def open_documents(config, split: str) -> Documents:
  d = config.data
  name = dataset_name(config)
  if d.source == "stdlib":
    data_dir, text_field = stdlib_corpus.ensure_prepared(config), "text"
  else:
    data_dir, text_field = d.data_dir, d.text_field
  builder = _builder(name, data_dir)
  split = split_name(config, split)
  splits = builder.info.splits
  if split.split("[")[0] not in splits:
    raise ValueError(f"dataset {name!r} has no split {split!r}; it has {sorted(splits)}")
  features = builder.info.features
  if text_field not in features:
    raise ValueError(f"dataset {name!r} has no field data.text_field={text_field!r}; it has "
                     f"{sorted(features.keys())}")
  file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
  if file_format != "array_record":
    raise ValueError(f"dataset {name!r} is stored as {file_format!r}; random access needs "
                     "array_record (re-prepare it with file_format='array_record')")
  data_source = builder.as_data_source(split=split)
  if not len(data_source):
    raise ValueError(f"dataset {name!r} split {split!r} is empty")
  return Documents(data_source, text_field, os.fspath(builder.data_dir))
