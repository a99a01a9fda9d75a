"""Kernel buffers: scratch and scoped refs, semaphore arrays, the fill of
memory the kernel never wrote, the checks when a buffer's life ends, and
what each ref is called in messages.

Below the rules (run_scoped, empty_ref, barrier semaphores allocate here)
and the grid (scratch operands, edge-block padding); storage itself comes
from ``KernelContext.alloc``, hoisted to the kernel's entry.
"""
from __future__ import annotations

import numpy as np
from jax._src import core as jax_core
from jax._src import state
from jax._src.pallas import core as pallas_core
from mlir import ir
from mlir.dialects import arith, linalg, memref, scf

from pallas_cpu import abi
from pallas_cpu.lowering import memory_spaces, types, values, views
from pallas_cpu.lowering.context import KernelContext, Ref
from pallas_cpu.lowering.scalars import i64


# -- allocation ----------------------------------------------------------------------
def is_semaphore(aval) -> bool:
  return isinstance(getattr(aval, "dtype", None),
                    pallas_core.AbstractSemaphoreTy)


def new_semaphores(kctx: KernelContext, shape, name: str) -> Ref:
  """A zeroed array of semaphores (hoisted like every allocation), owned
  by the kernel: checked at its exit (``semaphore_exit``)."""
  buf = kctx.alloc(shape, np.int32, memory_spaces.SEMAPHORE, name=name)
  with kctx.init_ip:
    zero = arith.constant(ir.IntegerType.get_signless(32), 0)
    linalg.fill(zero, outs=[buf]) if shape else memref.store(zero, buf, [])
  sem_id = len(kctx.semaphore_names)
  kctx.semaphore_names.append(name)
  kctx.semaphore_arrays[sem_id] = buf
  with kctx.init_ip:  # other cores find (and signal) it through the runtime
    kctx.call_runtime(abi.RT_SEM_REGISTER, [
        kctx.runtime_ctx, i64(sem_id), views.address(buf),
        i64(int(np.prod(shape, dtype=np.int64)))])
  with kctx.alloc_ip:
    view = views.with_layout(buf)
  return Ref(view, ("semaphore", sem_id), np.dtype(np.int32), sem_id)


def uninitialized_value(kctx: KernelContext, dtype):
  """The fill value of memory the kernel never wrote: under "nan", that of
  ``interpret=True`` (``pallas.primitives.uninitialized_value``): NaN for
  floats, the minimum for integers (INT_MIN signed, 0 unsigned), False for
  bool -- and 0 for int16, which interpret mode treats as its semaphore
  dtype.  (TPU interpret mode fills integers with their maximum and bool
  with True instead.)"""
  dtype = np.dtype(dtype)
  if kctx.params.uninitialized_memory == "zero":
    return 0
  if types.is_float(dtype):
    return float("nan")
  if types.is_bool(dtype):
    return False
  if dtype == np.int16:
    return 0
  return int(types.iinfo(dtype).min)


def uninitialized_scalar(kctx: KernelContext, dtype) -> values.Scalar:
  """``uninitialized_value`` as a constant of ``dtype``."""
  return kctx.constant(uninitialized_value(kctx, dtype), np.dtype(dtype))


def uninitialized_bits(kctx: KernelContext, dtype) -> int:
  """The bits of ``uninitialized_value`` in one element of ``dtype`` as
  memory holds it (sub-byte integers: a byte), as an unsigned int."""
  dtype = np.dtype(dtype)
  value = uninitialized_value(kctx, dtype)
  if types.is_float(dtype):
    return int(np.array(value, dtype).view(f"u{dtype.itemsize}"))
  return int(value) & ((1 << (8 * dtype.itemsize)) - 1)


