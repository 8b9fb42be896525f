"""Checkpoints: restore on other meshes, keep policy, async saves, torn and bit-flipped
folders, exports."""

import functools
import json
import logging
import math
import os
import threading
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from checkpoint_helpers import flip_a_bit
from phd_jax import checkpoint, sharding, train
from phd_jax.checkpoint import integrity
from phd_jax import state as state_lib
from run_helpers import tiny_config

AXES = ("data", "fsdp", "tensor")


def _config(**checkpoint_fields):
  c = tiny_config("PHD-CSWA-2-4-8")
  c.model.update(vocab_size=64, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1,
                 head_dim=16, mlp_dim=32)
  c.checkpoint.update(every=2, keep=2, keep_period=0, async_save=True)
  c.checkpoint.update(**checkpoint_fields)
  return c


def _mesh(shape):
  devices = np.array(jax.devices()[:math.prod(shape)]).reshape(shape)
  return jax.sharding.Mesh(devices, AXES, axis_types=(AxisType.Auto,) * 3)


def _sharding(shape, mesh):
  """Split the first free dimension each mesh axis divides (varies with the mesh)."""
  spec = [None] * len(shape)
  for axis in AXES:
    size = mesh.shape[axis]
    for dim, n in enumerate(shape):
      if size > 1 and spec[dim] is None and n % size == 0:
        spec[dim] = axis
        break
  return NamedSharding(mesh, PartitionSpec(*spec))


def _abstract(tree, mesh):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                     sharding=_sharding(x.shape, mesh)), tree)


@jax.jit
def _build_state(step):
  """A TrainState with non-trivial optimizer moments and step-dependent params (one compile:
  op by op, building it would dominate the test time)."""
  params = nnx.state(state_lib.new_model(_config()), nnx.Param)
  params = jax.tree.map(lambda p: p + 0.01 * step, params)
  tx = optax.adamw(1e-2)
  grads = jax.tree.map(lambda p: jnp.sin(p * 7.0 + 1.0), params)
  _, opt_state = tx.update(grads, tx.init(params), params)
  return state_lib.TrainState(step=jnp.int32(step), params=params, opt_state=opt_state)


def _state(config, mesh, step=3):
  del config  # every test uses the model shape of _config()
  state = _build_state(step)
  return jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), state, _abstract(state, mesh))


