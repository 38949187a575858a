"""sharding.make_mesh follows the topology or says why not: multislice puts `data` across slices
(DCN), other axes inside a slice (ICI); no silent topology-unaware fallback off CPU."""
import jax
import numpy as np
import pytest
from jax.experimental import mesh_utils

from wc_jax import sharding


def test_cpu_devices_keep_their_order():
  mesh = sharding.make_mesh({"data": 2, "fsdp": -1})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "context": 1, "tensor": 1}
  assert [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()]


def test_multislice_uses_the_hybrid_mesh_with_data_across_slices(monkeypatch):
  calls = []

  def hybrid(ici, dcn, devices, **kw):
    calls.append((list(ici), list(dcn)))
    return np.asarray(devices).reshape([i * d for i, d in zip(ici, dcn)])

  monkeypatch.setenv("MEGASCALE_NUM_SLICES", "2")
  monkeypatch.setattr(mesh_utils, "create_hybrid_device_mesh", hybrid)
  mesh = sharding.make_mesh({"data": 2, "fsdp": -1})
  assert calls == [([1, 4, 1, 1], [2, 1, 1, 1])]
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "context": 1, "tensor": 1}
  with pytest.raises(ValueError, match=r"spans 2 slices .*mesh.data must be a multiple of 2"):
    sharding.make_mesh({"data": 1, "fsdp": -1})


def test_a_layout_that_cannot_follow_the_topology_is_an_error(monkeypatch):
  class FakeTpu:
    platform, device_kind, slice_index = "tpu", "TPU v5p", 0

    def __init__(self, i):
      self.id = i

  def refuse(shape, devices=None, **kw):
    raise AssertionError("cannot map the mesh onto the physical axes")

  monkeypatch.delenv("MEGASCALE_NUM_SLICES", raising=False)
  monkeypatch.setattr(mesh_utils, "create_device_mesh", refuse)
  devices = [FakeTpu(i) for i in range(8)]
  with pytest.raises(ValueError, match=r"mesh \{'data': 1, 'fsdp': 2, 'context': 1, 'tensor': 4\} \(axes \('data', "
                     r"'fsdp', 'context', 'tensor'\), shape \(1, 2, 1, 4\)\) cannot follow the topology of the 8 "
                     r"TPU v5p devices: cannot map"):
    sharding._device_array({"data": 1, "fsdp": 2, "context": 1, "tensor": 4}, devices)


def test_a_mesh_axis_may_split_a_physical_axis_when_nothing_else_fits(monkeypatch):
  """data=2 x context=2 x tensor=16 on a 4x4x4 slice: no physical axis is 2 long, so one of 4 is split
  in two (allow_split_physical_axes), and said in the log."""
  class FakeTpu:
    platform, device_kind, slice_index = "tpu", "TPU v5p", 0

    def __init__(self, i):
      self.id = i

  calls = []

  def create(shape, devices=None, allow_split_physical_axes=False, **kw):
    calls.append(allow_split_physical_axes)
    if not allow_split_physical_axes:
      raise AssertionError("logical axis of size 2 with remaining assignable mesh [0, 0, 4]")
    return np.asarray(devices).reshape(shape)

  monkeypatch.delenv("MEGASCALE_NUM_SLICES", raising=False)
  monkeypatch.setattr(mesh_utils, "create_device_mesh", create)
  arr = sharding._device_array({"data": 2, "fsdp": 1, "context": 2, "tensor": 16}, [FakeTpu(i) for i in range(64)])
  assert arr.shape == (2, 1, 2, 16) and calls == [False, True]
