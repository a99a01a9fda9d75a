"""Kernel values during lowering: scalars and lazy elementwise arrays.

A rank-0 JAX value lowers to one MLIR scalar SSA value (``Scalar``).  An
array value is an ``Array``: a tree of elementwise operations over leaves
(``Load`` from a memref through an index map, ``Splat`` of a scalar,
``Iota``) that is only *materialized* -- emitted as one fused
``linalg.generic`` -- when something needs it in memory: a store into a ref,
a non-elementwise consumer, a value used more than once that is costlier to
compute again than ``RECOMPUTE_LIMIT``, or a write to the memory one of its
loads reads.  This is how chains like
``o_ref[...] = jnp.exp(x_ref[...] + y_ref[...])`` become a single loop over
the block, computed in place, with no temporaries.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
from mlir import ir
from mlir.dialects import arith, linalg
from mlir.dialects import memref as memref_d  # `memref` names values here

from pallas_cpu.lowering import fp8, types

# How a leaf indexes its memref: per memref dimension, either the iteration
# dimension it follows (an int) or None for the constant index 0 (a size-1
# dimension that is broadcast).
IndexMap = tuple


@dataclasses.dataclass(eq=False)
class Scalar:
  """A rank-0 value: one MLIR SSA value of the dtype's element type."""
  value: ir.Value
  dtype: np.dtype
  shape: tuple = ()


class Node:
  """A node of an elementwise expression tree (shape given by its Array)."""


@dataclasses.dataclass(eq=False)
class Load(Node):
  """Reads ``memref`` at the iteration point mapped through ``index_map``.

  ``root`` names the mutable storage the memref views (a kernel operand or
  scratch buffer, a loop carry), or is None for an immutable temporary.
  """
  memref: ir.Value
  index_map: IndexMap
  root: object | None
  key: object = None  # identifies the view (see rules/memory.py)
  # The value's dtype when memory holds another representation (bool: i8
  # for i1; float8: a byte for an f32), else None.
  converted: np.dtype | None = None


@dataclasses.dataclass(eq=False)
class Splat(Node):
  """The same scalar at every point."""
  value: ir.Value


@dataclasses.dataclass(eq=False)
class Iota(Node):
  """The iteration index along ``dim`` as ``dtype`` (0 where ``dim`` is None:
  an iota dimension of size 1 that was broadcast)."""
  dim: int | None
  dtype: np.dtype


@dataclasses.dataclass(eq=False)
class Op(Node):
  """``build(operands) -> ir.Value`` applied pointwise to ``args``.

  ``build`` only emits scalar arith/math ops at the current insertion point,
  so the same rule code builds scalar code and fused loop bodies.
  """
  build: Callable[[list[ir.Value]], ir.Value]
  args: tuple  # of Node
  # Work of ``build`` per element, in simple arith ops: what computing the
  # node again would cost (``recompute_cost``).
  cost: int = 1


@dataclasses.dataclass(eq=False)
class Array:
  """An array value of ``shape`` and ``dtype`` defined by ``node``."""
  node: Node
  shape: tuple
  dtype: np.dtype

  @property
  def is_leaf(self) -> bool:
    return not isinstance(self.node, Op)


Value = Scalar | Array


class PrivateRoot:
  """Storage that only the rule owning it writes -- a loop's carry buffers,
  a cond's result buffers -- never a ref the kernel can name.  Kernel writes
  cannot reach it, so lazy reads of it need not be computed before them."""

  def __init__(self, what: str):
    self.what = what

  def __repr__(self) -> str:
    return f"PrivateRoot({self.what})"


def distinct_nodes(node: Node):
  """Every node of ``node``'s expression once (shared subtrees are visited
  once: a chain of values each used twice is a DAG whose unrolled tree is
  exponential in its depth)."""
  seen: set[int] = set()
  stack = [node]
  while stack:
    n = stack.pop()
    if id(n) in seen:
      continue
    seen.add(id(n))
    yield n
    if isinstance(n, Op):
      stack.extend(reversed(n.args))


def roots_read(node: Node, acc: set | None = None) -> set:
  """The mutable roots whose memory evaluating ``node`` reads."""
  acc = set() if acc is None else acc
  for n in distinct_nodes(node):
    if isinstance(n, Load) and n.root is not None:
      acc.add(n.root)
  return acc


