"""Sub-byte integers (int4, uint4, int2, uint2) in refs and values.

Compared with interpret=True (and TPU interpret mode where it runs them),
jnp or numpy, bit for bit except float matmul sums: the packed arrays XLA
hands the custom call (unpacked to a byte each by the runtime's handler,
results packed back, odd element counts too), blocks, edge
blocks, aliasing, scratch, SMEM, DMA windows, strided and masked accesses,
arithmetic that wraps at 4/2 bits, casts to and from every 8/16/32-bit
type, reductions, bitcasts that pack along the second-minor dimension,
dots with int4 operands and a quantized matmul (int4 weights dequantized
in the kernel, also read through a ref bitcast of packed int32 words)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same, call, check_against_interpret
from strategies import GRIDS, run_blocked, shapes

SUB = [jnp.int4, jnp.uint4, jnp.int2, jnp.uint2]
WIDE_INTS = [jnp.int8, jnp.int16, jnp.int32, jnp.uint8, jnp.uint16,
             jnp.uint32]
FLOATS = [jnp.float32, jnp.bfloat16, jnp.float16]
SEEDS = st.integers(0, 2**31 - 1)
EXAMPLES = settings(max_examples=10, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.filter_too_much])
# Mosaic rejects much of what is tested here (int4 reductions, unsigned
# ones, odd block shapes): the checks would only warn.
NO_CHECKS = pallas_cpu.CompilerParams(tpu_checks="off")


def sub_array(rng, shape, dtype):
  """Every value of ``dtype`` equally likely, extremes planted first."""
  info = jnp.iinfo(dtype)
  x = rng.integers(int(info.min), int(info.max), shape, endpoint=True)
  flat = x.reshape(-1)
  specials = [int(info.min), int(info.max), 0, -1 if info.min < 0 else 1]
  k = min(len(specials), flat.size)
  flat[:k] = specials[:k]
  return jnp.asarray(x, jnp.int32).astype(dtype)


def wide_array(rng, shape, dtype):
  """Values of an 8/16/32-bit type: integers over their whole range, floats
  around the sub-byte ranges with halves, NaN, infinities, huge values."""
  dtype = np.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.integer):
    info = np.iinfo(dtype)
    return jnp.asarray(rng.integers(info.min, info.max, shape, dtype=dtype,
                                    endpoint=True))
  x = (rng.standard_normal(shape) * 6).astype(np.float32)
  x = np.where(rng.random(shape) < 0.3, np.round(x * 2) / 2, x)
  flat = x.reshape(-1)
  specials = [np.nan, np.inf, -np.inf, 7.5, -8.5, 15.5, 1e30, -0.0, 3.5, -1.0]
  k = min(len(specials), flat.size)
  flat[:k] = specials[:k]
  return jnp.asarray(x).astype(dtype)


def cpu_call(kernel, out_shape, *args, **kw):
  return call(kernel, out_shape, *args, backend="cpu",
              compiler_params=NO_CHECKS, **kw)


def check(kernel, out_shape, *args, tpu_interpret=False, **kw):
  """Compiled result == interpret=True's (and TPU interpret mode's)."""
  got = cpu_call(kernel, out_shape, *args, **kw)
  assert_same(got, call(kernel, out_shape, *args, backend="interpret", **kw))
  if tpu_interpret:
    assert_same(got, call(kernel, out_shape, *args, backend="tpu-interpret",
                          **kw))
  return got


def run(fn, args, grid=()):
  """strategies.run_blocked with the TPU checks off."""
  with pallas_cpu.force_cpu_backend(NO_CHECKS):
    return run_blocked(fn, args, grid)


# -- the boundary ---------------------------------------------------------------------
@EXAMPLES
@given(shapes(1, 3, max_elems=2048), st.sampled_from(SUB), SEEDS)
def test_operands_and_results_round_trip(shape, dtype, seed):
  """XLA packs 2 (4) elements per byte, odd counts too: the kernel sees
  each element, and its outputs are packed back."""
  x = sub_array(np.random.default_rng(seed), shape, dtype)

  def kernel(x_ref, o_ref, w_ref):
    o_ref[...] = x_ref[...]
    w_ref[...] = x_ref[...].astype(jnp.int32)
  outs = (jax.ShapeDtypeStruct(shape, dtype),
          jax.ShapeDtypeStruct(shape, jnp.int32))
  got = check(kernel, outs, x)
  assert_same(got, (x, x.astype(jnp.int32)))


def test_nested_in_a_jit_with_packed_neighbours():
  """Sub-byte values made and consumed by XLA around the call."""
  x = jnp.arange(-40, 40, dtype=jnp.int32).reshape(8, 10)

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2 + 1

  def f(x):
    y = pallas_cpu.pallas_call(kernel, jax.ShapeDtypeStruct(x.shape, jnp.int4),
                               backend="cpu", compiler_params=NO_CHECKS)(
                                   x.astype(jnp.int4))
    return y.astype(jnp.int32) + 100
  want = (x.astype(jnp.int4) * jnp.int4(2) + jnp.int4(1)).astype(
      jnp.int32) + 100
  assert_same(jax.jit(f)(x), want)


# -- elementwise ----------------------------------------------------------------------
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lax.div,  # by zero, INT_MIN / -1: XLA's results
    "rem": lax.rem,
    "and": lambda a, b: a & b,
    "or": lambda a, b: a | b,
    "xor": lambda a, b: a ^ b,
    "max": jnp.maximum,
    "min": jnp.minimum,
    "shl": lax.shift_left,  # amounts past the width and negative ones
    "shr_logical": lax.shift_right_logical,
    "shr_arithmetic": lax.shift_right_arithmetic,
    "select": lambda a, b: lax.select(a > b, a, b),
    "compare": lambda a, b: jnp.stack([a < b, a <= b, a == b, a != b]),
    "negate": lambda a, b: -a + ~b,
    "sign": lambda a, b: lax.sign(a),
    "integer_pow": lambda a, b: lax.integer_pow(a, 3),
    "clamp": lambda a, b: lax.clamp(a, b, a + a),
    "iota": lambda a, b: a + lax.broadcasted_iota(a.dtype, a.shape, a.ndim - 1),
    "constants": lambda a, b: a * jnp.asarray(3, a.dtype) + jnp.asarray(
        -1, jnp.int32).astype(a.dtype),
    "clz": lambda a, b: lax.clz(a),
}


@EXAMPLES
@given(shapes(1, 3, max_elems=2048), st.sampled_from(SUB),
       st.sampled_from(sorted(BINARY)), GRIDS, SEEDS)
def test_elementwise(shape, dtype, op, grid, seed):
  """Results wrap at the dtype's width, as XLA's do."""
  rng = np.random.default_rng(seed)
  a, b = sub_array(rng, shape, dtype), sub_array(rng, shape, dtype)
  run(BINARY[op], [a, b], grid)


@pytest.mark.parametrize("dtype", SUB)
def test_population_count(dtype):
  """The count of the dtype's own bits (numpy).  XLA's CPU backend counts
  the bits of a signed value sign-extended to a byte (popcount(int4 -8) =
  5), so interpret mode agrees only on non-negative values."""
  x = sub_array(np.random.default_rng(0), (4, 32), dtype)

  def kernel(x_ref, o_ref):
    o_ref[...] = lax.population_count(x_ref[...])
  got = cpu_call(kernel, jax.ShapeDtypeStruct(x.shape, dtype), x)
  bits = jnp.iinfo(dtype).bits
  raw = np.asarray(x.astype(jnp.int32)) & ((1 << bits) - 1)
  want = np.vectorize(lambda v: bin(v).count("1"))(raw)
  assert_same(got, jnp.asarray(want, jnp.int32).astype(dtype))
  if jnp.issubdtype(dtype, jnp.unsignedinteger):
    assert_same(got, call(kernel, jax.ShapeDtypeStruct(x.shape, dtype), x,
                          backend="interpret"))


# -- casts ------------------------------------------------------------------------------
@EXAMPLES
@given(shapes(1, 3, max_elems=2048), st.sampled_from(SUB),
       st.sampled_from([*WIDE_INTS, *FLOATS, jnp.bool_]), st.booleans(), GRIDS,
       SEEDS)
def test_casts(shape, sub, other, into_sub, grid, seed):
  """Both directions: float -> sub-byte saturates (NaN -> 0), integers
  wrap, sub-byte -> wider sign- or zero-extends."""
  rng = np.random.default_rng(seed)
  if into_sub:
    if other == jnp.bool_:
      x = jnp.asarray(rng.integers(0, 2, shape).astype(bool))
    else:
      x = wide_array(rng, shape, other)
    run(lambda v: v.astype(sub), [x], grid)
  else:
    run(lambda v: v.astype(other), [sub_array(rng, shape, sub)], grid)


@pytest.mark.parametrize("src", SUB)
def test_casts_between_sub_byte_types(src):
  x = sub_array(np.random.default_rng(1), (8, 128), src)

  def fn(v):
    return tuple(v.astype(d) for d in SUB)
  got = run(fn, [x])
  assert_same(got, fn(x))


@pytest.mark.parametrize("sub", SUB)
def test_float_to_sub_byte_saturates(sub):
  """Every float type, jnp's (XLA's) semantics: clamp to the range, NaN is
  0, round toward zero."""
  vals = np.array([np.nan, np.inf, -np.inf, 100.0, -100.0, 7.9, -8.9, 3.99,
                   -3.99, 1.5, -1.5, 0.49, -0.0, 15.5, 16.0, 2.0], np.float32)
  for f in FLOATS:
    x = jnp.asarray(vals).astype(f).reshape(2, 8)

    def kernel(x_ref, o_ref):
      o_ref[...] = x_ref[...].astype(sub)
    got = check(kernel, jax.ShapeDtypeStruct(x.shape, sub), x)
    assert_same(got, x.astype(sub))


# -- reductions ------------------------------------------------------------------------
@EXAMPLES
@given(shapes(2, 3, max_elems=2048), st.sampled_from(SUB), SEEDS)
def test_reductions(shape, dtype, seed):
  """Sums in the dtype (wrapping), max, min, and sums widened to int32
  first (jnp refuses and/or reductions and default-dtype sums of int4)."""
  x = sub_array(np.random.default_rng(seed), shape, dtype)
  axis = seed % len(shape)

  def fn(v):
    return (jnp.sum(v, axis=axis, dtype=dtype), jnp.max(v, axis=axis),
            jnp.min(v, axis=(0, v.ndim - 1)),
            jnp.sum(v.astype(jnp.int32), axis=axis))
  got = run(fn, [x])
  assert_same(got, fn(x))


# -- memory --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", SUB)
def test_blocks_and_edge_blocks(dtype):
  """A 2-D grid of blocks, the last ones partial (padding never reaches
  the output)."""
  x = sub_array(np.random.default_rng(2), (50, 200), dtype)
  y = sub_array(np.random.default_rng(3), (50, 200), dtype)
  spec = pl.BlockSpec((16, 128), lambda i, j: (i, j))

  def kernel(x_ref, y_ref, o_ref):
    o_ref[...] = x_ref[...] * y_ref[...] - x_ref[...]
  got = check(kernel, jax.ShapeDtypeStruct(x.shape, dtype), x, y,
              grid=(4, 2), in_specs=[spec, spec], out_specs=spec,
              tpu_interpret=True)
  assert_same(got, x * y - x)


def test_input_output_aliases():
  x = sub_array(np.random.default_rng(4), (32, 128), jnp.int4)
  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] * jnp.int4(3)
  got = jax.jit(lambda v: cpu_call(
      kernel, jax.ShapeDtypeStruct(v.shape, v.dtype), v, grid=(4,),
      in_specs=[spec], out_specs=spec, input_output_aliases={0: 0}))(x)
  assert_same(got, x * jnp.int4(3))


@pytest.mark.parametrize("donate", [False, True])
def test_aliased_any_output_keeps_what_the_kernel_leaves(donate):
  """An aliased pl.ANY operand is one buffer: the handler unpacks it once
  and packs it back whole, rows the kernel never wrote included (XLA
  copies the operand first when it is not donated)."""
  rng = np.random.default_rng(13)
  x = sub_array(rng, (24, 130), jnp.int2)
  y = sub_array(rng, (8, 130), jnp.int2)

  def kernel(x_hbm, y_ref, o_hbm):
    del x_hbm  # o_hbm is the same buffer
    pltpu.sync_copy(y_ref, o_hbm.at[pl.ds(8, 8)])
  any_spec = pl.BlockSpec(memory_space=pl.ANY)
  f = jax.jit(lambda a, b: cpu_call(
      kernel, jax.ShapeDtypeStruct(a.shape, a.dtype), a, b,
      in_specs=[any_spec, pl.BlockSpec(memory_space=pltpu.VMEM)],
      out_specs=any_spec, input_output_aliases={0: 0}),
      donate_argnums=(0,) if donate else ())
  want = x.at[8:16].set(y)
  assert_same(f(jnp.array(x), y), want)


def test_race_detection_build():
  """The instrumented build sees the unpacked copies (one byte each)."""
  x = sub_array(np.random.default_rng(14), (64, 128), jnp.uint4)
  spec = pl.BlockSpec((16, 128), lambda i: (i, 0))

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] * x_ref[...]
  pallas_cpu.reset_races()
  got = call(kernel, jax.ShapeDtypeStruct(x.shape, x.dtype), x,
             backend="cpu", grid=(4,), in_specs=[spec], out_specs=spec,
             compiler_params=pallas_cpu.CompilerParams(
                 detect_races=True, tpu_checks="off"))
  assert_same(got, x * x)
  assert not pallas_cpu.races_found()


@pytest.mark.parametrize("fill", ["nan", "zero"])
@pytest.mark.parametrize("dtype", SUB)
def test_scratch_and_uninitialized_memory(dtype, fill):
  """Scratch never written holds interpret=True's fill under "nan" (the
  dtype's minimum), 0 under "zero"."""
  x = sub_array(np.random.default_rng(5), (8, 16), dtype)

  def kernel(x_ref, o_ref, s_ref, u_ref):
    s_ref[...] = x_ref[...]
    o_ref[0] = s_ref[...] + s_ref[...]
    o_ref[1] = u_ref[...]
  out = jax.ShapeDtypeStruct((2, 8, 16), dtype)
  scratch = [pltpu.VMEM((8, 16), dtype)] * 2
  got = call(kernel, out, x, backend="cpu", scratch_shapes=scratch,
             compiler_params=pallas_cpu.CompilerParams(
                 uninitialized_memory=fill, tpu_checks="off"))
  unset = jnp.full((8, 16), jnp.iinfo(dtype).min if fill == "nan" else 0,
                   dtype)
  assert_same(got, jnp.stack([x + x, unset]))
  if fill == "nan":
    assert_same(got, call(kernel, out, x, backend="interpret",
                          scratch_shapes=scratch))


