"""The private JAX functions the fused kernels call still take the arguments we pass.

`attention/cudnn.py` and `attention/splash.py` build every call to a private JAX function in
one place, by keyword (`forward_call`, `backward_call`); these tests bind those very
arguments to the functions' signatures, so that a JAX release that renames, drops or adds
a parameter fails here, on any machine, with the JAX version and both parameter lists,
rather than on the accelerator in the middle of a run.
"""

import inspect

import jax
import jax.numpy as jnp
import pytest

from phd_jax.attention import cudnn, splash


def assert_binds(fn, kwargs: dict, caller: str):
  """`fn(**kwargs)` would bind every argument to a parameter, and leave none unset."""
  signature = inspect.signature(fn)
  try:
    signature.bind(**kwargs)
  except TypeError as e:
    pytest.fail(f"jax {jax.__version__} changed {fn.__module__}.{fn.__qualname__}: it takes "
                f"{list(signature.parameters)}, {caller} passes {sorted(kwargs)} ({e}); "
                f"update {caller} for this version")


@pytest.fixture
def cudnn_version(monkeypatch):
  """A cuDNN version to pass (this machine may have no cuDNN to ask)."""
  from jax._src.cudnn import fused_attention_stablehlo as fa  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(fa, "check_cudnn_version", lambda: 90800)


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
def test_cudnn_private_calls_bind(cudnn_version, packed):
  B, T, H, Dh = 1, 8, 2, 16
  q = k = v = o = do = jnp.zeros((B, T, H, Dh), jnp.bfloat16)
  segment_ids = jnp.ones((B, T), jnp.int32) if packed else None
  forward, kwargs = cudnn.forward_call(q, k, v, segment_ids)
  assert_binds(forward, kwargs, "phd_jax/attention/cudnn.py forward_call")
  # The backward's residuals repeat the forward's inputs in their order of parameters.
  assert tuple(inspect.signature(forward).parameters)[:len(cudnn.INPUTS)] == cudnn.INPUTS, (
      f"jax {jax.__version__}: {forward.__qualname__}'s inputs are no longer "
      f"{cudnn.INPUTS}; the residuals of cudnn.backward_call follow them")
  backward, kwargs = cudnn.backward_call(q, k, v, segment_ids, o,
                                         jnp.zeros((B, H, T), jnp.float32), do)
  assert_binds(backward, kwargs, "phd_jax/attention/cudnn.py backward_call")
  assert len(kwargs["res"]) == len(cudnn.INPUTS) + 2  # + log-sum-exp, output


def test_splash_private_call_binds():
  kernel = splash._causal_kernel(heads=2, length=128, block=128, interpret=True)  # pylint: disable=protected-access
  backward, kwargs = splash.backward_call(kernel, residuals=(), do=None)
  assert_binds(backward, kwargs, "phd_jax/attention/splash.py backward_call")


def test_a_changed_signature_fails_naming_the_jax_version():
  def renamed(query, key, *, new_name):
    del query, key, new_name
  with pytest.raises(pytest.fail.Exception, match=f"jax {jax.__version__} changed .*renamed"):
    assert_binds(renamed, dict(query=1, key=2, old_name=3), "a caller")
