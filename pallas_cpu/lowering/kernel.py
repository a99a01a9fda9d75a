"""pallas_call -> MLIR module: the entry function the custom call invokes.

``func.func @<entry>(%rt: !llvm.ptr, %operands...)`` takes the runtime
context and one ``hbm`` (``smem`` for scalar prefetch) memref per XLA buffer
-- inputs, then outputs -- and contains the grid loop nest.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jax._src import core as jax_core
from mlir import ir
from mlir.dialects import arith, func, llvm, memref, scf

from pallas_cpu import abi
from pallas_cpu.lowering import buffers
from pallas_cpu.lowering import context as context_lowering
from pallas_cpu.lowering import grid as grid_lowering
from pallas_cpu.lowering import jaxpr as jaxpr_lowering
from pallas_cpu.lowering import memory_spaces, types, views
# The entry fills the rule table: each rule module registers its rules
# with registry.register when imported (as JAX's lowering rules fill
# mlir.register_lowering's table); the registry imports none of them.
from pallas_cpu.lowering import rules  # noqa: F401
from pallas_cpu.lowering.context import KernelContext, Ref
from pallas_cpu.lowering import scalars
from pallas_cpu.lowering.scalars import i64
from pallas_cpu.params import CompilerParams


@dataclasses.dataclass(frozen=True)
class KernelSpec:
  """Everything of a pallas_call equation the lowering needs."""
  name: str
  jaxpr: jax_core.Jaxpr
  grid_mapping: object
  in_avals: tuple
  out_avals: tuple
  input_output_aliases: tuple
  params: CompilerParams
  opt_level: int
  # Microseconds of calls after which the runtime asks for the kernel's -O3
  # build (a kernel the cost model built at -O0; runtime/kernel_registry.h);
  # None: the level is final.
  tier_up_after_us: int | None = None
  parallel_dim: int | None = None  # grid dimension split across threads
  # Without one: the blocks' row bands run by threads (grid.RowSplit);
  # with one, maybe each step's bands in turn (RowSplit.threaded False).
  row_split: object = None
  # (grid dimension, its steps as written) when the kernel runs on blocks
  # spanning that dimension (coalesce.py; jaxpr and grid_mapping are then
  # the coalesced ones); None for the kernel as written.
  coalesced: tuple[int, int] | None = None
  # Parallel grid dimensions whose iterations run in a seeded random order
  # (CompilerParams(grid_order="random")), with their permutations.
  permuted_dims: tuple[tuple[int, tuple[int, ...]], ...] = ()
  # The shard_map mesh the kernel runs in, ((axis name, size), ...); () on
  # one device.
  device_mesh: tuple[tuple[str, int], ...] = ()
  # The cores of the TensorCore mesh it runs over (pl.kernel/core_map); 0
  # without one.
  mesh_cores: int = 0


def _band_range(spec: KernelSpec, block) -> tuple | None:
  """The row bands each step runs: this thread's share (the runtime's
  range, for a split across threads) or all of them (cache bands)."""
  split = spec.row_split
  if split is None:
    return None
  if split.threaded:
    return (views.as_index(block.arguments[1]),
            views.as_index(block.arguments[2]))
  return (views.as_index(0), views.as_index(split.bands))


def lower_kernel(spec: KernelSpec) -> ir.Module:
  """Builds the kernel module in the current MLIR context."""
  gm = spec.grid_mapping
  jaxpr_lowering.check_supported(spec.jaxpr, spec.name)
  for bm in gm.block_mappings:
    jaxpr_lowering.check_supported(bm.index_map_jaxpr.jaxpr,
                                   f"{spec.name} (index map of {bm.origin})")

  # Operands: dynamic grid bounds (traced sizes of grid dimensions), scalar
  # prefetch, inputs, outputs.
  n_dyn = gm.num_dynamic_grid_bounds
  n_index = gm.num_index_operands
  operand_avals = [*spec.in_avals, *spec.out_avals]
  operand_types = []
  for i, a in enumerate(operand_avals):
    if not jax_core.is_constant_shape(a.shape):  # jax.export, symbolic dims
      raise NotImplementedError(
          f"pallas_cpu cannot lower kernel '{spec.name}': operand of shape "
          f"{a.shape} is shape-polymorphic; compiled kernels need concrete "
          "shapes (export with concrete shapes, or with interpret=True)")
    space = memory_spaces.SMEM if i < n_dyn + n_index else memory_spaces.HBM
    operand_types.append(types.memref_type(a.shape, a.dtype,
                                           memory_spaces.attr(space)))

  module = ir.Module.create()
  with ir.InsertionPoint(module.body):
    ptr = llvm.PointerType.get()
    i64_t = ir.IntegerType.get_signless(64)
    entry = func.FuncOp(abi.ENTRY, ir.FunctionType.get(
        [ptr, i64_t, i64_t, *operand_types], []))
    entry.attributes["llvm.emit_c_interface"] = ir.UnitAttr.get()
    # LLVM's x86 cost model stops at 256-bit vectors by default; the
    # kernels' loops are long and load/store-bound, where 512-bit halves
    # the instructions (a resident (8, 128) f32 block: 64 stores, not 128).
    entry.attributes["passthrough"] = ir.ArrayAttr.get([ir.ArrayAttr.get([
        ir.StringAttr.get("prefer-vector-width"), ir.StringAttr.get("512")])])
    # XLA gives every operand its own buffer unless input_output_aliases pairs
    # them: telling LLVM lets it keep values in registers and vectorize
    # loops that read one operand and write another.
    aliased = {n_dyn + i for i, _ in spec.input_output_aliases} | {
        len(spec.in_avals) + o for _, o in spec.input_output_aliases}
    noalias = ir.DictAttr.get({"llvm.noalias": ir.UnitAttr.get()})
    entry.arg_attrs = ir.ArrayAttr.get(
        [ir.DictAttr.get({})] * 3 + [
            ir.DictAttr.get({}) if i in aliased else noalias
            for i in range(len(operand_types))])
  attrs = module.operation.attributes
  attrs[abi.KERNEL_NAME_ATTR] = ir.StringAttr.get(spec.name)
  attrs[abi.OPT_LEVEL_ATTR] = ir.IntegerAttr.get(
      ir.IntegerType.get_signless(32), spec.opt_level)
  if spec.tier_up_after_us is not None:
    attrs[abi.TIER_UP_ATTR] = ir.IntegerAttr.get(
        ir.IntegerType.get_signless(64), spec.tier_up_after_us)
  block = entry.add_entry_block()
  with ir.InsertionPoint(block):
    # Allocations go above the anchor; then the entry checks they all
    # succeeded (runtime/abi.h: a failed one fails the call) and runs the
    # kernel only if so.
    anchor = arith.constant(ir.IndexType.get(), 0)
    i32 = ir.IntegerType.get_signless(32)
    failed = context_lowering.call_external(
        abi.RT_FAILED, [block.arguments[0]], i32)
    guard = scf.IfOp(arith.cmpi(arith.CmpIPredicate.eq, failed,
                                arith.constant(i32, 0)))
  with ir.InsertionPoint(guard.then_block):
    init_anchor = arith.constant(ir.IndexType.get(), 0)
    operands = [views.with_layout(a) for a in block.arguments[3:]]
    # A dynamic grid dimension's size is read from its operand (an index).
    bounds = iter(operands[:n_dyn])
    grid = tuple(
        g if isinstance(g, int) else views.as_index(
            memref.load(next(bounds), []))
        for g in gm.grid)
    operands = operands[n_dyn:]
    kctx = KernelContext(name=spec.name, module=module, entry=entry,
                         params=spec.params,
                         grid=grid, vmapped_dims=tuple(gm.vmapped_dims),
                         grid_names=gm.grid_names)
    kctx.alloc_ip = ir.InsertionPoint(anchor.owner)
    kctx.init_ip = ir.InsertionPoint(init_anchor.owner)
    kctx.jaxpr = spec.jaxpr
    kctx.device_mesh = spec.device_mesh
    kctx.mesh_cores = spec.mesh_cores
    kctx.permuted_dims = dict(spec.permuted_dims)
    if spec.parallel_dim is not None:
      kctx.parallel_range = (spec.parallel_dim,
                             views.as_index(block.arguments[1]),
                             views.as_index(block.arguments[2]))
    index_operands = operands[:n_index]
    block_operands = operands[n_index:]
    roots = _roots(n_index, len(block_operands), gm.num_inputs,
                   spec.input_output_aliases)
    scratch = [_scratch_ref(kctx, i, a) for i, a in enumerate(gm.scratch_avals)]
    grid_lowering.build_grid(kctx, jaxpr=spec.jaxpr, grid_mapping=gm,
                             index_operands=index_operands,
                             block_operands=block_operands, roots=roots,
                             scratch=scratch, row_split=spec.row_split,
                             band_range=_band_range(spec, block))
    # Actors that may reach each other's memory (the cores of a mesh, the
    # devices of a collective) end together: exit checks see final counts,
    # and no signal or DMA reaches memory freed below.
    coupled = kctx.collective or spec.mesh_cores > 0
    if coupled:
      kctx.call_runtime(abi.RT_EXIT_BARRIER, [kctx.runtime_ctx, i64(0)])
    _exit_checks(kctx)
    scf.YieldOp([])
  with kctx.init_ip:  # after every initialization: the cores start together
    # In one order on every device (remote DMAs name buffers by it), with
    # their element size and name (the race detector's shadow state).
    if kctx.collective or kctx.params.detect_races:
      for k, buf in enumerate(kctx.allocs):
        label = kctx.alloc_labels.get(k)
        kctx.call_runtime(abi.RT_BUFFER_REGISTER, [
            kctx.runtime_ctx, views.address(buf), i64(_nbytes(buf)),
            i64(kctx.alloc_dtypes[k].itemsize),
            i64(kctx.site(label) if label else -1)])
    kctx.call_runtime(abi.RT_ENTER, [kctx.runtime_ctx])
  with ir.InsertionPoint(block):
    if coupled:
      kctx.call_runtime(abi.RT_EXIT_BARRIER, [kctx.runtime_ctx, i64(1)])
    for buf in kctx.allocs:
      memref.dealloc(buf)
    func.ReturnOp([])
  # What the runtime needs for messages and prints; the FFI call carries it.
  attrs[abi.RUNTIME_INFO_ATTR] = ir.StringAttr.get(abi.RuntimeInfo(
      semaphore_names=kctx.semaphore_names, debug_prints=kctx.debug_prints,
      check_messages=kctx.check_messages, sites=kctx.sites,
      allocations=kctx.allocation_names,
      collective=kctx.collective,
      shared_buffers=kctx.shared_buffers).to_json())
  return module


def _exit_checks(kctx: KernelContext) -> None:
  """At kernel exit (the grid done): the semaphores the kernel owns must be
  back at zero and every DMA waited for (runtime/abi.h)."""
  mode = abi.EXIT_CHECK_MODES[kctx.params.exit_checks]
  if mode == abi.EXIT_CHECK_MODES["off"]:
    return
  grid_index = _last_grid_index(kctx)
  for sem_id, buf in kctx.semaphore_arrays.items():
    buffers.semaphore_exit(kctx, buf, sem_id, scoped=False,
                           grid_index=grid_index)
  kctx.call_runtime(abi.RT_KERNEL_EXIT, [
      kctx.runtime_ctx, i64(mode), grid_index])


def _nbytes(buf: ir.Value) -> int:
  t = ir.MemRefType(buf.type)
  bits = scalars.width(t.element_type)
  return int(np.prod(t.shape, dtype=np.int64)) * ((bits + 7) // 8)


def _last_grid_index(kctx: KernelContext) -> ir.Value:
  """The row-major index one past the grid's last point, for messages
  ("at kernel exit")."""
  total = arith.constant(ir.IndexType.get(), 1)
  for n in kctx.grid:
    size = arith.constant(ir.IndexType.get(), n) if isinstance(n, int) else n
    total = arith.muli(total, size)
  last = arith.subi(total, arith.constant(ir.IndexType.get(), 1))
  return arith.index_cast(ir.IntegerType.get_signless(64), last)


def runtime_info(module: ir.Module) -> abi.RuntimeInfo:
  return abi.RuntimeInfo.from_json(ir.StringAttr(
      module.operation.attributes[abi.RUNTIME_INFO_ATTR]).value)


def _roots(n_index: int, n_blocks: int, n_in: int, aliases) -> list:
  """Storage identity per block operand; an aliased input and output share
  one buffer, so they share a root.  Alias input indices count the scalar
  prefetch operands, as pallas_call's do."""
  roots = [("operand", n_index + i) for i in range(n_blocks)]
  for i_in, i_out in aliases:
    roots[n_in + i_out] = ("operand", i_in)
  return roots


def _scratch_ref(kctx: KernelContext, i: int, aval) -> Ref:
  return buffers.allocate_ref(kctx, aval, ("scratch", i),
                              f"scratch operand {i}", at_entry=True)
