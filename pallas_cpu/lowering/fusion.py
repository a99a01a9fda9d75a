"""Jaxpr-level fusions: equation patterns the walker hands to one rule.

The one pattern so far is the accumulator update of every tiled matmul,

    a = get acc_ref[idx]; d = dot_general(x, y); s = add(a, d)
    swap acc_ref[idx] <- s

(the ``get`` may also follow the dot: ``d = dot(x, y); acc_ref[idx] += d``),
which, lowered equation by equation, costs a product temporary plus one more
pass over the accumulator.  When nothing between the ``get`` and the
``swap`` touches ``acc_ref`` and the intermediate values have no other use,
the ``dot_general`` rule is offered an ``AccumulateTarget`` and may write
``acc_ref[idx] += x . y`` itself (the microkernel's accumulate mode); if it
accepts, the walker skips the ``add`` and the ``swap``.

Moving the write from the ``swap`` to the ``dot_general`` is safe because no
equation in between reads the ref (checked), and lazy values that read it
from before the ``get`` are computed first (``flush``).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
from jax._src import ad_util
from jax._src import core as jax_core
from jax._src import linear_util as lu
from jax._src import source_info_util
from jax._src import tree_util
from jax._src.interpreters import partial_eval as pe
from jax._src.lax import lax
from jax._src.state import indexing
from jax._src.state import primitives as state_primitives
from jax._src.state import types as state_types

_ADDS = (lax.add_p, ad_util.add_any_p)


@dataclasses.dataclass
class AccumulateTarget:
  """Where a dot_general may accumulate its product: ``ref`` viewed through
  the swap's transforms (``tree``, ``index_args``).  The rule calls
  ``flush(root)`` before writing and sets ``accepted``."""
  ref: object
  tree: object
  index_args: list
  flush: Callable[[object], None]
  accepted: bool = False


@dataclasses.dataclass
class DotAccumulate:
  get_eqn: jax_core.JaxprEqn
  acc_var: jax_core.Var      # the get's result, dead once fused
  fused: tuple[int, int]     # indices of the add and the swap


def users_of(jaxpr: jax_core.Jaxpr) -> dict:
  """var -> indices of the equations reading it (len(eqns) for outvars)."""
  users: dict = {}
  for i, eqn in enumerate(jaxpr.eqns):
    for v in eqn.invars:
      if isinstance(v, jax_core.Var):
        users.setdefault(v, []).append(i)
  for v in jaxpr.outvars:
    if isinstance(v, jax_core.Var):
      users.setdefault(v, []).append(len(jaxpr.eqns))
  return users


def _same_atom(a, b) -> bool:
  if isinstance(a, jax_core.Literal) and isinstance(b, jax_core.Literal):
    return a.val is b.val or (type(a.val) is type(b.val) and a.val == b.val)
  return a is b


def match_dot_accumulate(jaxpr: jax_core.Jaxpr, i: int, users: dict
                         ) -> DotAccumulate | None:
  eqns = jaxpr.eqns
  dot = eqns[i]
  if dot.primitive is not lax.dot_general_p:
    return None
  (d,) = dot.outvars
  if len(users.get(d, ())) != 1:
    return None
  (j,) = users[d]
  if j >= len(eqns) or eqns[j].primitive not in _ADDS:
    return None
  add = eqns[j]
  others = [v for v in add.invars if v is not d]
  if len(others) != 1 or not isinstance(others[0], jax_core.Var):
    return None
  a = others[0]
  (s,) = add.outvars
  if len(users.get(a, ())) != 1 or len(users.get(s, ())) != 1:
    return None
  (k,) = users[s]
  if k >= len(eqns) or eqns[k].primitive is not state_primitives.swap_p:
    return None
  swap = eqns[k]
  old = swap.outvars[0]
  if swap.invars[1] is not s or (not isinstance(old, jax_core.DropVar)
                                 and users.get(old)):
    return None
  ref = swap.invars[0]
  # The get that produced `a`: same ref, same transforms, same indices --
  # before the dot (acc_ref[...] += dot(x, y)) or after it (d = dot(x, y);
  # ...; acc_ref[...] += d).
  g = next((n for n in range(j) if a in eqns[n].outvars), None)
  if g is None or eqns[g].primitive is not state_primitives.get_p:
    return None
  if g > i:
    # The write moves to the dot: the swap's indices must exist there.
    later = {v for n in range(i, k) for v in eqns[n].outvars}
    if any(isinstance(x, jax_core.Var) and x in later
           for x in swap.invars[2:]):
      return None
  get = eqns[g]
  if (get.invars[0] is not ref or get.params["tree"] != swap.params["tree"]
      or len(get.invars) != len(swap.invars) - 1
      or not all(_same_atom(x, y) for x, y in zip(get.invars[1:],
                                                  swap.invars[2:]))):
    return None
  if (a.aval.dtype != d.aval.dtype or a.aval.shape != d.aval.shape
      or s.aval.dtype != d.aval.dtype):
    return None
  for n in range(min(g, i) + 1, k):
    if n in (i, j, g):
      continue
    if any(v is ref for v in eqns[n].invars):
      return None  # the ref is read or written in between
    # Another ref may name the same storage (input_output_aliases): only
    # reads, before the dot, may touch refs -- lazy ones are flushed there.
    if any(isinstance(v.aval, state_types.AbstractRef)
           for v in eqns[n].invars) and (
               n > i or eqns[n].primitive is not state_primitives.get_p):
      return None
  if any(v is ref for v in dot.invars):
    return None
  return DotAccumulate(get, a, (j, k))


# -- Row splitting ------------------------------------------------------------
#
# A grid step's body is sequential code.  When the kernel computes every
# element of its output blocks from the elements at the same position of
# its input blocks (values broadcast along the rows aside), the rows of a
# block are independent: the body may run on row bands of the blocks, each
# band on its own thread, with results identical to one pass over the
# whole block.  ``row_local`` proves that from the jaxpr, equation by
# equation, against a short list of primitives whose meaning is position by
# position; ``retrace_rows`` rebuilds the body on blocks of fewer rows.

def _elementwise_primitives() -> frozenset:
  names = """add sub mul div rem max min neg abs sign floor ceil round
      exp exp2 log log1p expm1 tanh logistic sin cos tan asin acos atan sinh
      cosh asinh acosh atanh sqrt rsqrt cbrt pow integer_pow square erf erfc
      erf_inv atan2 nextafter is_finite convert_element_type select_n clamp
      eq ne lt le gt ge and or xor not shift_left shift_right_logical
      shift_right_arithmetic population_count clz reduce_precision copy
      bitcast_convert_type""".split()
  prims = {getattr(lax, f"{n}_p") for n in names if hasattr(lax, f"{n}_p")}
  return frozenset(prims | {ad_util.add_any_p})


_ELEMENTWISE = _elementwise_primitives()
_ROW_REDUCTIONS = frozenset(
    getattr(lax, f"reduce_{n}_p") for n in ("sum", "max", "min", "prod",
                                            "and", "or", "xor")
    if hasattr(lax, f"reduce_{n}_p"))
_ROW, _FREE = "row", "free"


def _call_jaxpr(eqn: jax_core.JaxprEqn) -> jax_core.ClosedJaxpr | None:
  """The jaxpr a jit or custom_jvp call runs (inlined by the analysis)."""
  if eqn.primitive.name == "jit":
    return eqn.params["jaxpr"]
  if eqn.primitive.name == "custom_jvp_call":
    return eqn.params["call_jaxpr"]
  return None


def _full_window(eqn: jax_core.JaxprEqn, n_ref_args: int) -> bool:
  """Whether a get/swap reads or writes its whole ref (``ref[...]``)."""
  ref = eqn.invars[0]
  shape = ref.aval.shape
  try:
    transforms = tree_util.tree_unflatten(eqn.params["tree"],
                                          eqn.invars[n_ref_args:])
  except Exception:  # noqa: BLE001 - anything unusual: not a full window
    return False
  if not transforms:
    return True  # ref[...] on the whole ref: no transform at all
  if len(transforms) != 1 or not isinstance(transforms[0],
                                            indexing.NDIndexer):
    return False
  (idx,) = transforms
  if tuple(idx.shape) != tuple(shape):
    return False
  for s, n in zip(idx.indices, shape):
    if not isinstance(s, indexing.Slice):
      return False
    start = s.start.val if isinstance(s.start, jax_core.Literal) else s.start
    if not (isinstance(start, int) and start == 0 and isinstance(s.size, int)
            and s.size == n and s.stride == 1):
      return False
  return True


def row_local(jaxpr: jax_core.Jaxpr, split: Sequence[bool], rows: int,
              *, same_positions: bool = False) -> bool:
  """Whether the kernel body ``jaxpr`` is independent across the rows of
  its split refs: ``split[k]`` says the ``k``-th ref argument has ``rows``
  rows (its first dimension) that the body may be run on in bands.

  Proved by labelling every value ROW (its first dimension is the split
  rows: element i depends on row i of the split refs only) or FREE (the
  same for every row: scalars, whole unsplit refs, and what is computed
  from them).  Allowed: reads of whole refs, writes of whole split refs
  with ROW values, position-wise primitives (``_ELEMENTWISE``, with the
  implicit broadcasting of size-1 dimensions), ``broadcast_in_dim`` that
  keeps the rows or broadcasts FREE values along them, reductions along
  other dimensions than the rows (softmax's, layer norm's), and jit /
  custom_jvp calls of such bodies.  Anything else (reductions across rows,
  reshapes, iota, control flow, program ids, DMAs, scratch) makes it
  False.

  ``same_positions``: moreover every ROW value keeps the shape of the
  split refs (no broadcasting of ROW values, no reductions), so element p
  of an output depends on element p of the split refs only, in every
  dimension."""
  if len(split) != len(jaxpr.invars) or rows < 2 or jaxpr.constvars:
    return False
  labels: dict = {}
  for v, s in zip(jaxpr.invars, split):
    if not isinstance(v.aval, state_types.AbstractRef):
      return False
    if s and (not v.aval.shape or v.aval.shape[0] != rows):
      return False
    labels[v] = ("split" if s else "whole")
  return _row_local_eqns(jaxpr, labels, rows, same_positions)


def _label(labels: dict, a) -> str | None:
  if isinstance(a, jax_core.Literal):
    return _FREE if not np.shape(a.val) else None
  return labels.get(a)


def _rowwise_operand(label: str, shape: tuple, out_shape: tuple,
                     rows: int) -> bool:
  """Whether an operand of an elementwise equation keeps rows apart: ROW
  values span the rows, FREE ones are scalars or broadcast along them."""
  if not shape:
    return label == _FREE
  if len(shape) != len(out_shape) or any(
      d not in (1, o) for d, o in zip(shape[1:], out_shape[1:])):
    return False
  if label == _ROW:
    return shape[0] == rows and out_shape[0] == rows
  return label == _FREE and shape[0] == 1


def _row_local_eqns(jaxpr: jax_core.Jaxpr, labels: dict, rows: int,
                    same_positions: bool = False) -> bool:
  for v in jaxpr.constvars:  # a call's constants: whole, never split
    labels[v] = _FREE
  users = users_of(jaxpr)
  for eqn in jaxpr.eqns:
    prim = eqn.primitive
    ins = [_label(labels, a) for a in eqn.invars]
    if any(label is None for label in ins):
      return False
    if prim is state_primitives.get_p:
      if ins[0] not in ("split", "whole") or not _full_window(eqn, 1):
        return False
      labels[eqn.outvars[0]] = _ROW if ins[0] == "split" else _FREE
      continue
    if prim is state_primitives.swap_p:
      old = eqn.outvars[0]
      if (ins[0] != "split" or ins[1] != _ROW or not _full_window(eqn, 2)
          or eqn.invars[1].aval.shape != eqn.invars[0].aval.shape
          or (not isinstance(old, jax_core.DropVar) and users.get(old))):
        return False
      continue
    if any(label in ("split", "whole") for label in ins):
      return False  # a ref passed to anything else
    out_shapes = [tuple(o.aval.shape) for o in eqn.outvars]
    if prim in _ELEMENTWISE:
      (out_shape,) = out_shapes
      if _ROW in ins:
        # A FREE operand as tall as the rows would be split wrongly.
        if not all(_rowwise_operand(la, tuple(a.aval.shape), out_shape, rows)
                   and not (same_positions and la == _ROW
                            and tuple(a.aval.shape) != out_shape)
                   for a, la in zip(eqn.invars, ins)):
          return False
        labels[eqn.outvars[0]] = _ROW
      else:  # computed whole, the same in every band
        labels[eqn.outvars[0]] = _FREE
      continue
    if prim is lax.broadcast_in_dim_p:
      (out_shape,) = out_shapes
      if len(eqn.invars) != 1:
        return False  # dynamic shapes
      (a,) = eqn.invars
      dims = tuple(eqn.params["broadcast_dimensions"])
      in_shape = tuple(a.aval.shape)
      to_row = [k for k, d in enumerate(dims) if d == 0]
      if ins[0] == _ROW:
        if to_row != [0] or not out_shape or out_shape[0] != rows:
          return False
        if same_positions and (in_shape != out_shape or dims != tuple(
            range(len(dims)))):
          return False
        labels[eqn.outvars[0]] = _ROW
      else:
        if to_row and in_shape[to_row[0]] != 1:
          return False  # a FREE dimension would become the rows
        labels[eqn.outvars[0]] = (_ROW if out_shape and out_shape[0] == rows
                                  else _FREE)
      continue
    if prim in _ROW_REDUCTIONS and not same_positions:
      # Along other dimensions than the rows: row i of the result is
      # computed from row i alone, in the same order however many rows.
      (a,) = eqn.invars
      axes = tuple(eqn.params["axes"])
      if ins[0] == _ROW:
        if 0 in axes or not a.aval.shape or a.aval.shape[0] != rows:
          return False
        labels[eqn.outvars[0]] = _ROW
      else:
        labels[eqn.outvars[0]] = _FREE
      continue
    inner = _call_jaxpr(eqn)
    if inner is not None:
      sub = {v: la for v, la in zip(inner.jaxpr.invars, ins)}
      if not _row_local_eqns(inner.jaxpr, sub, rows, same_positions):
        return False
      for o, io in zip(eqn.outvars, inner.jaxpr.outvars):
        la = _label(sub, io)
        if la not in (_ROW, _FREE):
          return False
        labels[o] = la
      continue
    return False
  return True


def retrace_rows(jaxpr: jax_core.Jaxpr, split: Sequence[bool],
                 rows: int) -> jax_core.Jaxpr:
  """The body ``jaxpr`` (``row_local`` for ``split``) traced again with
  its split refs, and the ROW values computed from them, ``rows`` rows
  tall; every equation keeps its source location."""
  in_avals = []
  for v, s in zip(jaxpr.invars, split):
    aval = v.aval
    if s:
      inner = aval.inner_aval
      aval = aval.update(inner_aval=inner.update(
          shape=(rows, *inner.shape[1:])))
    in_avals.append(aval)
  full_rows = {v.aval.shape[0] for v, s in zip(jaxpr.invars, split) if s}
  (old_rows,) = full_rows

  def resize(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (rows, *shape[1:]) if shape[0] == old_rows else shape

  def run(*args):
    _eval_blocks(jaxpr, [], list(args), resize)
    return []

  fun = lu.wrap_init(run, debug_info=jaxpr.debug_info)
  new, _, consts = pe.trace_to_jaxpr_dynamic(fun, in_avals)
  if consts:
    raise AssertionError("row split: the re-traced body captured constants")
  return new


def retrace_blocks(jaxpr: jax_core.Jaxpr, split: Sequence[bool],
                   shape: tuple[int, ...]) -> jax_core.Jaxpr:
  """The body ``jaxpr`` (``row_local`` with ``same_positions`` for
  ``split``, every ref argument split) traced again with its refs of
  ``shape`` (the same rank as before): every value of the old block shape
  takes the new one, dimension by dimension (size-1 dimensions of
  broadcast scalars stay 1); every equation keeps its source location.
  Raises when a value's shape is neither (a shape that would not follow)."""
  olds = {tuple(v.aval.shape) for v, s in zip(jaxpr.invars, split) if s}
  if len(olds) != 1 or not all(split):
    raise ValueError("retrace_blocks: every ref must be split, one shape")
  (old,) = olds
  if len(old) != len(shape):
    raise ValueError("retrace_blocks: the rank must stay")
  in_avals = [v.aval.update(inner_aval=v.aval.inner_aval.update(shape=shape))
              for v in jaxpr.invars]

  def resize(s: tuple[int, ...]) -> tuple[int, ...]:
    if len(s) != len(old) or any(d not in (1, o) for d, o in zip(s, old)):
      raise ValueError(f"retrace_blocks: a value of shape {s} in a body on "
                       f"blocks of {old}")
    return tuple(n if d == o else d for d, o, n in zip(s, old, shape))

  def run(*args):
    _eval_blocks(jaxpr, [], list(args), resize)
    return []

  fun = lu.wrap_init(run, debug_info=jaxpr.debug_info)
  new, _, consts = pe.trace_to_jaxpr_dynamic(fun, in_avals)
  if consts:
    raise AssertionError("coalescing: the re-traced body captured constants")
  return new


