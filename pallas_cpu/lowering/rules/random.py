"""PRNG primitives: JAX's key-based PRNG and the TPU stateful PRNG.

Keys.  A key array of logical shape ``S`` (dtype ``key<impl>``) is carried
as its key data: a uint32 value of shape ``(*S, *impl.key_shape)`` -- what
``random_wrap`` takes and ``random_unwrap`` gives back, so both are free.
Keys built here are ``KeyData`` arrays that also remember their components
(``k1``, ``k2`` of shape ``S``), so a key made by ``random_seed`` /
``fold_in`` / ``split`` feeds ``random_bits`` without a trip through memory.

Threefry-2x32 (JAX's default ``fry`` impl) is emitted by hand as scalar arith
inside the fused elementwise expression: 20 rounds, bit-exact with XLA's.
``random_seed``, ``random_fold_in``, ``random_split`` and ``random_bits``
follow ``jax._src.random.threefry2x32`` exactly, in both settings of
``jax_threefry_partitionable`` (the original, non-partitionable
``random_bits`` only for 32 bits).  ``threefry2x32`` and ``iota_2x32_shape``
(used directly by ``jax.experimental.pallas.ops.tpu.random``) are rules too.
Other impls (``pallas_tpu``, the stateful sampler's, rbg...) lower their
impl functions traced on the key data, as Mosaic does (so they work where
the ops those functions use have rules).

Key arrays (from ``random_split``, or array seeds / key data) go through
slice, squeeze, reshape, broadcast_in_dim, concatenate, rev, transpose and
select_n: key rules (``registry.register_key_rule``) run the ordinary rule on
the key data with the trailing key dimensions added (Mosaic has no
``random_split`` at all).  Keys cannot be loop carries or cond results, nor
live in refs.

The TPU stateful PRNG (``pltpu.prng_seed`` / ``pltpu.prng_random_bits``).
Interpret mode cannot run these (``interpret=True`` has no rule for
``prng_seed``; TPU interpret mode returns zeros), so pallas_cpu defines them
with threefry:

* state: ``(k1, k2, n)``, three uint32 in an SMEM buffer of the kernel
  (``KernelContext.rule_state["prng"]``, allocated and zeroed at entry on
  first use -- one per thread, like one per TPU core; it persists across
  grid steps, as the hardware's does).
* ``prng_seed(s0, s1, ...)``: ``key = fold_in(...fold_in(key(s0), s1)...)``
  with ``jax.random.key`` / ``fold_in``'s threefry semantics (array seeds,
  e.g. a ``pallas_tpu`` key's data, count element by element); ``n = 0``.
* ``prng_random_bits(shape)``: element ``i`` (row-major) is ``o1 ^ o2`` of
  ``threefry2x32(k1, k2, n, i)``, as int32; then ``n += 1``.  The first call
  after seeding equals ``jax.random.bits(key, shape)`` (partitionable).
"""
from __future__ import annotations

import dataclasses
import math as pymath

import numpy as np
from jax._src import config as jax_config
from jax._src import core as jax_core
from jax._src.lax import lax
from jax._src.lax import slicing
from jax._src.pallas.mosaic import primitives as tpu_primitives
from jax._src.pallas.mosaic import random as pallas_random
from jax._src.random import prng
from jax._src.random import threefry2x32 as threefry_mod
from mlir import ir
from mlir.dialects import arith, memref

from pallas_cpu.lowering import memory_spaces, types, values, views
from pallas_cpu.lowering.context import scalar_of
from pallas_cpu.lowering.jaxpr import lower_fun
from pallas_cpu.lowering.registry import register, register_key_rule
from pallas_cpu.lowering.rules.common import elementwise, in_memory, load_view
from pallas_cpu.lowering.scalars import cmpi, const, convert, int_type

U32 = np.dtype(np.uint32)
U64 = np.dtype(np.uint64)  # a (hi, lo) pair of uint32 inside an expression


@dataclasses.dataclass(eq=False)
class KeyData(values.Array):
  """Key data built here, with its last-dimension components."""
  parts: tuple = ()


