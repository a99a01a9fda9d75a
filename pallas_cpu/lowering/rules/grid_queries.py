"""Grid queries: pl.program_id and pl.num_programs."""
from __future__ import annotations

import numpy as np
from jax._src.pallas import primitives as pallas_primitives
from mlir import ir
from mlir.dialects import arith

from pallas_cpu.lowering import values
from pallas_cpu.lowering.registry import register


@register(pallas_primitives.program_id_p)
def _program_id(ctx, *, axis):
  ids = ctx.kernel.program_ids
  if not 0 <= axis < len(ids):
    raise ValueError(f"program_id axis {axis} out of range for a grid of "
                     f"rank {len(ids)}")
  i32 = ir.IntegerType.get_signless(32)
  return values.Scalar(arith.index_cast(i32, ids[axis]), np.dtype(np.int32))


@register(pallas_primitives.num_programs_p)
def _num_programs(ctx, *, axis):
  kctx = ctx.kernel
  sizes = [g for d, g in enumerate(kctx.grid) if d not in kctx.vmapped_dims]
  if not 0 <= axis < len(sizes):
    raise ValueError(f"num_programs axis {axis} out of range for a grid of "
                     f"rank {len(sizes)}")
  if isinstance(sizes[axis], int):
    return ctx.constant(sizes[axis], np.int32)
  i32 = ir.IntegerType.get_signless(32)  # a dynamic grid bound
  return values.Scalar(arith.index_cast(i32, sizes[axis]), np.dtype(np.int32))