def _eval_blocks(jaxpr: jax_core.Jaxpr, consts, args, resize) -> list:
  """Evaluates ``jaxpr`` on refs of new block shapes: ``resize`` maps the
  shape of every (non-scalar) ``broadcast_in_dim`` to the new blocks'."""
  env: dict = {}

  def read(a):
    return a.val if isinstance(a, jax_core.Literal) else env[a]

  for v, x in zip(jaxpr.constvars, consts):
    env[v] = x
  for v, x in zip(jaxpr.invars, args):
    env[v] = x
  for eqn in jaxpr.eqns:
    with source_info_util.user_context(eqn.source_info.traceback,
                                       name_stack=eqn.source_info.name_stack):
      prim = eqn.primitive
      ins = [read(a) for a in eqn.invars]
      if prim is state_primitives.get_p:
        outs = [ins[0][...]]
      elif prim is state_primitives.swap_p:
        ins[0][...] = ins[1]
        outs = [None]
      elif prim is lax.broadcast_in_dim_p:
        shape = tuple(eqn.params["shape"])
        if shape:
          shape = resize(shape)
        outs = [lax.broadcast_in_dim(ins[0], shape,
                                     eqn.params["broadcast_dimensions"])]
      elif _call_jaxpr(eqn) is not None:
        inner = _call_jaxpr(eqn)
        outs = _eval_blocks(inner.jaxpr, inner.consts, ins, resize)
      else:
        out = prim.bind(*ins, **eqn.params)
        outs = out if prim.multiple_results else [out]
    for v, x in zip(eqn.outvars, outs):
      if not isinstance(v, jax_core.DropVar):
        env[v] = x
  return [read(v) for v in jaxpr.outvars]


def written_first(jaxpr: jax_core.Jaxpr, k: int) -> bool:
  """Whether the body's first use of ref argument ``k`` writes all of it
  (``ref[...] = v``): what the ref held before is never read."""
  ref = jaxpr.invars[k]
  for eqn in jaxpr.eqns:
    if not any(v is ref for v in eqn.invars):
      continue
    return (eqn.primitive is state_primitives.swap_p and eqn.invars[0] is ref
            and all(v is not ref for v in eqn.invars[1:])
            and _full_window(eqn, 2))
  return False
