"""Lowering state: the kernel being built and the context each rule sees."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Hashable, Sequence

import numpy as np
from jax._src import core as jax_core
from mlir import ir
from mlir.dialects import arith, func, linalg, memref

from pallas_cpu.lowering import memory_spaces, types, values
from pallas_cpu.params import CompilerParams


@dataclasses.dataclass
class Ref:
  """A kernel ref: a memref view plus the storage (root) it belongs to.
  Semaphore refs are int32 counters; ``sem_id`` names their array."""
  memref: ir.Value
  root: object
  dtype: np.dtype
  sem_id: int | None = None

  @property
  def shape(self) -> tuple:
    return tuple(ir.MemRefType(self.memref.type).shape)


class KernelContext:
  """State shared by all rules while one kernel is lowered."""

  def __init__(self, *, name: str, module: ir.Module, entry: func.FuncOp,
               params: CompilerParams, grid: tuple[int, ...],
               vmapped_dims: tuple[int, ...],
               grid_names: Sequence[Hashable] | None = None):
    self.name = name
    self.module = module
    self.entry = entry
    self.params = params
    self.grid = grid
    self.vmapped_dims = vmapped_dims
    self.runtime_ctx: ir.Value = entry.arguments[0]
    # Allocations are hoisted to the top of the entry function: every shape
    # is static, and the grid loop must not allocate per step.
    self.alloc_ip = ir.InsertionPoint.at_block_begin(entry.entry_block)
    # Where buffers are initialized (zeroed semaphores, fills): after the
    # entry has checked that every allocation succeeded.
    self.init_ip = self.alloc_ip
    self.allocs: list[ir.Value] = []
    # (bytes, name) of named allocations, for a failed allocation's message.
    self.allocation_names: list[tuple[int, str]] = []
    # Source sites (DMA starts, run_scoped buffers) by site id, for messages.
    self.sites: list[str] = []
    # sem_id -> the array's buffer, for the exit checks of the semaphores
    # the kernel owns; run_scoped ones are checked at their scope's end.
    self.semaphore_arrays: dict[int, ir.Value] = {}
    self.program_ids: list[ir.Value] = []  # index values, non-vmapped dims
    # Sizes (ints, or index values for dynamic dims) and names (None where
    # unnamed) of the non-vmapped dims, for num_programs and axis_index.
    self.program_sizes: list = [g for d, g in enumerate(grid)
                                if d not in vmapped_dims]
    self.grid_names: tuple = (tuple(grid_names) if grid_names
                              else (None,) * len(self.program_sizes))
    self.grid_ivs: list[ir.Value] = []     # index values, every grid dim
    self.semaphore_names: list[str] = []   # by sem_id, for runtime messages
    self.debug_prints: list[dict] = []     # by print id (rules/debug.py)
    self.check_messages: list[str] = []    # by check id
    self.jaxpr: jax_core.Jaxpr | None = None  # the body, for pre-scans (mxu)
    self.rule_state: dict = {}  # per-kernel state of a rule family, by family
    # The shard_map mesh ((axis, size), ...), () on one device; set by a
    # rule that talks to another device (the instances then run as one
    # launch, runtime/devices.h).
    self.device_mesh: tuple = ()
    self.collective = False
    # The cores of the TensorCore mesh the kernel runs over (0: none), and
    # the byte sizes of the buffers they share (``shared``).
    self.mesh_cores = 0
    self.shared_buffers: list[int] = []
    # Per allocation (index in ``allocs``): its dtype, and what it is called.
    self.alloc_dtypes: list = []
    self.alloc_labels: dict[int, str] = {}
    # (dim, lo, hi): the grid dimension this call runs only [lo, hi) of.
    self.parallel_range: tuple[int, ir.Value, ir.Value] | None = None

  @contextlib.contextmanager
  def scoped_grid(self, ids: Sequence, sizes: Sequence,
                  names: Sequence[Hashable | None]):
    """Grid queries (program_id, num_programs, axis_index) answer for
    another grid inside the block: an emit_pipeline body sees its pipeline's
    indices.  The loop nest itself (``grid``, ``grid_ivs``) is unchanged."""
    saved = self.program_ids, self.program_sizes, self.grid_names
    self.program_ids, self.program_sizes = list(ids), list(sizes)
    self.grid_names = tuple(names)
    try:
      yield
    finally:
      self.program_ids, self.program_sizes, self.grid_names = saved

  # -- runtime calls -----------------------------------------------------------
  def call_runtime(self, name: str, args: list[ir.Value],
                   results: list[ir.Type] = ()) -> list[ir.Value]:
    """Calls ``name`` from runtime/abi.h (declared on first use)."""
    return call_external(name, args, list(results))

  def grid_index(self) -> ir.Value:
    """Row-major linear index (i64) of the current grid point, for
    messages; LLVM drops it where no error path uses it."""
    i64 = ir.IntegerType.get_signless(64)
    lin = arith.constant(ir.IndexType.get(), 0)
    for iv, n in zip(self.grid_ivs, self.grid):
      size = arith.constant(ir.IndexType.get(), n) if isinstance(n, int) else n
      lin = arith.addi(arith.muli(lin, size), iv)
    return arith.index_cast(i64, lin)

  # -- memory -----------------------------------------------------------------
  def alloc(self, shape, dtype, space: str = memory_spaces.VMEM,
            name: str | None = None) -> ir.Value:
    """A buffer allocated once at kernel entry and freed at exit; ``name``
    (e.g. "scratch operand 0") appears in the error if allocating fails."""
    t = types.memref_type(shape, dtype, memory_spaces.attr(space))
    with self.alloc_ip:
      buf = memref.AllocOp(t, [], [], alignment=64).result
    self.allocs.append(buf)
    if name is not None:
      nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
      label = f"{name} ({np.dtype(dtype).name}{list(shape)} in {space})"
      self.allocation_names.append((nbytes, label))
      self.alloc_labels[len(self.allocs) - 1] = label
    self.alloc_dtypes.append(np.dtype(dtype))
    return buf

  def shared(self, shape, dtype, space: str) -> ir.Value:
    """A buffer the cores of a mesh kernel share on their device (an HBM
    scratch or run_scoped buffer, as on TPU): one more entry argument, a
    ``memref<N x i8>`` the runtime allocates once per device and passes to
    every core (runtime/abi.h), viewed here with the buffer's type."""
    t = types.memref_type(shape, dtype, memory_spaces.attr(space))
    nbytes = max(int(np.prod(shape, dtype=np.int64))
                 * np.dtype(dtype).itemsize, 1)
    raw = ir.MemRefType.get([nbytes], ir.IntegerType.get_signless(8),
                            memory_space=memory_spaces.attr(space))
    arg = self.entry.entry_block.add_argument(raw, ir.Location.unknown())
    ftype = ir.FunctionType(
        ir.TypeAttr(self.entry.attributes["function_type"]).value)
    self.entry.attributes["function_type"] = ir.TypeAttr.get(
        ir.FunctionType.get([*ftype.inputs, raw], []))
    self.entry.arg_attrs = ir.ArrayAttr.get(
        [*self.entry.arg_attrs, ir.DictAttr.get({})])
    with self.alloc_ip:
      buf = memref.ViewOp(t, arg, arith.constant(ir.IndexType.get(), 0),
                          []).result
    self.shared_buffers.append(nbytes)
    return buf

  def site(self, text: str) -> int:
    """The id of a source site (a DMA start, a scoped buffer) for the
    runtime's messages."""
    self.sites.append(text)
    return len(self.sites) - 1

  def materialize(self, v: values.Value, *, reuse: bool = True) -> ir.Value:
    """``v`` in memory, as a memref of its shape.

    With ``reuse``, an array that already is a plain load of an immutable
    temporary is returned as is; else a fresh temporary is filled.
    """
    if isinstance(v, values.Scalar):
      buf = self.alloc((), v.dtype)
      values.store_scalar(v.value, buf, v.dtype)
      return buf
    node = v.node
    if (reuse and isinstance(node, values.Load) and node.root is None
        and node.index_map == values.identity_map(len(v.shape))
        and tuple(ir.MemRefType(node.memref.type).shape) == tuple(v.shape)):
      return node.memref
    buf = self.alloc(v.shape, v.dtype)
    self.store(v, buf)
    return buf

  def store(self, v: values.Value, dest: ir.Value) -> None:
    """Writes ``v`` (broadcast if scalar) into the memref ``dest``."""
    if isinstance(v, values.Scalar):
      if not ir.MemRefType(dest.type).shape:
        values.store_scalar(v.value, dest, v.dtype)
      else:
        linalg.fill(values.to_memory(v.value, v.dtype), outs=[dest])
      return
    # Rank 0 included: a rank-0 generic computes the expression once.
    values.emit_elementwise(v, dest)

  def as_temp(self, v: values.Value) -> values.Value:
    """``v`` computed into a fresh immutable temporary (a plain Load)."""
    if isinstance(v, values.Scalar):
      return v
    buf = self.materialize(v)
    return values.load_array(buf, v.dtype)

  def constant(self, value, dtype) -> values.Scalar:
    dtype = np.dtype(dtype)
    t = types.element_type(dtype)
    if types.is_float(dtype):
      attr = ir.FloatAttr.get(t, float(value))
    elif types.is_bool(dtype):
      attr = ir.IntegerAttr.get(t, int(bool(value)))
    else:
      v = int(value)
      bits = types.bitwidth(dtype)
      if v >= 2 ** (bits - 1):  # unsigned values above the signed range
        v -= 2 ** bits
      attr = ir.IntegerAttr.get(t, v)
    return values.Scalar(arith.ConstantOp(t, attr).result, dtype)