# -- Threefry-2x32 -------------------------------------------------------------
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k1, k2, x1, x2) -> tuple[ir.Value, ir.Value]:
  """The 20-round Threefry-2x32 hash of (x1, x2) under key (k1, k2), on i32
  scalars, as ``jax._src.random.threefry2x32._threefry2x32_lowering``."""
  t = k1.type
  ks = [k1, k2, arith.xori(arith.xori(k1, k2), const(t, 0x1BD11BDA))]
  x = [arith.addi(x1, ks[0]), arith.addi(x2, ks[1])]
  for group in range(5):
    for r in _ROTATIONS[group % 2]:
      x[0] = arith.addi(x[0], x[1])
      rot = arith.ori(arith.shli(x[1], const(t, r)),
                      arith.shrui(x[1], const(t, 32 - r)))
      x[1] = arith.xori(x[0], rot)
    x[0] = arith.addi(x[0], ks[(group + 1) % 3])
    x[1] = arith.addi(arith.addi(x[1], ks[(group + 2) % 3]),
                      const(t, group + 1))
  return x[0], x[1]


def _pack(hi: ir.Value, lo: ir.Value) -> ir.Value:
  i64 = int_type(64)
  return arith.ori(arith.shli(arith.extui(i64, hi), const(i64, 32)),
                   arith.extui(i64, lo))


def _hi(v: ir.Value) -> ir.Value:
  return arith.trunci(int_type(32), arith.shrui(v, const(v.type, 32)))


def _lo(v: ir.Value) -> ir.Value:
  return arith.trunci(int_type(32), v)


def _unpack(pair: values.Value) -> tuple[values.Value, values.Value]:
  """The (hi, lo) halves of a packed uint64 value, sharing its node."""
  if isinstance(pair, values.Scalar):
    return (values.Scalar(_hi(pair.value), U32),
            values.Scalar(_lo(pair.value), U32))
  return tuple(values.Array(values.Op(lambda a, f=f: f(a[0]), (pair.node,)),
                            pair.shape, U32) for f in (_hi, _lo))


def _threefry_pair(a: list[ir.Value]) -> ir.Value:
  return _pack(*threefry2x32(*a))


@register(threefry_mod.threefry2x32_p)
def _threefry2x32(ctx, k1, k2, x1, x2):
  for a in ctx.avals_in:
    if np.dtype(a.dtype) != U32:
      raise NotImplementedError(f"threefry2x32 on {a.dtype}")
  return list(_unpack(elementwise(ctx, _threefry_pair, [k1, k2, x1, x2],
                                  out_dtype=U64)))


# -- counters --------------------------------------------------------------------
def _flat_index(shape, first_dim: int, out_shape) -> tuple[values.Node,
                                                           values.Node]:
  """(hi, lo) uint32 halves of the row-major index into ``shape``, whose
  dimensions are dimensions ``first_dim..`` of ``out_shape``."""
  size = pymath.prod(shape)
  strides = types.row_major_strides(shape)
  wide = size > 2 ** 32
  dt = U64 if wide else U32
  iotas = tuple(values.Iota(first_dim + d, dt) for d in range(len(shape)))

  def flat(a):
    acc = None
    for v, s in zip(a, strides):
      term = v if s == 1 else arith.muli(v, const(v.type, s))
      acc = term if acc is None else arith.addi(acc, term)
    return acc if acc is not None else const(int_type(64 if wide else 32), 0)

  node = values.Op(flat, iotas)
  if not wide:
    return values.Splat(const(int_type(32), 0)), node
  return (values.Op(lambda a: _hi(a[0]), (node,)),
          values.Op(lambda a: _lo(a[0]), (node,)))


@register(prng.iota_2x32_shape_p)
def _iota_2x32_shape(ctx, *, shape):
  shape = tuple(shape)
  if not shape:
    zero = ctx.constant(0, U32)
    return [zero, zero]
  hi, lo = _flat_index(shape, 0, shape)
  return [values.Array(hi, shape, U32), values.Array(lo, shape, U32)]


# -- key values ------------------------------------------------------------------
def _impl(aval):
  return aval.dtype._impl


def _is_threefry(impl) -> bool:
  return impl is threefry_mod.threefry_prng_impl


def _node(v: values.Value, out_shape, dim_map) -> values.Node:
  if isinstance(v, values.Scalar):
    return values.Splat(v.value)
  if tuple(v.shape) == tuple(out_shape):
    return v.node
  return values.reindex(v.node, dim_map, out_shape)