# A value used more than once stays lazy -- computed again in each fused
# loop that reads it -- while its ``recompute_cost`` is at most this: a few
# simple ops again beat a pass through memory.  philox_4x32's rounds (values
# each used two or three times) fit at 24..64: 18 temporaries per 256x256
# block instead of 150 (2048x2048: 23 ms instead of 162 ms, XLA 23-29 ms);
# from 96 on, rounds materialized one by one recompute more shared work.
RECOMPUTE_LIMIT = 32
# Op.cost of a transcendental function: a shared value calling one is
# always computed once (softmax's exp(x - max) feeds a sum and a divide).
TRANSCENDENTAL_COST = RECOMPUTE_LIMIT


def recompute_cost(node: Node, memo: dict | None = None) -> int:
  """The ops of ``node``'s expression counted as a tree -- a shared subtree
  once per reference, each Op as its ``cost`` (leaves 1) --: what computing
  it costs per element where shared values are not kept, and at least the
  number of nodes a walker that does not remember visited nodes visits."""
  memo = {} if memo is None else memo
  stack = [(node, False)]
  while stack:
    n, children_done = stack.pop()
    if id(n) in memo:
      continue
    if not isinstance(n, Op):
      memo[id(n)] = 1
    elif children_done:
      memo[id(n)] = max(n.cost, 1) + sum(memo[id(a)] for a in n.args)
    else:
      stack.append((n, True))
      stack.extend((a, False) for a in n.args if id(a) not in memo)
  return memo[id(node)]


def identity_map(rank: int) -> IndexMap:
  return tuple(range(rank))


def reindex(node: Node, dim_map: Sequence[int | None], out_shape=None,
            memo: dict | None = None) -> Node:
  """Re-expresses ``node`` over a new iteration space (for broadcasts).

  ``dim_map[d]`` is the new iteration dimension that old dimension ``d``
  follows, or None where the old dimension had size 1 and is broadcast.
  Shared subtrees stay shared (``memo``).  (``out_shape`` is not needed: the
  caller's Array carries it.)
  """
  memo = {} if memo is None else memo
  if id(node) in memo:
    return memo[id(node)]
  if isinstance(node, Load):
    out = Load(node.memref,
               tuple(None if k is None else dim_map[k] for k in node.index_map),
               node.root, node.key, node.converted)
  elif isinstance(node, Splat):
    out = node
  elif isinstance(node, Iota):
    out = Iota(None if node.dim is None else dim_map[node.dim], node.dtype)
  elif isinstance(node, Op):
    out = Op(node.build, tuple(reindex(a, dim_map, memo=memo)
                               for a in node.args), node.cost)
  else:
    raise TypeError(node)
  memo[id(node)] = out
  return out


def _affine_map(index_map: IndexMap, rank: int) -> ir.AffineMap:
  exprs = [ir.AffineConstantExpr.get(0) if k is None else ir.AffineDimExpr.get(k)
           for k in index_map]
  return ir.AffineMap.get(rank, 0, exprs)


def emit_elementwise(array: Array, dest: ir.Value) -> None:
  """Emits one ``linalg.generic`` computing ``array`` into ``dest``."""
  rank = len(array.shape)
  loads: dict[tuple, int] = {}
  inputs, maps = [], []

  for node in distinct_nodes(array.node):
    if isinstance(node, Load):
      key = (node.memref, node.index_map)
      if key not in loads:
        loads[key] = len(inputs)
        inputs.append(node.memref)
        maps.append(_affine_map(node.index_map, rank))
  maps.append(_affine_map(identity_map(rank), rank))
  parallel = ir.Attribute.parse("#linalg.iterator_type<parallel>")
  op = linalg.GenericOp(
      result_tensors=[], inputs=inputs, outputs=[dest],
      indexing_maps=ir.ArrayAttr.get([ir.AffineMapAttr.get(m) for m in maps]),
      iterator_types=ir.ArrayAttr.get([parallel] * rank))
  elem_types = [ir.MemRefType(v.type).element_type for v in inputs]
  elem_types.append(ir.MemRefType(dest.type).element_type)
  block = op.regions[0].blocks.append(*elem_types)
  with ir.InsertionPoint(block):
    emit = generic_body_emitter(block, loads)
    linalg.YieldOp([to_memory(emit(array.node), array.dtype)])


def index_to_element(v: ir.Value, elem: ir.Type) -> ir.Value:
  """Casts an ``index`` value to an integer or float element type."""
  if isinstance(elem, ir.IntegerType):
    return arith.index_cast(elem, v)
  i64 = arith.index_cast(ir.IntegerType.get_signless(64), v)
  return arith.sitofp(elem, i64)


