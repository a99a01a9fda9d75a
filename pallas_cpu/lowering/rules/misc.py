"""Primitives that mean little on a CPU core, lowered as Mosaic lowers them
where that has a CPU meaning: identities, no-ops, Mosaic's branch of
``platform_dependent``, and ``dim_as_value`` of a concrete dimension."""
from __future__ import annotations

import numpy as np
from jax._src import ad_util
from jax._src import core as jax_core
from jax._src import pjit
from jax._src.export import shape_poly
from jax._src.lax import control_flow as lax_cf
from jax._src.pallas import primitives as pallas_primitives
from jax._src.pallas.mosaic import primitives as tpu_primitives
from jax._src.state import types as state_types

from mlir.dialects import arith

from pallas_cpu.lowering import buffers
from pallas_cpu.lowering.registry import register
from pallas_cpu.lowering.rules.elementwise import binary

# add_any (gradient accumulation inside custom VJP bodies) is an add.
register(ad_util.add_any_p)(binary(arith.addf, arith.addi))


@register(jax_core.stage_p)
def _stage(ctx, x):
  return x


@register(pjit.reshard_p)
def _reshard(ctx, x, **_):
  return x  # one CPU core: no sharding inside a kernel


@register(lax_cf.platform_index_p)
def _platform_index(ctx, *, platforms, **_):
  """The kernel is a Mosaic kernel: take the branch Mosaic would (the one
  naming "mosaic", else the default -- not "tpu", XLA's TPU platform)."""
  for i, ps in enumerate(platforms):
    if ps is None or "mosaic" in ps:
      return ctx.constant(i, np.int32)
  raise NotImplementedError("platform_dependent without a mosaic or default "
                            "branch")


@register(pallas_primitives.delay_p, pure=False)
def _delay(ctx, nanos):
  """pltpu.delay stalls a TPU core for some nanoseconds; on the CPU nothing
  waits on it (no other core observes the timing), so it is a no-op."""
  return []


@register(tpu_primitives.trace_value_p, pure=False)
def _trace_value(ctx, value, *, label):
  """Values traced for the TPU profiler: no profiler here, a no-op."""
  return []


@register(tpu_primitives.touch_p, pure=False)
def _touch(ctx, x):
  """pltpu.touch orders effects on TPU; compiled code runs in order."""
  return []


@register(jax_core.empty_ref_p, pure=False)
def _empty_ref(ctx, *args, **params):
  """A fresh ref (jax.empty_ref inside a kernel): scratch memory filled with
  the uninitialized-memory value."""
  (aval,) = ctx.avals_out
  ref_aval = aval if isinstance(aval, state_types.AbstractRef) else (
      state_types.AbstractRef(aval))
  return buffers.allocate_ref(ctx.kernel, ref_aval, ("empty_ref", id(ctx.eqn)),
                              f"empty_ref at {ctx.source}")


@register(shape_poly.dim_as_value_p)
def _dim_as_value(ctx, *, dim):
  """A dimension size used as a value.  Mosaic replaces a symbolic one by a
  placeholder patched when the kernel is specialized; a compiled kernel
  here is native code for concrete shapes, so only a known size lowers."""
  if not jax_core.is_constant_dim(dim):
    raise NotImplementedError(
        f"pallas_cpu: the symbolic dimension {dim} is used as a value in the "
        "kernel: shape-polymorphic export (jax.export with symbolic shapes) "
        "of compiled kernels is not supported, the kernel needs concrete "
        "shapes (export with concrete shapes, or with interpret=True)")
  return ctx.constant(int(dim), ctx.avals_out[0].dtype)
