"""Time and peak host memory of the Hugging Face import and export at a model's shape.

  python bench/hf_convert.py                            # configs/olmo2_1b.py (1.18B)
  python bench/hf_convert.py --config=configs/tiny.py   # seconds, for a quick look

Writes random float32 weights of the config's model as an OLMo2 directory of safetensors
shards (--shard_gib each, with their index) in a temporary folder, then runs each step in
a fresh process, one after the other:
  baseline  imports phd_jax.hf and phd_jax.convert (JAX, Orbax, safetensors), nothing else
  read      phd_jax.hf.load_params: the HF directory as parameters in host memory (what
            `checkpoint.warm_start=hf:DIR` does before placing them on the devices)
  import    python -m phd_jax.convert from_hf: read, then write a phd_jax export (Orbax)
  export    python -m phd_jax.convert to_hf: that export back to an HF directory
Memory, measured inside each process: peak RSS (VmHWM, which counts the pages of the
memory-mapped shards the kernel may drop at will) and peak anonymous memory (RssAnon,
sampled every 5 ms: the process's own arrays). "copies" = (peak anonymous - baseline) /
one float32 copy of the parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from phd_jax import config as config_lib
from phd_jax.hf import mapping, weights

from common import REPO_ROOT, config_path  # siblings in bench/

GIB = 2**30


def write_random_olmo2(config, out: str, shard_bytes: int) -> int:
  """A random OLMo2 checkpoint of `config`'s model shape; returns its parameter bytes."""
  cfg = config_lib.model_config(config)
  if mapping.native_architecture(cfg) != "Olmo2ForCausalLM":
    raise ValueError("the benchmark writes OLMo2 checkpoints: the config needs "
                     "norm_style='reordered' and qk_norm across heads")
  os.makedirs(out)
  rng = np.random.default_rng(0)
  tensors = mapping.tensors(cfg)
  weights.write(out, ((t.hf_name, rng.standard_normal(t.hf_shape, np.float32) * 0.02)
                      for t in tensors), shard_bytes)
  spec = config_lib.phd_spec(config)
  hf_config = mapping.hf_config(cfg, spec, "Olmo2ForCausalLM", max_positions=config.seq_len,
                                dtype="float32")
  with open(os.path.join(out, mapping.CONFIG_FILE), "w") as f:
    json.dump(hf_config, f)
  return sum(4 * int(np.prod(t.shape)) for t in tensors)


# Runs one step in a child process and prints its time and memory as JSON.
MEASURE = """
import json, threading, time
def status(field):
  return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024
peak = [0]
def sample():
  while True:
    peak[0] = max(peak[0], status("RssAnon"))
    time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
from phd_jax import config as config_lib, convert, hf
start = time.perf_counter()
{step}
seconds = time.perf_counter() - start
peak[0] = max(peak[0], status("RssAnon"))
print(json.dumps(dict(seconds=seconds, rss=status("VmHWM"), anon=peak[0])))
"""


def run(step: str) -> dict:
  """Seconds, peak RSS and peak anonymous bytes of `step` (Python) in a fresh process."""
  out = subprocess.run([sys.executable, "-c", MEASURE.format(step=step)], cwd=REPO_ROOT,
                       check=True, stdout=subprocess.PIPE, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default=config_path("olmo2_1b"))
  parser.add_argument("--shard_gib", type=float, default=1.0)
  parser.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
  args = parser.parse_args()
  config = config_lib.load_config(args.config, "Vanilla")
  with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
    source, export, out = (os.path.join(tmp, name) for name in ("source", "export", "out"))
    start = time.perf_counter()
    one_copy = write_random_olmo2(config, source, int(args.shard_gib * GIB))
    shards = [name for name in os.listdir(source) if name.endswith(".safetensors")]
    print(f"wrote {one_copy / GIB:.2f} GiB of random weights in {len(shards)} shards "
          f"({time.perf_counter() - start:.0f} s)")
    config_arg = f"{args.config}:Vanilla"
    rows = {
        "baseline": run("pass"),
        "read": run(f"hf.load_params({source!r}, config_lib.load_config({config_arg!r}))"),
        "import": run(f"assert convert.main(['from_hf', '--hf_dir={source}', "
                      f"'--config={config_arg}', '--out={export}']) == 0"),
        "export": run(f"assert convert.main(['to_hf', '--checkpoint={export}', '--out={out}', "
                      f"'--max_shard_gib={args.shard_gib}']) == 0"),
    }
  baseline = rows["baseline"]["anon"]
  print(f"\n{os.path.basename(args.config)}: {one_copy / 4 / 1e9:.2f}B parameters, one float32 "
        f"copy {one_copy / GIB:.2f} GiB\n")
  print("| step | seconds | peak RSS (GiB) | peak anonymous (GiB) | copies |")
  print("|---|---|---|---|---|")
  for name, row in rows.items():
    copies = "" if name == "baseline" else f"{(row['anon'] - baseline) / one_copy:.2f}"
    print(f"| {name} | {row['seconds']:.1f} | {row['rss'] / GIB:.2f} | {row['anon'] / GIB:.2f} "
          f"| {copies} |")


if __name__ == "__main__":
  main()
