"""DMAs (pltpu.make_async_copy/async_copy/sync_copy, and remote ones:
make_async_remote_copy) and semaphores (pltpu.semaphore_signal/wait/read,
barrier semaphores), through the C++ runtime (runtime/dma.cc).

A DMA passes its source and destination windows as unranked memrefs, so one
runtime entry point per element type copies between any two strided views;
completion signals the semaphore with the bytes copied, and a wait
decrements, as in TPU interpret mode.  ``start(add=True)`` accumulates into
the destination instead (``_add_kind``).  A window may have a run-time size
(``pl.ds(start, n)`` with a traced ``n``) and may reach into its buffer's
tile padding (rules/memory.py, "DMA windows in a buffer's tile padding"),
which the runtime gets as a pad description (``_padding``)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax._src.pallas import primitives as pallas_primitives
from jax._src.pallas.mosaic import core as tpu_core
from jax._src.pallas.mosaic import primitives as tpu_primitives
from jax._src.state import types as state_types
from mlir import ir
from mlir.dialects import arith, memref

from pallas_cpu import abi
from pallas_cpu.lowering import buffers, devices, values, views
from pallas_cpu.lowering.context import scalar_of
from pallas_cpu.lowering.registry import register
from pallas_cpu.lowering.rules.memory import dma_window, view_of
from pallas_cpu.lowering.scalars import i64 as _i64


def _semaphore(ctx, sem):
  view, _ = view_of(ctx, sem)
  if view.sem_id is None:
    raise ValueError("pallas_cpu: expected a semaphore ref")
  if ir.MemRefType(view.memref.type).rank != 0:
    raise ValueError("pallas_cpu: a semaphore operation needs one semaphore; "
                     "index the semaphore array")
  return view


def _core_axes(kctx) -> tuple:
  """The axes of the kernel's own TensorCore mesh (a dict device id may
  name its core along them)."""
  return tuple(n for n in kctx.grid_names if n is not None)


@register(tpu_primitives.dma_start_p, barrier=True)
def _dma_start(ctx, *args, tree, device_id_type, priority, add):
  src, dst, sem, src_sem, device_id = tree.unflatten(args)
  kctx = ctx.kernel
  # (A window out of bounds is reported as TPU interpret mode words it: an
  # "Out-of-bounds read" of the source, "write" of the destination.)
  ctx.ref_access = "read"
  src_view, src_valid = dma_window(ctx, src)
  ctx.ref_access = "write"
  dst_view, dst_valid = dma_window(ctx, dst)
  ctx.ref_access = None
  _check_shapes(src_view, dst_view)
  add_kind = _add_kind(dst_view.dtype) if add else abi.DMA_COPY
  sem_view = _semaphore(ctx, sem)
  _, _, sem_aval, _, _ = tree.unflatten(ctx.avals_in)
  # A remote copy (device_id given) lands in the same buffer of the same
  # core on the target device and signals that device's `sem`; the
  # sender's `src_sem` counts the read.
  device = _i64(-1)
  if device_id is not None:
    device, core = devices.target(kctx, device_id, device_id_type,
                                  _core_axes(kctx))
    if core is not None:
      raise NotImplementedError(
          "pallas_cpu: a remote DMA to another core (a core axis in "
          "device_id)")
  send_view = _semaphore(ctx, src_sem) if src_sem is not None else sem_view
  elem = ir.MemRefType(src_view.memref.type).element_type
  kctx.call_runtime(abi.rt_dma_start(str(elem)), [
      kctx.runtime_ctx, views.unranked(src_view.memref), views.unranked(dst_view.memref),
      _i64(np.dtype(src_view.dtype).itemsize), sem_view.memref,
      _i64(sem_view.sem_id), send_view.memref,
      _i64(send_view.sem_id if src_sem is not None else -1), device,
      _i64(abi.DMA_MODES[kctx.params.dma_execution_mode]),
      _i64(0 if _is_dma_semaphore(sem_aval) else 1), _i64(add_kind),
      views.unranked(_padding(kctx, src_view, dst_view, src_valid,
                              dst_valid)),
      _i64(kctx.site(f"DMA start at {ctx.source}")), kctx.grid_index()])
  return []


def _check_shapes(src_view, dst_view) -> None:
  """The DMA's windows agree in dtype and in every size known now; sizes
  known only at run time are compared by the runtime."""
  a, b = src_view.shape, dst_view.shape
  if (src_view.dtype != dst_view.dtype or len(a) != len(b) or any(
      m != n for m, n in zip(a, b)
      if views.DYN_SIZE not in (m, n))):
    raise ValueError(
        f"pallas_cpu: DMA from {views.shape_text(a)} {src_view.dtype} to "
        f"{views.shape_text(b)} {dst_view.dtype}: shapes and dtypes must match")


def _padding(kctx, src_view, dst_view, src_valid, dst_valid) -> ir.Value:
  """The runtime's description of a DMA reaching into tile padding
  (rules/memory.py, "DMA windows in a buffer's tile padding"):
  [fill bits, the source's valid count per dimension, the destination's],
  or an empty memref when both windows lie inside their logical shapes."""
  i64 = ir.IntegerType.get_signless(64)
  if src_valid is None and dst_valid is None:
    state = kctx.rule_state.setdefault("dma", {})
    if "no_padding" not in state:
      with kctx.alloc_ip:
        state["no_padding"] = memref.AllocaOp(
            ir.MemRefType.get([0], i64), [], []).result
    return state["no_padding"]
  rank = len(src_view.shape)
  with kctx.alloc_ip:
    buf = memref.AllocaOp(ir.MemRefType.get([1 + 2 * rank], i64), [],
                          []).result
  words = [arith.constant(i64, buffers.uninitialized_bits(
      kctx, src_view.dtype))]
  for view, valid in ((src_view, src_valid), (dst_view, dst_valid)):
    counts = valid if valid is not None else views.sizes_of(view.memref)
    words += [arith.index_cast(i64, views.as_index(n)) for n in counts]
  for k, word in enumerate(words):
    memref.store(word, buf, [views.as_index(k)])
  return buf


def _add_kind(dtype) -> int:
  """The runtime's arithmetic for ``start(add=True)``: each destination
  element becomes ``dst + src`` in the element type (floats rounded to
  nearest even, 16-bit ones added in f32 as XLA adds them; integers wrap).

  Mosaic's TensorCore lowering rejects add=True in this JAX (the SparseCore
  one takes it for indexed gathers/scatters only), interpret=True's
  discharge rule raises NotImplementedError, and TPU interpret mode ignores
  the flag (it overwrites): the meaning here is the one the flag names, an
  accumulating copy, checked against ``dst + src`` computed by jnp."""
  dtype = np.dtype(dtype)
  if dtype.name in abi.DMA_ADD_FLOAT:
    return abi.DMA_ADD_FLOAT[dtype.name]
  if np.issubdtype(dtype, np.integer):
    return abi.DMA_ADD_INT
  raise NotImplementedError(
      f"pallas_cpu: DMA with add=True of {dtype} elements (supported: "
      "float32, float64, bfloat16, float16 and integers)")


def _is_dma_semaphore(aval) -> bool:
  """Whether a semaphore ref's aval is a DMA semaphore (completions count
  bytes) rather than a REGULAR or barrier one (a completion counts 1)."""
  while not hasattr(aval, "dtype") and hasattr(aval, "ref"):
    aval = aval.ref  # a TransformedRef's underlying ref
  dtype = getattr(aval, "dtype", None)
  return dtype is not None and jnp.issubdtype(dtype, tpu_core.dma_semaphore)


def _wait(ctx, sem_view, value: ir.Value) -> None:
  kctx = ctx.kernel
  i32 = ir.IntegerType.get_signless(32)
  kctx.call_runtime(abi.RT_SEM_WAIT, [
      kctx.runtime_ctx, sem_view.memref, value, _i64(sem_view.sem_id),
      kctx.grid_index()], [i32])


@register(tpu_primitives.dma_wait_p, barrier=True)
def _dma_wait(ctx, *args, tree, device_id_type, insert_dummy_device=False):
  # A remote copy's wait_recv waits on the receiver's own `sem`, its
  # wait_send (src and dst swapped, insert_dummy_device) on the sender's
  # send semaphore: both are local waits for the bytes copied.
  src, dst, sem, src_sem, device_id = tree.unflatten(args)
  dst_view, _ = dma_window(ctx, dst)
  # (JAX only lets a DMA semaphore be waited here; a REGULAR one that a DMA
  # signalled is waited with semaphore_wait, for its one completion.)  The
  # bytes of the whole window, its tile padding included, as the DMA counts
  # them; a window of run-time size counts at run time.
  i32 = ir.IntegerType.get_signless(32)
  itemsize = np.dtype(dst_view.dtype).itemsize
  sizes = views.sizes_of(dst_view.memref)
  static = int(np.prod([n for n in sizes if isinstance(n, int)])) * itemsize
  if static > np.iinfo(np.int32).max:
    raise ValueError(f"pallas_cpu: a DMA of {static} bytes at {ctx.source}: a "
                     "DMA semaphore counts at most 2^31 - 1")
  nbytes = arith.constant(i32, static)
  for n in sizes:
    if not isinstance(n, int):
      nbytes = arith.muli(nbytes, arith.index_cast(i32, n))
  _wait(ctx, _semaphore(ctx, sem), nbytes)
  return []


@register(pallas_primitives.semaphore_signal_p, barrier=True)
def _semaphore_signal(ctx, *args, args_tree, device_id_type):
  sem, transforms, value, device_id, core_index = args_tree.unflatten(args)
  kctx = ctx.kernel
  sem_view = _semaphore(ctx, _transformed(sem, transforms))
  if device_id is None and core_index is None:
    kctx.call_runtime(abi.RT_SEM_SIGNAL, [
        kctx.runtime_ctx, sem_view.memref, scalar_of(kctx, value).value,
        _i64(sem_view.sem_id), kctx.grid_index()])
    return []
  # The same semaphore on core `core_index` of device `device_id` (each
  # has its own copy, as every kernel-owned semaphore is per core); without
  # core_index, the signalling core's own (Mosaic: no core id; interpret
  # mode: core 0), without device_id, the signalling device.
  device = core = None
  if device_id is not None:
    device, core = devices.target(kctx, device_id, device_id_type,
                                  _core_axes(kctx))
    if core is not None and core_index is not None:
      raise ValueError("Cannot specify both `core_index` and the core axis "
                       "in `device_id`.")
  if core_index is not None:
    core = devices.as_i64(kctx, core_index)
  kctx.call_runtime(abi.RT_SEM_SIGNAL_REMOTE, [
      kctx.runtime_ctx, _i64(sem_view.sem_id),
      views.element_offset(sem_view.memref), scalar_of(kctx, value).value,
      device if device is not None else _i64(-1),
      core if core is not None else _i64(-1), kctx.grid_index()])
  return []


@register(pallas_primitives.semaphore_wait_p, barrier=True)
def _semaphore_wait(ctx, *args, args_tree):
  sem, transforms, value, decrement = args_tree.unflatten(args)
  if decrement is not None and not _is_true(decrement):
    raise NotImplementedError("pallas_cpu: non-decrementing semaphore wait")
  _wait(ctx, _semaphore(ctx, _transformed(sem, transforms)),
        scalar_of(ctx.kernel, value).value)
  return []


@register(pallas_primitives.semaphore_read_p, barrier=True)
def _semaphore_read(ctx, *args, args_tree):
  sem, transforms = args_tree.unflatten(args)
  kctx = ctx.kernel
  sem_view = _semaphore(ctx, _transformed(sem, transforms))
  i32 = ir.IntegerType.get_signless(32)
  (v,) = kctx.call_runtime(abi.RT_SEM_READ,
                           [kctx.runtime_ctx, sem_view.memref], [i32])
  return values.Scalar(v, np.dtype(np.int32))


def _transformed(sem, transforms):
  if not transforms:
    return sem
  return state_types.TransformedRef(sem, tuple(transforms))


def _is_true(x) -> bool:
  """A static flag (``decrement``): a Python value, or a constant operand
  (a jaxpr literal reaches the rule as a constant scalar)."""
  if isinstance(x, (bool, int, np.bool_, np.integer)):
    return bool(x)
  if isinstance(x, values.Scalar):
    const = views.constant_int(x.value)
    if const is not None:
      return bool(const)
    op = getattr(x.value.owner, "operation", x.value.owner)
    if isinstance(op, ir.Operation) and op.name == "arith.constant":
      attr = op.attributes["value"]
      if isinstance(attr, ir.BoolAttr):
        return bool(ir.BoolAttr(attr).value)
  raise NotImplementedError("pallas_cpu: a semaphore wait whose `decrement` "
                            "is not a constant")


@register(tpu_primitives.get_barrier_semaphore_p)
def _get_barrier_semaphore(ctx):
  """The kernel's barrier semaphore (pltpu.get_barrier_semaphore): one per
  kernel invocation, zero at entry.  Devices signal each other's through it
  (the kernel is collective: its instances start together, so no signal
  arrives before the semaphore exists)."""
  ctx.kernel.collective = True
  state = ctx.kernel.rule_state
  if "barrier_semaphore" not in state:
    state["barrier_semaphore"] = buffers.new_semaphores(
        ctx.kernel, (), "barrier semaphore")
  return state["barrier_semaphore"]