def scalar_of(kctx: KernelContext, v: values.Value) -> values.Scalar:
  """A rank-0 Array as a Scalar (computed at the current insertion point)."""
  if isinstance(v, values.Scalar):
    return v
  buf = kctx.materialize(v, reuse=True)
  return values.load_scalar(buf, v.dtype)


@dataclasses.dataclass
class RuleContext:
  """What one rule invocation sees."""
  kernel: KernelContext
  eqn: jax_core.JaxprEqn
  avals_in: list[Any]
  avals_out: list[Any]
  source: str  # the user's source line, for error messages
  outs_used: list[bool] = dataclasses.field(default_factory=list)
  # Set on a dot_general whose product may be accumulated straight into a
  # ref view (fusion.AccumulateTarget); None otherwise.
  accumulate_into: Any = None

  def constant(self, value, dtype) -> values.Scalar:
    return self.kernel.constant(value, dtype)


def call_external(name: str, args: list[ir.Value],
                  result: ir.Type | list[ir.Type]):
  """Calls the C function ``name`` (the runtime's, or libm's; resolved when
  the kernel's shared object is loaded) from wherever the insertion point is
  -- also inside a fused loop body -- declaring it in the enclosing module
  on first use.  One result type gives the value; a list, the values."""
  results = result if isinstance(result, list) else [result]
  op = ir.InsertionPoint.current.block.owner
  while op is not None and op.name != "builtin.module":
    op = op.parent
  module_body = op.regions[0].blocks[0]
  declared = any(o.operation.name == "func.func" and ir.StringAttr(
      o.operation.attributes["sym_name"]).value == name
                 for o in module_body.operations)
  if not declared:
    with ir.InsertionPoint.at_block_begin(module_body):
      decl = func.FuncOp(name, ir.FunctionType.get([a.type for a in args],
                                                   results))
      decl.sym_visibility = ir.StringAttr.get("private")
  call = func.CallOp(results, ir.FlatSymbolRefAttr.get(name), args)
  return list(call.results) if isinstance(result, list) else call.result