def key_parts(ctx, key: values.Value, batch_shape) -> tuple:
  """The two uint32 components (each of shape ``batch_shape``) of threefry
  key data of shape ``(*batch_shape, 2)``."""
  if isinstance(key, KeyData) and key.parts:
    return key.parts
  batch_shape = tuple(batch_shape)
  n = len(batch_shape)
  if isinstance(key, values.Scalar):
    raise TypeError("key data must be an array")
  buf, root = in_memory(ctx, key)
  return tuple(load_view(views.subview(buf, [0] * n + [c], [*batch_shape, 1],
                                       drop=(n,)), root, U32)
               for c in range(2))


def make_key(k1: values.Value, k2: values.Value, batch_shape) -> KeyData:
  """Threefry key data of shape ``(*batch_shape, 2)`` from its parts."""
  batch_shape = tuple(batch_shape)
  n = len(batch_shape)
  shape = (*batch_shape, 2)
  dim_map = list(range(n))
  nodes = (_node(k1, shape, dim_map), _node(k2, shape, dim_map),
           values.Iota(n, U32))

  def build(a):
    first = cmpi("eq", a[2], const(a[2].type, 0))
    return arith.select(first, a[0], a[1])
  return KeyData(values.Op(build, nodes), shape, U32, parts=(k1, k2))


def _key_from_pair(pair: values.Value, batch_shape) -> KeyData:
  return make_key(*_unpack(pair), batch_shape)


def _threefry_lazy(k1, k2, x1_node, x2_node, out_shape, batch_rank):
  """(o1, o2) nodes of threefry over ``out_shape``; the key parts have the
  leading ``batch_rank`` dimensions."""
  dim_map = list(range(batch_rank))
  pair = values.Op(_threefry_pair, (_node(k1, out_shape, dim_map),
                                    _node(k2, out_shape, dim_map),
                                    x1_node, x2_node))
  return (values.Op(lambda a: _hi(a[0]), (pair,)),
          values.Op(lambda a: _lo(a[0]), (pair,)))


# -- generic impls: trace the impl function on key data (as Mosaic does) -------
def _physical(aval):
  return jax_core.physical_aval(aval)


def _traced_key_aval(aval):
  """The aval an impl function is traced on: Pallas TPU impls take typed
  keys (they split them with prng_split), the others key data (as Mosaic
  and JAX's own lowerings do)."""
  if pallas_random.is_pallas_impl(_impl(aval)):
    return aval
  return _physical(aval)


# -- key primitives --------------------------------------------------------------
@register(prng.random_seed_p)
def _random_seed(ctx, seeds, *, impl):
  (aval,) = ctx.avals_in
  shape = tuple(aval.shape)
  if not _is_threefry(impl):
    fn = prng.iterated_vmap_unary(len(shape), impl.seed)
    return lower_fun(ctx, fn, seeds)
  dt = np.dtype(aval.dtype)
  if not types.is_int(dt):
    raise NotImplementedError(f"PRNG seed of dtype {dt}")
  bits = types.bitwidth(dt)
  signed = not types.is_unsigned(dt)

  def part(hi):
    def build(a):
      v = a[0]
      if bits > 32:
        return arith.trunci(int_type(32), arith.shrui(v, const(v.type, 32))
                            if hi else v)
      if hi:
        return const(int_type(32), 0)
      if bits < 32:
        return (arith.extsi if signed else arith.extui)(int_type(32), v)
      return v
    return build

  k1 = elementwise(ctx, part(True), [seeds], out_dtype=U32)
  k2 = elementwise(ctx, part(False), [seeds], out_dtype=U32)
  return make_key(k1, k2, shape)


@register(prng.random_wrap_p)
def _random_wrap(ctx, base_arr, *, impl):
  del impl
  return base_arr


@register(prng.random_unwrap_p)
def _random_unwrap(ctx, keys):
  return keys


@register(prng.random_fold_in_p)
def _random_fold_in(ctx, keys, msgs):
  keys_aval, msgs_aval = ctx.avals_in
  impl = _impl(keys_aval)
  if not _is_threefry(impl):
    fn = prng.iterated_vmap_binary_bcast(keys_aval.shape, msgs_aval.shape,
                                         impl.fold_in)
    return lower_fun(ctx, fn, keys, msgs,
                     avals_in=[_traced_key_aval(keys_aval), msgs_aval])
  k1, k2 = key_parts(ctx, keys, keys_aval.shape)
  mdt = np.dtype(msgs_aval.dtype)
  out_shape = tuple(ctx.avals_out[0].shape)

  def build(a):
    zero = const(int_type(32), 0)
    return _threefry_pair([a[0], a[1], zero, convert(a[2], mdt, U32)])
  pair = elementwise(ctx, build, [k1, k2, msgs], out_dtype=U64)
  return _key_from_pair(pair, out_shape)


