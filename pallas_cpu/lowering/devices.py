"""Devices of a shard_map, as a kernel sees them: its own logical device
id, ``lax.axis_index`` of the mesh's axes, and the target of a remote DMA or
signal (``device_id`` / ``device_id_type`` as Mosaic reads them).

A logical device id is the row-major index of a device's coordinates over
every axis of the shard_map mesh (``DeviceIdType.MESH`` ids are linearized
that way; ``LOGICAL`` ids are taken as they are); the runtime gives each
kernel instance its own (``pallas_cpu_rt_device_id``).  Below the rules;
marking a kernel collective makes its instances on all devices one launch
(runtime/devices.h).
"""
from __future__ import annotations

from typing import Hashable

import numpy as np
from jax._src import tree_util
from jax._src.pallas import primitives as pallas_primitives
from mlir import ir
from mlir.dialects import arith

from pallas_cpu import abi
from pallas_cpu.lowering import values
from pallas_cpu.lowering.context import KernelContext, scalar_of
from pallas_cpu.lowering.scalars import i64


def as_i64(kctx: KernelContext, v) -> ir.Value:
  """A device or core coordinate (a Python int or a traced scalar) as i64."""
  if isinstance(v, (int, np.integer)):
    return i64(int(v))
  x = scalar_of(kctx, v).value
  t = ir.IntegerType.get_signless(64)
  if isinstance(x.type, ir.IndexType):
    return arith.index_cast(t, x)
  return x if x.type == t else arith.extsi(t, x)


def device_id(kctx: KernelContext) -> ir.Value:
  """This instance's logical device id (i64), read once at entry."""
  state = kctx.rule_state.setdefault("devices", {})
  if "id" not in state:
    with kctx.init_ip:
      (v,) = kctx.call_runtime(abi.RT_DEVICE_ID, [kctx.runtime_ctx],
                               [ir.IntegerType.get_signless(32)])
      state["id"] = arith.extsi(ir.IntegerType.get_signless(64), v)
  return state["id"]


def _strides(kctx: KernelContext) -> list[int]:
  sizes = [n for _, n in kctx.device_mesh]
  return [int(np.prod(sizes[i + 1:], dtype=np.int64))
          for i in range(len(sizes))]


def has_axis(kctx: KernelContext, name: Hashable) -> bool:
  return any(a == name for a, _ in kctx.device_mesh)


def axis_index(kctx: KernelContext, name: Hashable) -> values.Scalar:
  """``lax.axis_index`` of a shard_map axis: this device's coordinate."""
  names = [a for a, _ in kctx.device_mesh]
  k = names.index(name)
  size = kctx.device_mesh[k][1]
  coord = arith.remsi(arith.divsi(device_id(kctx), i64(_strides(kctx)[k])),
                      i64(size))
  i32 = ir.IntegerType.get_signless(32)
  return values.Scalar(arith.trunci(i32, coord), np.dtype(np.int32))


def target(kctx: KernelContext, dev, device_id_type,
           core_axes: tuple = ()) -> tuple[ir.Value, ir.Value | None]:
  """The logical device id (i64) a remote operation addresses, and the
  core it names through a dict entry of a core axis (``core_axes``: the
  kernel's TensorCore mesh axes), or None."""
  kctx.collective = True
  core = None
  if isinstance(dev, dict):
    if device_id_type is not pallas_primitives.DeviceIdType.MESH:
      raise ValueError("`device_id_type` must be MESH if `device_id` is a "
                       f"dict, got {device_id_type}")
    dev = dict(dev)
    for a in core_axes:
      if a in dev:
        core = as_i64(kctx, dev.pop(a))
    unknown = [a for a in dev if not has_axis(kctx, a)]
    if unknown:
      raise ValueError(f"Unrecognized axes in device_id: {unknown} (the "
                       f"shard_map mesh has axes "
                       f"{[a for a, _ in kctx.device_mesh]})")
    coords = [dev[a] if a in dev else axis_index(kctx, a)
              for a, _ in kctx.device_mesh]
  elif device_id_type is pallas_primitives.DeviceIdType.MESH:
    coords = tree_util.tree_leaves(dev)
    if len(coords) != len(kctx.device_mesh):
      raise ValueError(
          "Number of device ids must match the number of mesh axes, but got "
          f"{len(coords)} ids for a {len(kctx.device_mesh)}D mesh"
          + ("" if kctx.device_mesh else " (the kernel is not inside a "
             "shard_map over several devices)"))
  else:  # LOGICAL
    return as_i64(kctx, dev), core
  linear = i64(0)
  for c, stride in zip(coords, _strides(kctx)):
    linear = arith.addi(linear, arith.muli(as_i64(kctx, c), i64(stride)))
  return linear, core