@pytest.mark.parametrize("dtype", SUB)
def test_smem(dtype):
  x = sub_array(np.random.default_rng(6), (16,), dtype)

  def kernel(x_ref, o_ref):
    for i in range(8):
      o_ref[i] = x_ref[2 * i] * x_ref[2 * i + 1] + x_ref[15 - i]
  smem = pl.BlockSpec(memory_space=pltpu.SMEM)
  got = check(kernel, jax.ShapeDtypeStruct((8,), dtype), x, in_specs=[smem],
              out_specs=smem)
  assert_same(got, x[0::2] * x[1::2] + x[15:7:-1])


@EXAMPLES
@given(st.sampled_from(SUB), st.integers(0, 20), st.integers(1, 12),
       st.integers(0, 60), st.integers(1, 68), st.integers(1, 2), SEEDS)
def test_dma_windows(dtype, r0, rows, c0, cols, step, seed):
  """Windows of a pl.ANY operand copied into VMEM and from VMEM into a
  window of a pl.ANY output, in element units whatever the packing."""
  rows = min(rows, (32 - r0 + step - 1) // step)
  cols = min(cols, 128 - c0)
  x = sub_array(np.random.default_rng(seed), (32, 128), dtype)

  def kernel(x_hbm, o_hbm, buf, sems):
    copy = pltpu.make_async_copy(
        x_hbm.at[pl.ds(r0, rows, stride=step), pl.ds(c0, cols)], buf,
        sems.at[0])
    copy.start()
    copy.wait()
    buf[...] = buf[...] + 1
    back = pltpu.make_async_copy(buf, o_hbm.at[pl.ds(1, rows), pl.ds(3, cols)],
                                 sems.at[1])
    back.start()
    back.wait()
  any_spec = pl.BlockSpec(memory_space=pl.ANY)
  kw = dict(in_specs=[any_spec], out_specs=any_spec,
            scratch_shapes=[pltpu.VMEM((rows, cols), dtype),
                            pltpu.SemaphoreType.DMA((2,))],
            input_output_aliases={0: 0})
  got = jax.jit(lambda v: cpu_call(
      kernel, jax.ShapeDtypeStruct(v.shape, dtype), v, **kw))(x)
  want = x.at[1:1 + rows, 3:3 + cols].set(
      x[r0:r0 + step * rows:step, c0:c0 + cols] + jnp.ones((), dtype))
  assert_same(got, want)
  # TPU interpret mode runs it too (interpret=True has no aliased ANY refs).
  assert_same(got, jax.jit(lambda v: call(
      kernel, jax.ShapeDtypeStruct(v.shape, dtype), v,
      backend="tpu-interpret", **kw))(x))


@pytest.mark.parametrize("dtype", SUB)
def test_strided_and_masked_accesses(dtype):
  x = sub_array(np.random.default_rng(7), (64, 128), dtype)

  def the_mask():
    return ((lax.broadcasted_iota(jnp.int32, (32, 128), 1) % 3 == 1)
            & (lax.broadcasted_iota(jnp.int32, (32, 128), 0) < 29))

  def kernel(x_ref, o_ref, m_ref):
    o_ref[...] = jnp.zeros(o_ref.shape, dtype)
    rows = x_ref[pl.ds(1, 32, stride=2), :]          # a strided load
    o_ref[pl.ds(0, 32, stride=2), :] = rows + rows  # a strided store
    m_ref[...] = jnp.zeros(m_ref.shape, dtype)
    pltpu.store(m_ref.at[pl.ds(1, 32), :], x_ref[pl.ds(0, 32), :],
                mask=the_mask())                    # a masked store
  outs = (jax.ShapeDtypeStruct(x.shape, dtype),
          jax.ShapeDtypeStruct((40, 128), dtype))
  got = check(kernel, outs, x, tpu_interpret=True)
  want = jnp.zeros_like(x).at[0::2].set(x[1::2] + x[1::2])
  masked = jnp.zeros((40, 128), dtype).at[1:33].set(
      jnp.where(the_mask(), x[:32], jnp.zeros((), dtype)))
  assert_same(got, (want, masked))


def test_dynamic_row_windows():
  """Loads and stores at rows only known at run time (fori_loop)."""
  x = sub_array(np.random.default_rng(8), (16, 128), jnp.int4)

  def kernel(x_ref, o_ref):
    def body(i, carry):
      o_ref[pl.ds(15 - i, 1), :] = x_ref[pl.ds(i, 1), :] - carry
      return carry + x_ref[pl.ds(i, 1), :]
    lax.fori_loop(0, 16, body, jnp.zeros((1, 128), jnp.int4))
  check(kernel, jax.ShapeDtypeStruct(x.shape, jnp.int4), x)


# -- bitcasts --------------------------------------------------------------------------
BITCAST_PAIRS = [(jnp.int4, jnp.int8), (jnp.int4, jnp.int32),
                 (jnp.uint4, jnp.uint16), (jnp.int2, jnp.int8),
                 (jnp.uint2, jnp.int32), (jnp.int4, jnp.float32),
                 (jnp.uint4, jnp.bfloat16)]


def tpu_pack(x, wide):
  """numpy model of pltpu.bitcast to a wider dtype: word [q, c] holds
  x[q*r + k, c] in bits [k*w, (k+1)*w)."""
  w = jnp.iinfo(x.dtype).bits
  r = np.dtype(wide).itemsize * 8 // w
  u = np.asarray(x.astype(jnp.int32)).astype(np.uint64) & ((1 << w) - 1)
  out = np.zeros((u.shape[0] // r, u.shape[1]), np.uint64)
  for k in range(r):
    out |= u[k::r] << np.uint64(k * w)
  uint = np.dtype(f"uint{np.dtype(wide).itemsize * 8}")
  return jnp.asarray(out.astype(uint).view(np.dtype(wide)))


def tpu_unpack(v, narrow):
  """numpy model of pltpu.bitcast to a narrower (sub-byte) dtype."""
  bits = np.dtype(v.dtype).itemsize * 8
  w = jnp.iinfo(narrow).bits
  r = bits // w
  u = np.asarray(v).view(np.dtype(f"uint{bits}")).astype(np.int64)
  out = np.zeros((u.shape[0] * r, u.shape[1]), np.int64)
  for k in range(r):
    out[k::r] = (u >> (k * w)) & ((1 << w) - 1)
  return jnp.asarray(out.astype(np.int32)).astype(narrow)  # wraps to the range


def wide_bits(rng, shape, dtype):
  """Random bits of an integer dtype; random normal values of a float one
  (no NaN payloads for XLA to canonicalize)."""
  dtype = np.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.floating):
    return jnp.asarray(rng.standard_normal(shape) * 100, dtype)
  raw = rng.integers(0, 2 ** 8, (*shape, dtype.itemsize), dtype=np.uint8)
  return jnp.asarray(raw.view(dtype).reshape(shape))


@pytest.mark.parametrize("narrow,wide", BITCAST_PAIRS)
def test_value_bitcasts(narrow, wide):
  """pltpu.bitcast packs along the second-minor dimension (rows k::r of
  the narrow value are bit slot k), both ways; lax.bitcast_convert_type
  along a trailing dimension (part k in bits [k*w, (k+1)*w)), as XLA does."""
  rng = np.random.default_rng(9)
  ratio = np.dtype(wide).itemsize * 8 // jnp.iinfo(narrow).bits
  x = sub_array(rng, (8 * ratio, 128), narrow)
  w = wide_bits(rng, (8, 128), wide)
  tpu_wide = run(lambda v: pltpu.bitcast(v, wide), [x])
  if jnp.issubdtype(wide, jnp.integer):
    assert_same(tpu_wide, tpu_pack(x, wide))
  run(lambda v: lax.bitcast_convert_type(v.reshape(8, 128, ratio), wide),
      [x])
  run(lambda v: pltpu.bitcast(v, narrow), [w])
  run(lambda v: lax.bitcast_convert_type(v, narrow), [w])
  # one direction undoes the other
  back = cpu_call(lambda i_ref, o_ref: o_ref.__setitem__(
      ..., pltpu.bitcast(i_ref[...], narrow)),
      jax.ShapeDtypeStruct(x.shape, narrow), tpu_wide)
  assert_same(back, x)


@pytest.mark.parametrize("narrow,wide", BITCAST_PAIRS[:5])
def test_ref_bitcasts(narrow, wide):
  """Loads through ref.bitcast both ways (vs interpret=True); stores
  through them (interpret mode cannot: vs pltpu.bitcast of the value), a
  whole view and one bit slot of every packed word (read-modify-write)."""
  rng = np.random.default_rng(10)
  ratio = np.dtype(wide).itemsize * 8 // jnp.iinfo(narrow).bits
  x = sub_array(rng, (8 * ratio, 128), narrow)
  w = wide_bits(rng, (8, 128), wide)

  def load_wide(x_ref, o_ref):
    o_ref[...] = x_ref.bitcast(wide)[...]

  def load_narrow(w_ref, o_ref):
    o_ref[...] = w_ref.bitcast(narrow)[...] + 1
  check(load_wide, jax.ShapeDtypeStruct(w.shape, wide), x)
  check(load_narrow, jax.ShapeDtypeStruct(x.shape, narrow), w)

  def store_narrow(x_ref, o_ref):
    o_ref.bitcast(narrow)[...] = x_ref[...]
  got = cpu_call(store_narrow, jax.ShapeDtypeStruct(w.shape, wide), x)
  assert_same(got, tpu_pack(x, wide))

  def store_wide(w_ref, o_ref):
    o_ref.bitcast(wide)[...] = w_ref[...]
  got = cpu_call(store_wide, jax.ShapeDtypeStruct(x.shape, narrow), w)
  assert_same(got, tpu_unpack(w, narrow))

  slot = ratio - 1  # bit slot ``slot`` is rows slot::ratio of the view

  def store_slot(w_ref, x_ref, o_ref):
    o_ref[...] = w_ref[...]
    o_ref.bitcast(narrow)[pl.ds(slot, 8, stride=ratio), :] = x_ref[...]
  got = cpu_call(store_slot, jax.ShapeDtypeStruct(w.shape, wide), w,
                 x[:8])
  narrow_view = tpu_unpack(w, narrow).at[slot::ratio].set(x[:8])
  assert_same(got, tpu_pack(narrow_view, wide))


# -- dots --------------------------------------------------------------------------------
def _dot_i32(a, b):
  return lax.dot_general(a, b, (((1,), (0,)), ((), ())),
                         preferred_element_type=jnp.int32)


@pytest.mark.parametrize("lhs_dtype", [jnp.int8, jnp.int4, jnp.int2])
def test_integer_dots(lhs_dtype):
  """int8 x int4 -> int32 vs interpret mode; int4 x int4 and int2 x int4
  vs numpy (XLA's CPU backend rejects them: 'custom element sizes on
  non-sub-byte types')."""
  rng = np.random.default_rng(11)
  if lhs_dtype == jnp.int8:
    a = jnp.asarray(rng.integers(-128, 128, (32, 256)), jnp.int8)
  else:
    a = sub_array(rng, (32, 256), lhs_dtype)
  b = sub_array(rng, (256, 128), jnp.int4)

  def kernel(a_ref, b_ref, o_ref):
    o_ref[...] = _dot_i32(a_ref[...], b_ref[...])
  out = jax.ShapeDtypeStruct((32, 128), jnp.int32)
  if lhs_dtype == jnp.int8:
    got = check(kernel, out, a, b)
  else:
    got = cpu_call(kernel, out, a, b)
  want = (np.asarray(a.astype(jnp.int32)).astype(np.int64)
          @ np.asarray(b.astype(jnp.int32)).astype(np.int64))
  assert_same(got, jnp.asarray(want.astype(np.int32)))


def test_unsigned_sub_byte_dot_is_refused():
  """As Mosaic: dot_general reads integers as signed; cast first."""
  a = jnp.zeros((8, 128), jnp.uint4)

  def kernel(a_ref, o_ref):
    o_ref[...] = _dot_i32(a_ref[...], a_ref[...].T)
  with pytest.raises(NotImplementedError, match="uint4"):
    cpu_call(kernel, jax.ShapeDtypeStruct((8, 8), jnp.int32), a)


def _quantized_matmul(x, w, scales, *, packed, bm=64, bn=128, bk=128):
  """x @ dequantize(w): bf16 activations, int4 weights with per-column f32
  scales, dequantized in the kernel block by block; f32 accumulator over
  the k grid dimension.  ``packed``: the weights arrive as int32 words of 8
  int4 each (rows packed as Mosaic packs them) and are read through
  ``ref.bitcast``."""
  m, k = x.shape
  n = scales.shape[1]
  rows = bk // 8 if packed else bk

  def kernel(x_ref, w_ref, s_ref, o_ref, acc_ref):
    @pl.when(pl.program_id(2) == 0)
    def _():
      acc_ref[...] = jnp.zeros_like(acc_ref)
    q = w_ref.bitcast(jnp.int4)[...] if packed else w_ref[...]
    acc_ref[...] += jnp.dot(x_ref[...], q.astype(jnp.bfloat16),
                            preferred_element_type=jnp.float32)

    @pl.when(pl.program_id(2) == pl.num_programs(2) - 1)
    def _():
      o_ref[...] = (acc_ref[...] * s_ref[...]).astype(o_ref.dtype)
  return dict(
      kernel=kernel, out_shape=jax.ShapeDtypeStruct((m, n), jnp.float32),
      grid=(m // bm, n // bn, k // bk),
      in_specs=[pl.BlockSpec((bm, bk), lambda i, j, kk: (i, kk)),
                pl.BlockSpec((rows, bn), lambda i, j, kk: (kk, j)),
                pl.BlockSpec((1, bn), lambda i, j, kk: (0, j))],
      out_specs=pl.BlockSpec((bm, bn), lambda i, j, kk: (i, j)),
      scratch_shapes=[pltpu.VMEM((bm, bn), jnp.float32)])


@pytest.mark.parametrize("packed", [False, True])
def test_quantized_matmul(packed):
  rng = np.random.default_rng(12)
  m, k, n = 128, 512, 256
  x = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
  w = sub_array(rng, (k, n), jnp.int4)
  scales = jnp.asarray(rng.uniform(0.01, 0.1, (1, n)), jnp.float32)
  # Packed along k in blocks of bk rows, as the kernel's ref bitcast reads.
  w_in = (jnp.concatenate([tpu_pack(w[i:i + 128], jnp.int32)
                           for i in range(0, k, 128)]) if packed else w)
  spec = _quantized_matmul(x, w, scales, packed=packed)
  kernel, out_shape = spec.pop("kernel"), spec.pop("out_shape")
  got = cpu_call(kernel, out_shape, x, w_in, scales, **spec)
  want = jnp.dot(x.astype(jnp.float32), w.astype(jnp.float32),
                 precision="highest") * scales
  assert_same(got, want, exact=False, rtol=1e-5, atol=1e-4)
  interp = call(kernel, out_shape, x, w_in, scales, backend="interpret",
                **spec)
  assert_same(got, interp, exact=False, rtol=1e-5, atol=1e-4)
