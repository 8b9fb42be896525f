"""What transformers' `generate` and evaluation harnesses read besides the weights.

config.json's special token ids (`bos_token_id`, `eos_token_id`, `pad_token_id`) and
`max_position_embeddings`, and `generation_config.json`: an import records them in the
phd_jax config as the group `config.hf` (`recorded`), and an export writes them back
(`for_export`), so an HF -> phd_jax -> HF round trip keeps them. A model without that
record (trained from scratch, or a run warm-started from an import) gets BOS/EOS from its
tokenizer and `max_position_embeddings` from the length it was trained on (`seq_len`).
"""

from __future__ import annotations

import json
import os

import ml_collections

from phd_jax import data
from phd_jax.hf import files

GENERATION_FILE = "generation_config.json"
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
MAX_POSITIONS = "max_position_embeddings"


def _is_id(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _checked(hf_config: dict, where: str) -> dict:
  """The special ids (None, an id or a list of ids) and max positions of a config.json."""
  fields = {f: hf_config.get(f) for f in (*SPECIAL_IDS, MAX_POSITIONS)}
  for field in SPECIAL_IDS:
    value = fields[field]
    if not (value is None or _is_id(value)
            or (isinstance(value, list) and value and all(map(_is_id, value)))):
      raise ValueError(f"{where}: {field}={value!r} is not a token id nor a list of them")
  if fields[MAX_POSITIONS] is not None and not (_is_id(fields[MAX_POSITIONS])
                                                and fields[MAX_POSITIONS] > 0):
    raise ValueError(f"{where}: {MAX_POSITIONS}={fields[MAX_POSITIONS]!r} is not a positive "
                     "integer")
  return fields


def recorded(hf_dir: str, hf_config: dict) -> ml_collections.ConfigDict:
  """`config.hf` of an import: the source's ids, max positions and generation config (as
  JSON text: its keys need not be ConfigDict field names; "" when it has none)."""
  fields = _checked(hf_config, os.path.join(hf_dir, "config.json"))
  generation = ""
  if os.path.isfile(os.path.join(hf_dir, GENERATION_FILE)):
    generation = json.dumps(files.read_json(files.inside(hf_dir, GENERATION_FILE)))
  return ml_collections.ConfigDict({**fields, "generation_config": generation})


def for_export(config) -> tuple[dict, int, dict]:
  """(special ids for config.json, max_position_embeddings, generation_config.json) of
  `config`'s model: what its import recorded, else its tokenizer's and its `seq_len`."""
  record = config.get("hf")
  if record is None:
    try:
      tokenizer = data.make_tokenizer(config)
    except (OSError, ValueError) as e:
      raise ValueError(f"the export's bos/eos token ids come from the tokenizer: {e}") from None
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id}
    return ids, config.seq_len, ids
  ids = {f: record[f] for f in SPECIAL_IDS if record.get(f) is not None}
  generation = json.loads(record.generation_config) if record.generation_config else ids
  return ids, record.get(MAX_POSITIONS) or config.seq_len, generation