def _host(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_same(tree, expected_host):
  got = _host(tree)
  assert len(got) == len(expected_host)
  for a, b in zip(got, expected_host):
    np.testing.assert_array_equal(a, b)


def _saved(workdir, config, steps, mesh):
  """Save a state at each of `steps` (forced); returns {step: host copy of its leaves}."""
  expected = {}
  with checkpoint.Checkpointer(workdir, config) as ckpt:
    for step in steps:
      state = _state(config, mesh, step)
      assert ckpt.save(step, state, {"position": step * 10}, force=True)
      expected[step] = _host(state)
  return expected


@pytest.mark.slow
def test_restore_onto_other_meshes_and_device_counts(tmp_path):
  config = _config()
  saved = _saved(tmp_path, config, [4], _mesh((8, 1, 1)))[4]
  template = _state(config, _mesh((1, 1, 1)))
  with checkpoint.Checkpointer(tmp_path, config) as ckpt:
    assert ckpt.latest_step() == 4
    for shape in [(2, 2, 2), (1, 1, 1)]:
      abstract = _abstract(template, _mesh(shape))
      state, data_state = ckpt.restore(abstract)
      assert isinstance(state, state_lib.TrainState) and data_state == {"position": 40}
      _assert_same(state, saved)
      for leaf, target in zip(jax.tree.leaves(state), jax.tree.leaves(abstract)):
        assert leaf.sharding == target.sharding
  # The (2, 2, 2) restore really splits some arrays over several axes.
  specs = {_sharding(x.shape, _mesh((2, 2, 2))).spec for x in jax.tree.leaves(template)}
  assert any(sum(a is not None for a in s) >= 2 for s in specs)


def test_every_keep_and_keep_period(tmp_path):
  config = _config(every=2, keep=2, keep_period=4)
  state = _state(config, _mesh((8, 1, 1)))
  with checkpoint.Checkpointer(tmp_path, config) as ckpt:
    started = [s for s in range(1, 11) if ckpt.save(s, state, {"position": s})]
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 10
  saved = [s for s in range(1, 11) if s % 2 == 0]
  kept = {s for s in saved if s in saved[-2:] or s % 4 == 0}
  assert started == saved
  assert {int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()} == kept


def test_async_save_completes_after_the_state_is_freed(tmp_path):
  config = _config()
  state = _state(config, _mesh((8, 1, 1)))
  expected = _host(state)
  abstract = _abstract(state, _mesh((8, 1, 1)))
  with checkpoint.Checkpointer(tmp_path, config) as ckpt:
    assert ckpt.save(2, state, {"position": 2})
    for leaf in jax.tree.leaves(state):  # as a donating train step would
      leaf.delete()
    ckpt.wait_until_finished()
    assert checkpoint.folder_problem(tmp_path / "checkpoints" / "2") is None
    restored, _ = ckpt.restore(abstract, step=2)
  _assert_same(restored, expected)


def _largest_file(folder):
  files = [p for p in folder.rglob("*") if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


def _truncate(folder):
  victim = _largest_file(folder / "params")
  os.truncate(victim, victim.stat().st_size // 2)


def _drop_marker(folder):
  (folder / integrity.COMMIT_FILE).unlink()


def _kill_before_rename(folder):  # what a save killed before its commit leaves locally
  folder.rename(folder.parent / (folder.name + checkpoint.TMP_SUFFIX))


@pytest.mark.parametrize("damage", [_truncate, _drop_marker, _kill_before_rename])
def test_torn_newest_checkpoint_is_skipped_and_kept(tmp_path, caplog, damage):
  config = _config()
  mesh = _mesh((8, 1, 1))
  expected = _saved(tmp_path, config, [2, 4], mesh)
  directory = tmp_path / "checkpoints"
  damage(directory / "4")
  before = sorted(p.name for p in directory.iterdir())
  with caplog.at_level(logging.WARNING), checkpoint.Checkpointer(tmp_path, config) as ckpt:
    assert ckpt.latest_step() == 2
    assert any(str(directory / "4") in r.getMessage() for r in caplog.records)
    # Nothing deleted: the damaged folder is still there (at most renamed aside).
    after = sorted(p.name for p in directory.iterdir())
    assert len(after) == len(before) and any(n.startswith("4.") for n in after)
    abstract = _abstract(_state(config, mesh), mesh)
    with pytest.raises(ValueError, match=str(directory / "4")):
      ckpt.restore(abstract, step=4)
    state, data_state = ckpt.restore(abstract)
    _assert_same(state, expected[2])
    assert data_state == {"position": 20}
    # The run goes on and saves step 4 again.
    assert ckpt.save(4, state, data_state, force=True)
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 4


def test_damage_after_start_is_noticed_by_latest_step(tmp_path, caplog):
  config = _config()
  _saved(tmp_path, config, [2, 4], _mesh((8, 1, 1)))
  with caplog.at_level(logging.WARNING), checkpoint.Checkpointer(tmp_path, config) as ckpt:
    assert ckpt.latest_step() == 4
    _truncate(tmp_path / "checkpoints" / "4")
    assert ckpt.latest_step() == 2
    assert any("checkpoints/4" in r.getMessage() and "bytes" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(ValueError, match="checkpoints/4 is incomplete or corrupted"):
      ckpt.restore(_abstract(_state(_config(), _mesh((1, 1, 1))), _mesh((1, 1, 1))), step=4)


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, params, tokens):
  return nnx.merge(graphdef, params)(tokens)


def test_params_export_loads_into_a_fresh_model(tmp_path):
  config = _config()
  params = _build_state(0).params
  # A fresh model: structure only, no optimizer; the export fills in its parameters.
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: state_lib.new_model(config)), nnx.Param)
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, config.model.vocab_size)
  expected_logits = np.asarray(_logits(graphdef, params, tokens))
  checkpoint.export_params(tmp_path / "export", params, config)
  assert checkpoint.folder_problem(tmp_path / "export") is None
  assert not (tmp_path / "export" / checkpoint.TRAIN_STATE).exists()

  other = _build_state(5).params
  assert not np.allclose(np.asarray(_logits(graphdef, other, tokens)), expected_logits)
  loaded = checkpoint.load_params(tmp_path / "export", abstract)
  np.testing.assert_array_equal(np.asarray(_logits(graphdef, loaded, tokens)), expected_logits)
  assert checkpoint.saved_config(tmp_path / "export").to_dict() == config.to_dict()
  with pytest.raises(ValueError, match="already exists"):
    checkpoint.export_params(tmp_path / "export", params, config)


