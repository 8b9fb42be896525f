"""What the benches share: config files by name, one set of random parameters viewed as any
variant (PHD or PLT), a decoding step to time, timing in turns, and comma-separated integer flags.

Every bench runs as `python bench/NAME.py` from the repository root with the package
installed; Python puts bench/ first on the module path, so the scripts import this module
(and the device check its harness and report) as siblings: `import common`.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from phd_jax import config as config_lib
from phd_jax import decode
from phd_jax.masks import PHDSpec, PLTSpec
from phd_jax.model import Transformer
from phd_jax.plt import model_class

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_path(name: str) -> str:
  """The file of configs/NAME.py."""
  return os.path.join(REPO_ROOT, "configs", f"{name}.py")


def load_config(name: str, variant: str = "Vanilla"):
  """configs/NAME.py on synthetic data (no tokenizer, corpus or file) with no evaluation."""
  config = config_lib.load_config(config_path(name), variant)
  config.data.update(source="synthetic", tokenizer="byte", prefetch=0)
  config.update(eval_every=0, eval_tasks="")
  return config


def ints(text: str) -> list[int]:
  """A comma-separated flag of integers: "1,2,4" -> [1, 2, 4]."""
  return [int(x) for x in text.split(",") if x]


class SharedParams:
  """One set of random parameters, viewed as a model of any variant (K and loops add no
  weights; a gated PLT's gates, which it adds, are fresh random ones)."""

  def __init__(self, config):
    self.cfg = config_lib.model_config(config)
    self.state = nnx.state(Transformer(self.cfg, PHDSpec(), rngs=nnx.Rngs(0)))
    self.count = sum(x.size for x in jax.tree.leaves(self.state))

  def model(self, spec: PHDSpec | PLTSpec) -> Transformer:
    """These parameters as a model of `spec` (a PLT's: the looped subclass)."""
    new = lambda: model_class(spec)(self.cfg, spec, rngs=nnx.Rngs(0))
    if isinstance(spec, PLTSpec) and spec.gated:  # gates this state lacks: build, then share
      model = new()
      nnx.update(model, self.state)
      return model
    return nnx.merge(nnx.graphdef(nnx.eval_shape(new)), self.state)

  def decoder(self, spec: PHDSpec | PLTSpec,
              prompt_buckets=decode.POWERS_OF_TWO) -> decode.Decoder:
    return decode.Decoder(self.model(spec), prompt_buckets=prompt_buckets)


def decode_step(params: SharedParams, spec: PHDSpec | PLTSpec, batch: int, context: int,
                calls: int):
  """A function that runs one decoding step per call (up to `calls` calls) for `batch` rows
  with `context` tokens cached, and returns the logits."""
  decoder = params.decoder(spec)
  cache = decode.init_cache(params.cfg, spec, batch, context + calls)
  holder = {"cache": cache.replace(length=jnp.int32(context))}  # cached values do not matter
  tokens_B = np.ones((batch,), np.int32)

  def step():
    logits_BV, holder["cache"] = decoder.step(holder["cache"], tokens_B)
    return logits_BV
  return step


def seconds_in_turns(runs: dict, repeats: int) -> dict[str, list[float]]:
  """Seconds of each of `repeats` calls of every run, after one untimed (compiling) call of
  each. The calls take turns (run 1, run 2, ..., run 1, ...) so that load from other
  processes weighs on every run alike."""
  for run in runs.values():
    jax.block_until_ready(run())
  seconds = {name: [] for name in runs}
  for _ in range(repeats):
    for name, run in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(run())
      seconds[name].append(time.perf_counter() - start)
  return seconds
