"""Files of a Hugging Face model directory, which is untrusted input.

A downloaded directory decides which files are read: the safetensors index names the
shards, and any file may be a link. Every file read from one therefore goes through
`inside`, which refuses a name that resolves (after links) outside the directory: an
absolute name, `../`, or a link to elsewhere would otherwise copy some other file's
contents into the export. The one exception is the Hugging Face hub cache, whose
`snapshots/<revision>/` files are links into the same repository's `blobs/`. The
tokenizer files an export copies from a run's tokenizer directory follow the same rule.
"""

from __future__ import annotations

import json
import os

HUB_SNAPSHOTS, HUB_BLOBS = "snapshots", "blobs"


def _within(path: str, root: str) -> bool:
  return os.path.commonpath([path, root]) == root


def _hub_blobs(root: str) -> str | None:
  """`<repo>/blobs` when `root` (resolved) is a hub cache snapshot `<repo>/snapshots/<rev>`."""
  snapshots = os.path.dirname(root)
  if os.path.basename(snapshots) != HUB_SNAPSHOTS:
    return None
  return os.path.join(os.path.dirname(snapshots), HUB_BLOBS)


def inside(model_dir: str, name: str, named_by: str | None = None) -> str:
  """The path of the file `name` of `model_dir`, if it resolves inside the directory.

  Args:
    named_by: what gave the name (e.g. "INDEX: weight_map['lm_head.weight']"), for the
      error; None for the directory's own fixed file names.
  Raises:
    ValueError: in one line, naming the entry and where it leads.
  """
  path = os.path.join(model_dir, name)
  root, real = os.path.realpath(model_dir), os.path.realpath(path)
  blobs = _hub_blobs(root)
  if _within(real, root) or (blobs is not None and _within(real, blobs)):
    return path
  what = f"{named_by} = {name!r}" if named_by else path
  raise ValueError(f"{what} resolves to {real}, outside {model_dir}: files read from a "
                   "model or tokenizer directory must lie inside it (links included)")


def read_json(path: str) -> dict:
  """The JSON object in the file `path`; ValueError naming the file otherwise."""
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except ValueError as e:  # also a file that is not UTF-8
    raise ValueError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object")
  return value