def test_warm_start_accepts_workdir_checkpoints_dir_and_step_folder(tmp_path, monkeypatch):
  config = _config()
  mesh = _mesh((8, 1, 1))
  _saved(tmp_path, config, [2, 4], mesh)
  abstract = _abstract(_state(config, mesh), _mesh((2, 2, 2))).params
  monkeypatch.chdir(tmp_path.parent)  # relative paths too, as typed on a command line
  for path, step in [(tmp_path, 4), (tmp_path / "checkpoints", 4),
                     (tmp_path / "checkpoints" / "2", 2),
                     (os.path.join(tmp_path.name, "checkpoints", "2"), 2)]:
    _assert_same(checkpoint.load_params(path, abstract), _host(_state(config, mesh, step).params))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="holds no complete checkpoint"):
    checkpoint.load_params(tmp_path / "empty", abstract)


def test_config_and_metadata_round_trip(tmp_path):
  config = _config()
  config.data.tokenizer_path = "/models/tokenizer.model"
  _saved(tmp_path, config, [2], _mesh((8, 1, 1)))
  assert checkpoint.saved_config(tmp_path).to_dict() == config.to_dict()
  meta = json.loads((tmp_path / "checkpoints" / "2" / "meta" / "meta.json").read_text())
  assert meta["step"] == 2 and meta["variant"] == "PHD-CSWA-2-4-8"
  assert meta["tokenizer"] == {"kind": "byte", "path": "/models/tokenizer.model"}
  assert meta["versions"]["jax"] == jax.__version__
  assert meta["device_count"] == jax.device_count()


def test_bad_options_and_data_state_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="checkpoint.keep"):
    checkpoint.Checkpointer(tmp_path, _config(keep=0))
  with pytest.raises(ValueError, match="checkpoint.every"):
    checkpoint.Checkpointer(tmp_path, _config(every=-1))
  with pytest.raises(ValueError, match="checkpoint.keep_period=5 must be a multiple"):
    checkpoint.Checkpointer(tmp_path, _config(every=2, keep_period=5))
  config = _config()
  with checkpoint.Checkpointer(tmp_path, config) as ckpt:
    with pytest.raises(ValueError, match="JSON"):
      ckpt.save(2, _state(config, _mesh((1, 1, 1))), {"rng": object()})
  with pytest.raises(ValueError, match="does not exist"):
    checkpoint.load_params(tmp_path / "missing", {})


@pytest.mark.slow
def test_warm_start_continues_a_vanilla_run_as_phd(tmp_path):
  """Params only, through the config: a Vanilla run's params start a PHD-CSWA-3-16-32 run."""
  def run_config(variant, **fields):
    c = _config()
    c.phd.variant = variant
    c.update(seq_len=16, batch_size=8, log_every=1, eval_every=0, **fields)
    c.data.update(source="synthetic", prefetch=0)
    c.optim.warmup_steps = 0
    return c
  train.train(run_config("Vanilla", num_steps=2), str(tmp_path / "vanilla"))
  phd = run_config("PHD-CSWA-3-16-32", num_steps=1)
  phd.optim.lr = 1e-30  # its one step leaves the float32 params bitwise where they started
  phd.checkpoint.warm_start = str(tmp_path / "vanilla")
  train.train(phd, str(tmp_path / "phd"))

  abstract = state_lib.abstract_state(phd, sharding.make_mesh(phd))
  source = checkpoint.load_params(tmp_path / "vanilla", abstract.params)
  with checkpoint.Checkpointer(tmp_path / "phd", phd) as ckpt:
    state, _ = ckpt.restore(abstract)
  # The Vanilla run trained 2 steps at lr 3e-3: its params are not the fresh init's.
  _assert_same(state.params, _host(source))
  assert int(state.step) == 1  # a new run, not a resume of the Vanilla one (step 2)


def _recorded_files(folder):
  return json.loads((folder / integrity.INTEGRITY_FILE).read_text())["files"]


