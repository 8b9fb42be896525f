"""Convert between Hugging Face model directories and phd_jax checkpoints.

  python -m phd_jax.convert from_hf --hf_dir=DIR --config=configs/X.py[:VARIANT] --out=EXPORT
  python -m phd_jax.convert to_hf (--workdir=RUN | --checkpoint=DIR) --out=HF_DIR
      [--architecture=auto|phd|native] [--dtype=float32|bfloat16] [--max_shard_gib=5]

from_hf: an Olmo2/Llama/Qwen3ForCausalLM (or exported PhdForCausalLM) directory with
safetensors weights becomes a phd_jax export; the model fields come from its config.json,
everything else (variant, training settings) from --config. to_hf writes the dense
architecture for Vanilla and PhdForCausalLM (`trust_remote_code=True`) for PHD variants.
The work is done by `phd_jax.hf`; a bad input exits with status 1 and one line naming it.
"""

from __future__ import annotations

import argparse
import sys

from phd_jax import config as config_lib
from phd_jax import hf
from phd_jax.hf.checkpoints import ARCHITECTURES, EXPORT_DTYPES


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m phd_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  from_hf = commands.add_parser("from_hf", help="HF directory -> phd_jax export")
  from_hf.add_argument("--hf_dir", required=True)
  from_hf.add_argument("--config", required=True, help="config file[:VARIANT]")
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


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    if args.command == "from_hf":
      out = hf.import_checkpoint(args.hf_dir, config_lib.load_config(args.config), args.out)
      print(f"wrote {out}")
    else:
      name = hf.export_checkpoint(args.workdir or args.checkpoint, args.out,
                                  architecture=args.architecture, dtype=args.dtype,
                                  max_shard_bytes=int(args.max_shard_gib * 2**30))
      print(f"wrote {args.out} ({name})")
  except ValueError as e:  # config_lib.ConfigError is one
    print(f"phd_jax.convert: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