def _partitionable() -> bool:
  return bool(jax_config.threefry_partitionable.value)


@register(prng.random_split_p)
def _random_split(ctx, keys, *, shape):
  (aval,) = ctx.avals_in
  impl = _impl(aval)
  batch, shape = tuple(aval.shape), tuple(shape)
  if not _is_threefry(impl):
    fn = prng.iterated_vmap_unary(len(batch), lambda k: impl.split(k, shape))
    return lower_fun(ctx, fn, keys, avals_in=[_traced_key_aval(aval)])
  k1, k2 = key_parts(ctx, keys, batch)
  out_shape = (*batch, *shape)
  if not shape:
    raise NotImplementedError("random_split to shape ()")
  nb = len(batch)
  if _partitionable():
    hi, lo = _flat_index(shape, nb, out_shape)
    o1, o2 = _threefry_lazy(k1, k2, hi, lo, out_shape, nb)
    parts = [values.Array(o, out_shape, U32) for o in (o1, o2)]
    return make_key(*parts, out_shape)
  # Original scheme: counts 0..2n-1 hashed as pairs (i, i+n); key j is
  # elements (2j, 2j+1) of concat(o1, o2).
  num = pymath.prod(shape)
  if 2 * num >= 2 ** 32:
    raise NotImplementedError("random_split to more than 2**31 keys")
  _, j = _flat_index(shape, nb, out_shape)
  dim_map = list(range(nb))
  kn1, kn2 = _node(k1, out_shape, dim_map), _node(k2, out_shape, dim_map)

  def component(c):
    def build(a):
      t = a[2].type
      f = arith.addi(arith.muli(a[2], const(t, 2)), const(t, c))
      n = const(t, num)
      first = cmpi("ult", f, n)
      x1 = arith.select(first, f, arith.subi(f, n))
      x2 = arith.select(first, arith.addi(f, n), f)
      o1, o2 = threefry2x32(a[0], a[1], x1, x2)
      return arith.select(first, o1, o2)
    return values.Array(values.Op(build, (kn1, kn2, j)), out_shape, U32)
  return make_key(component(0), component(1), out_shape)


@register(prng.random_bits_p)
def _random_bits(ctx, keys, *, bit_width, shape):
  (aval,) = ctx.avals_in
  impl = _impl(aval)
  batch, shape = tuple(aval.shape), tuple(shape)
  if not _is_threefry(impl):
    fn = prng.iterated_vmap_unary(
        len(batch), lambda k: impl.random_bits(k, bit_width, shape))
    return lower_fun(ctx, fn, keys, avals_in=[_traced_key_aval(aval)])
  out_shape = (*batch, *shape)
  out_dtype = np.dtype(f"uint{bit_width}")
  k1, k2 = key_parts(ctx, keys, batch)
  nb = len(batch)
  if not out_shape:  # one scalar key, shape (): counts are zero
    zero = const(int_type(32), 0)
    o1, o2 = threefry2x32(k1.value, k2.value, zero, zero)
    return values.Scalar(_finish_bits(o1, o2, bit_width), out_dtype)
  if not shape:
    hi = lo = values.Splat(const(int_type(32), 0))
  else:
    hi, lo = _flat_index(shape, nb, out_shape)
  if _partitionable():
    dim_map = list(range(nb))
    node = values.Op(
        lambda a: _finish_bits(*threefry2x32(*a), bit_width),
        (_node(k1, out_shape, dim_map), _node(k2, out_shape, dim_map), hi, lo))
    return values.Array(node, out_shape, out_dtype)
  if bit_width != 32:
    raise NotImplementedError(
        f"random_bits of {bit_width} bits with jax_threefry_partitionable "
        "disabled (only 32)")
  # Original scheme: counts 0..n-1 (padded to even) hashed as pairs
  # (i, i+h), h = ceil(n/2); element f is o1[f] if f < h else o2[f-h].
  n = pymath.prod(shape)
  h = (n + 1) // 2
  dim_map = list(range(nb))
  kn1, kn2 = _node(k1, out_shape, dim_map), _node(k2, out_shape, dim_map)

  def build(a):
    f = a[2]
    t = f.type
    first = cmpi("ult", f, const(t, h))
    pair_hi = arith.addi(f, const(t, h))
    pair_hi = arith.select(cmpi("ult", pair_hi, const(t, n)), pair_hi,
                           const(t, 0))  # the zero padding
    x1 = arith.select(first, f, arith.subi(f, const(t, h)))
    x2 = arith.select(first, pair_hi, f)
    o1, o2 = threefry2x32(a[0], a[1], x1, x2)
    return arith.select(first, o1, o2)
  if not shape:
    f_node = values.Splat(const(int_type(32), 0))
  else:
    f_node = lo
  return values.Array(values.Op(build, (kn1, kn2, f_node)), out_shape,
                      out_dtype)