def allocate_ref(kctx: KernelContext, aval, root, name: str, *,
                 at_entry: bool = False) -> Ref:
  """Memory for a scratch or run_scoped ref: semaphores zeroed, buffers
  filled with the uninitialized-memory value (interpret mode's default):
  ``at_entry``, before the kernel's actors start together (a kernel-level
  scratch buffer another device may write as soon as they have), else
  here."""
  if not isinstance(aval, state.AbstractRef):
    raise NotImplementedError(f"pallas_cpu: scratch operand {aval} is not "
                              "supported yet")
  inner = aval.inner_aval
  if is_semaphore(inner):
    return new_semaphores(kctx, inner.shape, name)
  if not isinstance(inner, jax_core.ShapedArray):
    raise NotImplementedError(f"pallas_cpu: scratch operand {aval} is not "
                              "supported yet")
  space = memory_spaces.from_pallas(aval.memory_space)
  if space in (memory_spaces.ANY, memory_spaces.HBM):
    if kctx.mesh_cores > 0:
      return _shared_ref(kctx, inner, root)
    space = memory_spaces.VMEM  # scratch in HBM is still host memory here
  buf = kctx.alloc(inner.shape, inner.dtype, space, name=name)
  if at_entry:
    with kctx.init_ip:
      kctx.store(uninitialized_scalar(kctx, inner.dtype), buf)
  else:
    kctx.store(uninitialized_scalar(kctx, inner.dtype), buf)
  return Ref(views.with_layout(buf), root, np.dtype(inner.dtype))


def _shared_ref(kctx: KernelContext, inner, root) -> Ref:
  """An HBM buffer of a mesh kernel: one per device, shared by its cores
  (as HBM is on TPU, and in TPU interpret mode), filled once by core 0
  before the cores start -- not again when a run_scoped scope reopens,
  since other cores may be using it."""
  buf = kctx.shared(inner.shape, inner.dtype, memory_spaces.HBM)
  lo = kctx.entry.arguments[1]  # a mesh kernel's core index (abi.h: lo)
  with kctx.init_ip:
    first = arith.cmpi(arith.CmpIPredicate.eq, lo, i64(0))
    if_op = scf.IfOp(first)
    with ir.InsertionPoint(if_op.then_block):
      kctx.store(uninitialized_scalar(kctx, inner.dtype), buf)
      scf.YieldOp([])
  return Ref(views.with_layout(buf), root, np.dtype(inner.dtype))


# -- end-of-life checks (runtime/abi.h) -------------------------------------------------
def semaphore_exit(kctx: KernelContext, buf: ir.Value, sem_id: int, *,
                   scoped: bool, grid_index: ir.Value) -> None:
  """Reports a semaphore array's leftover counts and unwaited DMAs; a
  scoped array is zeroed for its scope's next entry (also when unchecked)."""
  mode = abi.EXIT_CHECK_MODES[kctx.params.exit_checks]
  if mode == abi.EXIT_CHECK_MODES["off"] and not scoped:
    return
  count = int(np.prod(ir.MemRefType(buf.type).shape, dtype=np.int64))
  kctx.call_runtime(abi.RT_SEM_EXIT, [
      kctx.runtime_ctx, views.address(buf), i64(count), i64(sem_id),
      i64(int(scoped)), i64(mode), grid_index])


def buffer_exit(kctx: KernelContext, ref: Ref, site: int,
                grid_index: ir.Value) -> None:
  """A scoped buffer ends: a DMA still reading or writing it is an error."""
  t = ir.MemRefType(ref.memref.type)
  nbytes = int(np.prod(t.shape, dtype=np.int64)) * np.dtype(ref.dtype).itemsize
  kctx.call_runtime(abi.RT_BUFFER_EXIT, [
      kctx.runtime_ctx, views.address(ref.memref, np.dtype(ref.dtype).itemsize),
      i64(nbytes), i64(site), grid_index])


# -- names for messages ------------------------------------------------------------------
def name_ref(kctx: KernelContext, ref: Ref, name: str) -> None:
  """Records what a kernel argument is (``input 0 'x_ref'``...), by its
  memref, and by its root for views made from it."""
  kctx.rule_state.setdefault("ref_names", {})[ref.memref] = name
  kctx.rule_state.setdefault("root_names", {}).setdefault(ref.root, name)


def describe_ref(kctx: KernelContext, ref) -> str:
  """What ``ref`` is, in the user's terms: ``input 0 'x_ref'``, ``scratch
  operand 1 'acc_ref'``, a semaphore's name..."""
  memref_value = getattr(ref, "memref", None)
  name = kctx.rule_state.get("ref_names", {}).get(memref_value)
  if name is None:
    name = kctx.rule_state.get("root_names", {}).get(ref.root)
  if name is None and getattr(ref, "sem_id", None) is not None:
    name = kctx.semaphore_names[ref.sem_id]
  if name is None:
    kind = ref.root[0] if isinstance(ref.root, tuple) and ref.root else None
    name = {"scoped": "a run_scoped ref"}.get(kind, f"a kernel ref ({ref.root})")
  return name