def load_array(memref: ir.Value, dtype, *, root=None, key=None) -> Array:
  """The whole of ``memref`` as a lazy array (identity index map)."""
  shape = tuple(ir.MemRefType(memref.type).shape)
  converted = np.dtype(dtype) if types.converted_in_registers(dtype) else None
  return Array(Load(memref, identity_map(len(shape)), root, key, converted),
               shape, np.dtype(dtype))


def to_memory(v: ir.Value, dtype) -> ir.Value:
  """A register value as stored in memory (bool: i1 -> i8; float8: f32 ->
  its byte; int4: i4 -> i8)."""
  if types.is_bool(dtype):
    return arith.extui(types.memory_element_type(dtype), v)
  if fp8.is_fp8(dtype):
    return fp8.encode(v, dtype)
  if types.is_subbyte(dtype):  # i4 -> i8, extended as XLA widens it
    ext = arith.extui if types.is_unsigned(dtype) else arith.extsi
    return ext(types.memory_element_type(dtype), v)
  return v


def from_memory(v: ir.Value, dtype) -> ir.Value:
  if types.is_bool(dtype):
    return arith.trunci(types.element_type(dtype), v)
  if fp8.is_fp8(dtype):
    return fp8.decode(v, dtype)
  if types.is_subbyte(dtype):  # the low bits of the byte
    return arith.trunci(types.element_type(dtype), v)
  return v


def _zeros(memref: ir.Value) -> list[ir.Value]:
  """Index 0 in every dimension: a single-element memref of any rank."""
  rank = ir.MemRefType(memref.type).rank
  return [arith.constant(ir.IndexType.get(), 0)] * rank


def load_scalar(memref: ir.Value, dtype) -> Scalar:
  return Scalar(from_memory(memref_d.load(memref, _zeros(memref)), dtype),
                np.dtype(dtype))


def store_scalar(v: ir.Value, memref: ir.Value, dtype) -> None:
  memref_d.store(to_memory(v, dtype), memref, _zeros(memref))


def node_emitter(load_leaf: Callable[[Load], ir.Value],
                 index: Callable[[int], ir.Value]) -> Callable[[Node], ir.Value]:
  """Emits a node tree's register value at the current insertion point.

  ``load_leaf(load)`` gives a Load leaf's raw memory value and ``index(d)``
  the iteration index along dim ``d``: block arguments and linalg.index in a
  linalg body, memref.load and loop variables in a plain loop.  Shared
  subtrees are emitted once."""
  memo: dict[int, ir.Value] = {}

  def emit(node: Node) -> ir.Value:
    if id(node) in memo:
      return memo[id(node)]
    if isinstance(node, Load):
      v = load_leaf(node)
      if node.converted is not None:
        v = from_memory(v, node.converted)
    elif isinstance(node, Splat):
      v = node.value
    elif isinstance(node, Iota):
      i = (arith.constant(ir.IndexType.get(), 0) if node.dim is None
           else index(node.dim))
      v = index_to_element(i, types.element_type(node.dtype))
    elif isinstance(node, Op):
      v = node.build([emit(a) for a in node.args])
    else:
      raise TypeError(node)
    memo[id(node)] = v
    return v
  return emit


def generic_body_emitter(block: ir.Block, loads: dict) -> Callable:
  """The emitter inside a linalg.generic body whose inputs are the Load
  leaves numbered by ``loads[(memref, index_map)]``."""
  return node_emitter(
      lambda n: block.arguments[loads[(n.memref, n.index_map)]],
      lambda d: linalg.IndexOp(ir.IntegerAttr.get(
          ir.IntegerType.get_signless(64), d)).result)


def evaluate_at(node: Node, ivs: Sequence[ir.Value]) -> ir.Value:
  """The register value of ``node`` at iteration point ``ivs`` (index
  values), emitted at the current insertion point: loads become
  ``memref.load``s.  For loops that are not linalg ops (a reduction whose
  accumulator lives in a register)."""

  def load(n: Load) -> ir.Value:
    zero = arith.constant(ir.IndexType.get(), 0)
    return memref_d.load(n.memref,
                         [zero if k is None else ivs[k] for k in n.index_map])
  return node_emitter(load, lambda d: ivs[d])(node)