def _finish_bits(o1: ir.Value, o2: ir.Value, bit_width: int) -> ir.Value:
  if bit_width == 64:
    return _pack(o1, o2)
  bits = arith.xori(o1, o2)
  if bit_width < 32:
    bits = arith.trunci(int_type(bit_width), bits)
  return bits


# -- Pallas TPU keys: split into / joined from scalars -------------------------
@register(tpu_primitives.split_key_p)
def _split_key(ctx, key):
  buf = views.with_layout(ctx.kernel.materialize(key))
  shape = tuple(ir.MemRefType(buf.type).shape)
  out = []
  for i in range(pymath.prod(shape)):
    idx = [arith.constant(ir.IndexType.get(), int(k))
           for k in np.unravel_index(i, shape)]
    out.append(values.Scalar(memref.load(buf, idx), U32))
  return out


@register(tpu_primitives.join_key_p)
def _join_key(ctx, *scalars, impl):
  shape = tuple(impl.key_shape)
  scalars = [scalar_of(ctx.kernel, s) for s in scalars]
  buf = ctx.kernel.alloc(shape, U32)
  for i, s in enumerate(scalars):
    idx = [arith.constant(ir.IndexType.get(), int(k))
           for k in np.unravel_index(i, shape)]
    memref.store(s.value, buf, idx)
  return values.load_array(buf, U32)


# -- the TPU stateful PRNG -----------------------------------------------------------
def _prng_state(kctx) -> ir.Value:
  """The kernel's PRNG state (k1, k2, n): uint32[3] in SMEM, zeroed at
  entry, created on first use."""
  state = kctx.rule_state.get("prng")
  if state is None:
    state = kctx.alloc((3,), U32, memory_spaces.SMEM)
    with kctx.init_ip:
      zero = const(int_type(32), 0)
      for i in range(3):
        memref.store(zero, state, [arith.constant(ir.IndexType.get(), i)])
    kctx.rule_state["prng"] = state
  return state


def _seed_scalars(ctx, v: values.Value, aval) -> list[ir.Value]:
  """Every element of a seed operand, as i32 (row-major)."""
  dt = np.dtype(_physical(aval).dtype)
  if not types.is_int(dt):
    raise NotImplementedError(f"prng_seed with a seed of dtype {dt}")
  if isinstance(v, values.Scalar):
    scalars = [v.value]
  else:
    shape = tuple(v.shape)
    if pymath.prod(shape) > 64:
      raise NotImplementedError("prng_seed with more than 64 seed values")
    buf = ctx.kernel.materialize(v)
    scalars = []
    for i in range(pymath.prod(shape)):
      idx = [arith.constant(ir.IndexType.get(), int(k))
             for k in np.unravel_index(i, shape)]
      scalars.append(memref.load(buf, idx))
  if types.bitwidth(dt) > 32:
    raise NotImplementedError(f"prng_seed with a seed of dtype {dt}")
  return [convert(s, dt, U32) for s in scalars]


@register(tpu_primitives.prng_seed_p, pure=False)
def _prng_seed(ctx, *seeds):
  scalars = []
  for s, a in zip(seeds, ctx.avals_in):
    scalars.extend(_seed_scalars(ctx, s, a))
  if not scalars:
    raise NotImplementedError("prng_seed without seeds")
  zero = const(int_type(32), 0)
  k1, k2 = zero, scalars[0]          # jax.random.key(s0)
  for s in scalars[1:]:              # jax.random.fold_in(key, s)
    k1, k2 = threefry2x32(k1, k2, zero, s)
  state = _prng_state(ctx.kernel)
  for i, v in enumerate((k1, k2, zero)):
    memref.store(v, state, [arith.constant(ir.IndexType.get(), i)])
  return []