def test_a_flipped_bit_in_any_file_of_a_step_is_named_before_reading(tmp_path):
  config = _config()
  mesh = _mesh((8, 1, 1))
  expected = _saved(tmp_path, config, [2, 4], mesh)
  folder = tmp_path / "checkpoints" / "4"
  names = sorted(_recorded_files(folder))
  kinds = {name.split("/")[0] for name in names}
  assert kinds == {"params", "train_state", "data", "config", "meta"}, names
  abstract = _abstract(_state(config, mesh), mesh)
  with checkpoint.Checkpointer(tmp_path, config) as ckpt:
    for name in names:
      original = (folder / name).read_bytes()
      flip_a_bit(folder / name)
      assert checkpoint.folder_problem(folder) is None  # same size: only the sum tells
      with pytest.raises(checkpoint.DamagedCheckpoint,
                         match=f"{folder} is corrupted: {name} does not match the crc32"):
        ckpt.restore(abstract, step=4)
      (folder / name).write_bytes(original)
    state, data_state = ckpt.restore(abstract, step=4)  # all restored: reads back whole
  _assert_same(state, expected[4])
  assert data_state == {"position": 40}


def test_checksums_off_records_sizes_only(tmp_path):
  config = _config(checksums=False)
  mesh = _mesh((8, 1, 1))
  expected = _saved(tmp_path, config, [2], mesh)
  folder = tmp_path / "checkpoints" / "2"
  record = json.loads((folder / integrity.INTEGRITY_FILE).read_text())
  assert set(record) == {"files"} and record["files"]
  flip_a_bit(folder / "meta" / "meta.json")  # not read by a restore: unnoticed
  with checkpoint.Checkpointer(tmp_path, config) as ckpt:
    state, _ = ckpt.restore(_abstract(_state(config, mesh), mesh), step=2)
  _assert_same(state, expected[2])


def test_checksums_are_computed_off_the_training_thread(tmp_path, monkeypatch):
  """save() returns while the checksums of its files are still being computed, in another
  thread; the record is complete once the save has finished."""
  config = _config()
  release, threads = threading.Event(), set()
  original = integrity.checksum

  def slow_checksum(path):
    threads.add(threading.current_thread())
    release.wait(timeout=60)
    return original(path)

  monkeypatch.setattr(integrity, "checksum", slow_checksum)
  state = _state(config, _mesh((8, 1, 1)))
  with checkpoint.Checkpointer(tmp_path, config) as ckpt:
    assert ckpt.save(2, state, {"position": 2})
    deadline = time.time() + 60
    while not threads and time.time() < deadline:  # the commit thread reaches the sums
      time.sleep(0.01)
    assert threads and threading.main_thread() not in threads
    assert not (tmp_path / "checkpoints" / "2").exists()  # not committed before its sums
    release.set()
    ckpt.wait_until_finished()
  folder = tmp_path / "checkpoints" / "2"
  record = json.loads((folder / integrity.INTEGRITY_FILE).read_text())
  assert record[integrity.CHECKSUM].keys() == record["files"].keys()
  for name, crc in record[integrity.CHECKSUM].items():
    assert int(crc, 16) == zlib.crc32((folder / name).read_bytes()), name


def test_exports_and_warm_starts_check_the_params_they_read(tmp_path):
  config = _config()
  params = _build_state(0).params
  checkpoint.export_params(tmp_path / "export", params, config)
  _saved(tmp_path / "run", config, [2], _mesh((8, 1, 1)))
  _, abstract = nnx.split(nnx.eval_shape(lambda: state_lib.new_model(config)), nnx.Param)
  for folder in (tmp_path / "export", tmp_path / "run" / "checkpoints" / "2"):
    array_file = max((p for p in (folder / "params").rglob("*") if p.is_file()),
                     key=lambda p: p.stat().st_size)
    flip_a_bit(array_file)
    with pytest.raises(checkpoint.DamagedCheckpoint, match=f"{folder} is corrupted: params/"):
      checkpoint.load_params(folder, abstract)
    assert checkpoint.saved_config(folder).to_dict() == config.to_dict()  # intact: reads


def test_a_step_saved_before_checksums_existed_still_restores(tmp_path):
  config = _config()
  mesh = _mesh((8, 1, 1))
  expected = _saved(tmp_path, config, [2], mesh)
  path = tmp_path / "checkpoints" / "2" / integrity.INTEGRITY_FILE
  path.write_text(json.dumps({"files": json.loads(path.read_text())["files"]}))
  with checkpoint.Checkpointer(tmp_path, config) as ckpt:
    state, _ = ckpt.restore(_abstract(_state(config, mesh), mesh), step=2)
  _assert_same(state, expected[2])
