"""The accelerator attention paths still lower, checked on CPU.

`splash` and `cudnn` call private JAX functions that only run on their hardware. Between
hardware runs (bench/device_check.py), these tests lower them here so that a JAX upgrade
that changes those functions fails CI:

* TPU: `jax.export(..., platforms=["tpu"])` lowers Pallas/Mosaic kernels without a TPU.
  The whole train step and a generation (prefill + decoding steps) with attention "auto"
  on a TPU, over an abstract (2, 2, 2) mesh, must contain the splash kernels
  (`tpu_custom_call`): forward, and the dq and dkv backward kernels.
* cuDNN: the lowering asks for the cuDNN library at trace time ("cuDNN is not detected")
  and checks the GPU's compute capability, which is False without a GPU (so the
  pre-Hopper rules apply). With the library's version stubbed, the cudnn path exports for
  platforms=["cuda"]; the module must hold cuDNN's fused attention forward and backward
  custom calls with our shapes. What this cannot check: that the installed cuDNN accepts
  the call (only the hardware run does).
"""

import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from phd_jax import attention as attention_lib
from phd_jax import config as config_lib
from phd_jax import decode, sharding, state, train
from phd_jax.attention.cudnn import cudnn_attention
from phd_jax.decode import engine
from phd_jax.decode.cache import init_cache
from phd_jax.masks import parse_variant
from run_helpers import tiny_config

MESH = AbstractMesh((2, 2, 2), sharding.AXES, axis_types=(AxisType.Auto,) * 3)
B, T = 4, 256


@pytest.fixture
def on_tpu(monkeypatch):
  """"auto" resolves as on a TPU."""
  monkeypatch.setattr(attention_lib, "_backend", lambda: "tpu")


def _config():
  c = tiny_config("PHD-CSWA-2-16-32")
  c.model.update(vocab_size=256, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=32, mlp_dim=128, dtype="bfloat16", attention_impl="auto")
  c.update(seq_len=T, batch_size=B)
  c.mesh.update(data=2, fsdp=2, tensor=2)
  return c


def _custom_calls(exported) -> list[str]:
  text = exported.mlir_module()
  return re.findall(r"stablehlo\.custom_call @([\w$]+)", text) + (
      ["tpu_custom_call"] * text.count("tpu_custom_call"))


def test_train_step_exports_for_tpu_with_splash(on_tpu):
  config = _config()
  step = train.make_train_step(config, MESH, state.graphdef(config))
  batch = {k: jax.ShapeDtypeStruct((B, T), jnp.int32, sharding=sharding.batch_sharding(MESH))
           for k in train.BATCH_KEYS}
  with jax.sharding.use_abstract_mesh(MESH):  # the trainer's step, lowered for a TPU mesh
    exported = jax.export.export(step.jitted, platforms=["tpu"])(
        state.abstract_state(config, MESH), batch)
  assert exported.platforms == ("tpu",) and exported.nr_devices == 8
  # per layer: the forward kernel, then dq and dkv in the backward pass
  assert _custom_calls(exported).count("tpu_custom_call") >= 3


def test_generation_exports_for_tpu_with_splash(on_tpu):
  """Prefill runs the training attention (splash) on the prompt; steps read the cache."""
  config = _config()
  graphdef = state.graphdef(config)
  params = state.abstract_state(config, MESH).params
  prompt_len, new_tokens = 128, 4

  hidden_tokens = decode.hidden_prefill_tokens(config_lib.phd_spec(config), [prompt_len])

  def generate(params, tokens_BT):
    model = nnx.merge(graphdef, params)
    cache = init_cache(model.cfg, model.spec, B, prompt_len + new_tokens)
    with nnx.logical_axis_rules(sharding.RULES):
      return engine.generate_tokens(model, cache, tokens_BT, hidden_tokens, new_tokens,
                                    decode.Sampling(), -1, jax.random.key(0))

  tokens = jax.ShapeDtypeStruct((B, prompt_len), jnp.int32,
                                sharding=sharding.batch_sharding(MESH))
  with jax.sharding.use_abstract_mesh(MESH):
    exported = jax.export.export(jax.jit(generate), platforms=["tpu"])(params, tokens)
  assert exported.nr_devices == 8
  assert "tpu_custom_call" in _custom_calls(exported)


def test_cudnn_path_exports_for_cuda(monkeypatch):
  from jax._src.cudnn import fused_attention_stablehlo as fa  # pylint: disable=g-import-not-at-top
  with pytest.raises(RuntimeError, match="cuDNN is not detected"):
    fa.check_cudnn_version()  # why the version is stubbed below
  monkeypatch.setattr(fa, "check_cudnn_version", lambda: 90800)
  spec = parse_variant("PHD-CSWA-3-16-32")
  shapes = [(2, 64, 3, 4, 32), (2, 64, 3, 2, 32), (2, 64, 3, 2, 32)]

  def grads(q, k, v, segment_ids, positions):
    loss = lambda q, k, v: cudnn_attention(q, k, v, spec, segment_ids, positions).astype(
        jnp.float32).sum()
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  args = [jax.ShapeDtypeStruct(s, jnp.bfloat16) for s in shapes] + [
      jax.ShapeDtypeStruct((2, 64), jnp.int32)] * 2
  targets = ("__cudnn$fmhaScaleBiasSoftmax", "__cudnn$fmhaScaleBiasSoftmaxBackward")
  checks = [jax.export.DisabledSafetyCheck.custom_call(t) for t in targets]
  exported = jax.export.export(jax.jit(grads), platforms=["cuda"], disabled_checks=checks)(
      *args)
  calls = _custom_calls(exported)
  assert calls.count(targets[0]) == 1 and calls.count(targets[1]) == 1, calls
  # all K*H = 12 query heads of the originals' causal pass against G = 2 kv heads
  assert "tensor<2x64x12x32xbf16>, tensor<2x64x2x32xbf16>" in exported.mlir_module()