@register(tpu_primitives.prng_random_bits_p, pure=False)
def _prng_random_bits(ctx, *, shape):
  shape = tuple(shape)
  state = _prng_state(ctx.kernel)
  idx = lambda i: arith.constant(ir.IndexType.get(), i)
  k1, k2, n = (memref.load(state, [idx(i)]) for i in range(3))
  memref.store(arith.addi(n, const(n.type, 1)), state, [idx(2)])
  i32 = np.dtype(np.int32)
  if not shape:
    o1, o2 = threefry2x32(k1, k2, n, const(n.type, 0))
    return values.Scalar(arith.xori(o1, o2), i32)
  if pymath.prod(shape) > 2 ** 32:
    raise NotImplementedError("prng_random_bits of more than 2**32 values")
  _, lo = _flat_index(shape, 0, shape)
  node = values.Op(lambda a: arith.xori(*threefry2x32(*a)),
                   (values.Splat(k1), values.Splat(k2), values.Splat(n), lo))
  return values.Array(node, shape, i32)


# -- shape primitives on key arrays: the ordinary rules on the key data -------------
def _key_shape(ctx) -> tuple:
  for a in (*ctx.avals_out, *ctx.avals_in):
    if isinstance(getattr(a, "dtype", None), prng.KeyTy):
      return tuple(a.dtype._impl.key_shape)
  raise AssertionError("no key operand")


def _physical_ctx(ctx):
  return dataclasses.replace(
      ctx, avals_in=[_physical(a) for a in ctx.avals_in],
      avals_out=[_physical(a) for a in ctx.avals_out])


@register_key_rule(slicing.slice_p)
def _key_slice(fn, ctx, x, *, start_indices, limit_indices, strides):
  ks = _key_shape(ctx)
  return fn(_physical_ctx(ctx), x,
            start_indices=(*start_indices, *[0] * len(ks)),
            limit_indices=(*limit_indices, *ks),
            strides=None if strides is None else (*strides, *[1] * len(ks)))


@register_key_rule(lax.squeeze_p, lax.concatenate_p, lax.rev_p)
def _key_same_params(fn, ctx, *args, **params):
  # Dimensions index the leading (logical) dimensions: unchanged.
  return fn(_physical_ctx(ctx), *args, **params)


@register_key_rule(lax.reshape_p)
def _key_reshape(fn, ctx, x, *dyn, new_sizes, dimensions, **params):
  if dimensions is not None:
    raise NotImplementedError("reshape of a key array with a permutation")
  return fn(_physical_ctx(ctx), x, *dyn,
            new_sizes=(*new_sizes, *_key_shape(ctx)), dimensions=None,
            **params)


@register_key_rule(lax.broadcast_in_dim_p)
def _key_broadcast_in_dim(fn, ctx, x, *dyn, shape, broadcast_dimensions,
                          **params):
  ks = _key_shape(ctx)
  n = len(shape)
  return fn(_physical_ctx(ctx), x, *dyn, shape=(*shape, *ks),
            broadcast_dimensions=(*broadcast_dimensions,
                                  *range(n, n + len(ks))), **params)


@register_key_rule(lax.transpose_p)
def _key_transpose(fn, ctx, x, *, permutation):
  n = len(permutation)
  ks = _key_shape(ctx)
  return fn(_physical_ctx(ctx), x,
            permutation=(*permutation, *range(n, n + len(ks))))


@register_key_rule(lax.select_n_p)
def _key_select_n(fn, ctx, which, *cases):
  pctx = _physical_ctx(ctx)
  shape = tuple(pctx.avals_out[0].shape)
  if isinstance(which, values.Array):  # broadcast over the key dimensions
    n = len(which.shape)
    which = values.Array(values.reindex(which.node, list(range(n)), shape),
                         shape, which.dtype)
    pctx.avals_in[0] = jax_core.ShapedArray(shape, ctx.avals_in[0].dtype)
  return fn(pctx, which, *cases)
