"""Grid queries: pl.program_id, pl.num_programs and lax.axis_index.

They answer from ``KernelContext.program_ids / program_sizes / grid_names``:
the kernel's grid, or an inner grid while ``scoped_grid`` is in effect (an
emit_pipeline body, rules/pipeline.py)."""
from __future__ import annotations

import numpy as np
from jax._src.lax import parallel as lax_parallel
from jax._src.pallas import primitives as pallas_primitives
from mlir import ir
from mlir.dialects import arith

from pallas_cpu.lowering import devices, values
from pallas_cpu.lowering.registry import register


def _as_i32(ctx, v) -> values.Scalar:
  if isinstance(v, int):
    return ctx.constant(v, np.int32)
  i32 = ir.IntegerType.get_signless(32)
  return values.Scalar(arith.index_cast(i32, v), np.dtype(np.int32))


@register(pallas_primitives.program_id_p)
def _program_id(ctx, *, axis):
  ids = ctx.kernel.program_ids
  if not 0 <= axis < len(ids):
    raise ValueError(f"program_id axis {axis} out of range for a grid of "
                     f"rank {len(ids)}")
  if ids[axis] is None:
    # An emit_pipeline's own axes have indices only inside its body.
    raise ValueError(f"program_id axis {axis} names an emit_pipeline grid "
                     "axis outside the pipeline's body")
  return _as_i32(ctx, ids[axis])


@register(pallas_primitives.num_programs_p)
def _num_programs(ctx, *, axis):
  sizes = ctx.kernel.program_sizes
  if not 0 <= axis < len(sizes):
    raise ValueError(f"num_programs axis {axis} out of range for a grid of "
                     f"rank {len(sizes)}")
  return _as_i32(ctx, sizes[axis])


@register(lax_parallel.axis_index_p)
def _axis_index(ctx, *, axis_name):
  names = ctx.kernel.grid_names
  if axis_name in names:  # a named grid axis: grid=(("i", 4), ...), cores
    return _program_id(ctx, axis=names.index(axis_name))
  if devices.has_axis(ctx.kernel, axis_name):  # a shard_map axis
    return devices.axis_index(ctx.kernel, axis_name)
  raise ValueError(
      f"pallas_cpu: lax.axis_index({axis_name!r}): {axis_name!r} is neither "
      f"a grid or core axis of this kernel "
      f"({[n for n in names if n is not None]}) nor an axis of the shard_map "
      f"it runs in ({[a for a, _ in ctx.kernel.device_mesh]})")
