"""One MLIR context per thread, reused by the kernels that thread lowers
and compiles.

Creating a context loads every dialect the bindings know (about 4 ms); a
test suite compiles hundreds of small kernels, two contexts each.  Nothing
built in a context outlives its use here -- a kernel leaves the lowering
as text and the compile driver as native code -- so one context serves
many kernels.  Types and attributes are uniqued in a context for its
lifetime, so a thread's context is replaced after ``_USES`` kernels to
bound that memory.  Threads Python did not start are not given one to
keep (see ``kernel_context``).
"""
from __future__ import annotations

import contextlib
import threading

from mlir import ir

_USES = 64
_local = threading.local()


@contextlib.contextmanager
def kernel_context():
  """``with kernel_context():`` -- an MLIR context and an unknown location,
  as ``with ir.Context(), ir.Location.unknown():`` gives, but reused."""
  if isinstance(threading.current_thread(), threading._DummyThread):
    # A thread Python did not start (XLA's, calling the compile hook): its
    # thread state -- and any thread-local -- is torn down when the call
    # returns, and an MLIR object freed in that teardown crashes.  Such
    # a thread gets a context of its own for this use only.
    with ir.Context() as ctx, ir.Location.unknown():
      yield ctx
    return
  ctx = getattr(_local, "ctx", None)
  depth = getattr(_local, "depth", 0)
  if ctx is None or (depth == 0 and _local.uses >= _USES):
    ctx = _local.ctx = ir.Context()
    _local.uses = 0
  _local.uses += 1
  _local.depth = depth + 1
  try:
    with ctx, ir.Location.unknown():
      yield ctx
  finally:
    _local.depth -= 1
