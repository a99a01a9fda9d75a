"""The instrumented build's hooks: each ref operation reports the window it
reads or writes to the runtime's race detector (runtime/races.h), with the
user's source line.  With ``CompilerParams(detect_races=False)`` -- the
default -- nothing here emits anything: the plain build carries no trace
of instrumentation (test/lit/races.py checks it).
"""
from __future__ import annotations

import numpy as np
from mlir import ir

from pallas_cpu import abi
from pallas_cpu.lowering import views
from pallas_cpu.lowering.context import KernelContext
from pallas_cpu.lowering.scalars import i64


def enabled(kctx: KernelContext) -> bool:
  return kctx.params.detect_races


def access(kctx: KernelContext, view: ir.Value, dtype, *, write: bool,
           what: str) -> None:
  """A read (or write) of the strided window ``view`` by the kernel;
  ``what`` says which operation, for reports ("read of input 0 'x_ref'
  at kernel.py:12")."""
  if not enabled(kctx):
    return
  elem = ir.MemRefType(view.type).element_type
  kctx.call_runtime(abi.rt_race_access(str(elem)), [
      kctx.runtime_ctx, views.unranked(view),
      i64(np.dtype(dtype).itemsize), i64(int(write)), i64(kctx.site(what)),
      kctx.grid_index()])
