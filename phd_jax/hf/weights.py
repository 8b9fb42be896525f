"""Streaming safetensors I/O of Hugging Face model directories.

Reading never unpickles (`.bin` weights are refused), never follows the index out of the
model directory (`files.inside`), names a damaged file in one line, and never holds a
second copy of the model: every shard's header (names, shapes, dtypes) is read and
checked against the tensors the config implies before any data is, then tensors are read
one at a time from the memory-mapped shards (`phd_jax.hf.checkpoints` converts each into
its preallocated parameter). Peak host memory: the parameters plus one tensor.

Writing gathers tensors in checkpoint order into shards of at most `max_shard_bytes`
(`model.safetensors`, or `model-0000i-of-0000n.safetensors` plus the index), holding one
shard at a time.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Iterator

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from phd_jax.hf import files, mapping

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def _open(path: str):
  """safe_open; a damaged file (truncated, a header of absurd size, not safetensors at all)
  is named in one line instead of the library's traceback."""
  try:
    return safe_open(path, "numpy")
  except (SafetensorError, OSError) as e:
    raise ValueError(f"{path} is not a readable safetensors file: {e}") from None


def _weight_map(hf_dir: str) -> dict[str, str]:
  """The index's tensor name -> shard file, each shard checked to lie inside `hf_dir`."""
  index_path = files.inside(hf_dir, INDEX_FILE)
  weight_map = files.read_json(index_path).get("weight_map")
  if not (isinstance(weight_map, dict) and weight_map
          and all(isinstance(v, str) for v in weight_map.values())):
    raise ValueError(f"{index_path} is not a safetensors index: its weight_map must map each "
                     "tensor name to a shard file")
  first_tensor = {}
  for tensor, shard in weight_map.items():
    first_tensor.setdefault(shard, tensor)
  for shard, tensor in sorted(first_tensor.items()):
    path = files.inside(hf_dir, shard, f"{index_path}: weight_map[{tensor!r}]")
    if not os.path.isfile(path):
      raise ValueError(f"{index_path} lists the shard {shard}, which is missing from {hf_dir}")
  return weight_map


def shard_names(hf_dir: str) -> dict[str, str]:
  """Tensor name -> shard file, from the index or the single weights file; every shard
  the index names must exist inside `hf_dir`."""
  if os.path.isfile(os.path.join(hf_dir, INDEX_FILE)):
    return _weight_map(hf_dir)
  if os.path.isfile(os.path.join(hf_dir, WEIGHTS_FILE)):
    with _open(files.inside(hf_dir, WEIGHTS_FILE)) as f:
      return {name: WEIGHTS_FILE for name in f.keys()}
  pickled = sorted(os.path.basename(p) for pattern in PICKLED
                   for p in glob.glob(os.path.join(hf_dir, pattern)))
  if pickled:
    raise ValueError(f"{hf_dir} holds only pickled weights ({', '.join(pickled)}); phd_jax "
                     "reads safetensors only: load it with transformers and save_pretrained() "
                     "it (safetensors is the default)")
  raise ValueError(f"{hf_dir} has neither {WEIGHTS_FILE} nor {INDEX_FILE}")


def headers(hf_dir: str, names: dict[str, str]) -> dict[str, tuple[tuple[int, ...], str]]:
  """Tensor name -> (shape, dtype) from the shard headers, without reading tensor data."""
  found = {}
  for shard in sorted(set(names.values())):
    with _open(os.path.join(hf_dir, shard)) as f:
      for name in f.keys():
        tensor = f.get_slice(name)
        found[name] = (tuple(tensor.get_shape()), tensor.get_dtype())
  for name, shard in names.items():
    if name not in found:
      raise ValueError(f"{os.path.join(hf_dir, INDEX_FILE)} places {name} in {shard}, which "
                       "does not hold it")
  return found


def check_tensors(hf_dir: str, expected: list[mapping.Tensor], found: dict,
                  hf_config: dict) -> None:
  """ValueError naming the first tensor missing, unexpected or of the wrong shape."""
  wanted = {t.hf_name: t for t in expected}
  missing = [name for name in wanted if name not in found]
  if missing:
    raise ValueError(f"{hf_dir}: {len(missing)} tensors that config.json implies are "
                     f"missing, e.g. {missing[:3]}")
  tied_head = "lm_head.weight" if hf_config.get("tie_word_embeddings") else None
  unexpected = [name for name in found if name not in wanted and name != tied_head
                and not name.endswith(mapping.IGNORED_SUFFIXES)]
  if unexpected:
    raise ValueError(f"{hf_dir}: tensors phd_jax has no parameter for (biases? another "
                     f"architecture?): {sorted(unexpected)[:3]}")
  fields = {f: hf_config.get(f) for f in ("hidden_size", "num_attention_heads",
                                          "num_key_value_heads", "head_dim",
                                          "intermediate_size", "vocab_size")
            if hf_config.get(f) is not None}
  for tensor in expected:
    shape = found[tensor.hf_name][0]
    if shape != tensor.hf_shape:
      raise ValueError(f"{hf_dir}: {tensor.hf_name} has shape {shape}, but config.json "
                       f"({', '.join(f'{k}={v}' for k, v in fields.items())}) implies "
                       f"{tensor.hf_shape}")


def read(hf_dir: str, expected: list[mapping.Tensor], names: dict[str, str]
         ) -> Iterator[tuple[mapping.Tensor, np.ndarray]]:
  """(tensor, its array as stored), one at a time, shard by shard."""
  by_shard: dict[str, list[mapping.Tensor]] = {}
  for tensor in expected:
    by_shard.setdefault(names[tensor.hf_name], []).append(tensor)
  for shard, shard_tensors in sorted(by_shard.items()):
    with _open(os.path.join(hf_dir, shard)) as f:
      for tensor in shard_tensors:
        yield tensor, f.get_tensor(tensor.hf_name)


def _shard_file(index: int, count: int) -> str:
  return f"model-{index:05d}-of-{count:05d}.safetensors"


def write(out_dir: str, tensors: Iterable[tuple[str, np.ndarray]], max_shard_bytes: int
          ) -> list[str]:
  """Write named arrays as safetensors shards (+ index when more than one); returns the
  file names. Shards are written as they fill and renamed once their count is known."""
  metadata = {"format": "pt"}  # what transformers expects of PyTorch weights
  shards: list[dict[str, str]] = []  # per written shard: its tensor names
  pending: dict[str, np.ndarray] = {}
  pending_bytes = total_bytes = 0

  def flush():
    save_file(pending, os.path.join(out_dir, f"shard-{len(shards)}.tmp"), metadata)
    shards.append(list(pending))
    pending.clear()

  for name, array in tensors:
    if pending and pending_bytes + array.nbytes > max_shard_bytes:
      flush()
      pending_bytes = 0
    pending[name] = np.ascontiguousarray(array)
    pending_bytes += array.nbytes
    total_bytes += array.nbytes
  flush()
  if len(shards) == 1:
    os.replace(os.path.join(out_dir, "shard-0.tmp"), os.path.join(out_dir, WEIGHTS_FILE))
    return [WEIGHTS_FILE]
  files = [_shard_file(i + 1, len(shards)) for i in range(len(shards))]
  for i, file in enumerate(files):
    os.replace(os.path.join(out_dir, f"shard-{i}.tmp"), os.path.join(out_dir, file))
  weight_map = {name: file for file, names in zip(files, shards) for name in names}
  with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
    json.dump({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, f, indent=2)
  return [*files, INDEX_FILE]
