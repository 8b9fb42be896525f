"""Convert between Hugging Face model directories and phd_jax checkpoints.

  python -m phd_jax.convert from_hf --hf_dir=DIR --config=configs/X.py[:VARIANT] --out=EXPORT
      [--config.FIELD=VALUE ...]
  python -m phd_jax.convert to_hf (--workdir=RUN | --checkpoint=DIR) --out=HF_DIR
      [--architecture=auto|phd|native] [--dtype=float32|bfloat16] [--max_shard_gib=5]

from_hf: an Olmo2/Llama/Qwen3ForCausalLM (or exported PhdForCausalLM) directory with
safetensors weights becomes a phd_jax export; the model fields come from its config.json,
everything else (variant, training settings) from --config and its --config.FIELD=VALUE
settings (as for `phd_jax.main`). The directory is untrusted input: every file it names
must lie inside it. to_hf writes the dense architecture for Vanilla and PhdForCausalLM
(`trust_remote_code=True`) for PHD and PLT variants, with the special token ids, context
length and generation_config.json that HF `generate` reads. The work is done by `phd_jax.hf`; a
bad input exits with status 1 and one line naming it, before anything is written.
"""

from __future__ import annotations

import argparse
import math
import re
import sys

from absl import flags
from ml_collections import config_flags

from phd_jax import config as config_lib
from phd_jax import hf
from phd_jax.hf.checkpoints import ARCHITECTURES, EXPORT_DTYPES
from phd_jax.masks import parse_variant

SETTING = re.compile(r"--(?:no)?config\.([^=]+)")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m phd_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  from_hf = commands.add_parser("from_hf", help="HF directory -> phd_jax export")
  from_hf.add_argument("--hf_dir", required=True)
  from_hf.add_argument("--config", required=True, help="config file[:VARIANT]; settings "
                       "follow as --config.FIELD=VALUE")
  from_hf.add_argument("--out", required=True, help="the export folder to create")
  to_hf = commands.add_parser("to_hf", help="phd_jax checkpoint or export -> HF directory")
  source = to_hf.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="a training workdir: its newest complete checkpoint")
  source.add_argument("--checkpoint", help="a checkpoint step folder or an export")
  to_hf.add_argument("--out", required=True)
  to_hf.add_argument("--architecture", default="auto", choices=ARCHITECTURES)
  to_hf.add_argument("--dtype", default="float32", choices=sorted(EXPORT_DTYPES))
  to_hf.add_argument("--max_shard_gib", type=float, default=5.0)
  return parser


def _config_file(path: str):
  """`config_lib.load_config`, hinting at FILE.py:VARIANT when given a variant alone."""
  try:
    return config_lib.load_config(path)
  except config_lib.ConfigError as e:
    try:
      parse_variant(path)
    except ValueError:
      raise e from None
    raise config_lib.ConfigError(f"{e}; --config takes a config file and then the variant, "
                                 f"e.g. --config=configs/tiny.py:{path}") from None


def _load_config(path: str, settings: list[str], hf_dir: str):
  """The --config file with its --config.FIELD=VALUE settings, applied by ml_collections'
  config flags as in `phd_jax.main`; each field is checked first (one line naming it). The
  model's shape comes from the checkpoint, so settings of those fields are refused."""
  config = _config_file(path)
  from_checkpoint = hf.model_fields(hf.read_config(hf_dir)) if settings else {}
  for setting in settings:
    match = SETTING.match(setting)
    if not match:
      raise config_lib.ConfigError(f"unrecognised argument {setting}; settings look like "
                                   "--config.FIELD=VALUE")
    if message := config_lib.unknown_field_message(config, match[1]):
      raise config_lib.ConfigError(f"{setting}: {message}")
    group, _, field = match[1].partition(".")
    if group == "model" and field in from_checkpoint:
      raise config_lib.ConfigError(f"{setting}: the checkpoint sets model.{field} "
                                   f"({from_checkpoint[field]!r}, from its config.json)")
  argv = ["convert", *settings]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_dict("config", config, flag_values=flag_values, sys_argv=argv)
  try:
    flag_values(argv)
  except flags.Error as e:  # a value the field's type cannot hold
    raise config_lib.ConfigError(str(e)) from None
  return flag_values.config


def _shard_bytes(gib: float) -> int:
  if not (math.isfinite(gib) and gib * 2**30 >= 1):
    raise ValueError(f"--max_shard_gib must be a positive number of GiB (e.g. 5); got {gib:g}")
  return int(gib * 2**30)


def main(argv=None) -> int:
  parser = _parser()
  args, settings = parser.parse_known_args(argv)
  if settings and args.command != "from_hf":
    parser.error(f"unrecognized arguments: {' '.join(settings)}")
  try:
    if args.command == "from_hf":
      config = _load_config(args.config, settings, args.hf_dir)
      out = hf.import_checkpoint(args.hf_dir, config, args.out)
      print(f"wrote {out}")
    else:
      name = hf.export_checkpoint(args.workdir or args.checkpoint, args.out,
                                  architecture=args.architecture, dtype=args.dtype,
                                  max_shard_bytes=_shard_bytes(args.max_shard_gib))
      print(f"wrote {args.out} ({name})")
  except ValueError as e:  # config_lib.ConfigError is one
    print(f"phd_jax.convert: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
