"""The race-detecting build (CompilerParams(detect_races=True)): verdicts
match TPU interpret mode's (InterpretParams(detect_races=True)) on racy and
correctly ordered kernels -- across the cores of a mesh, the cores a
parallel grid dimension is split over, and in-flight DMAs -- reports name
both accesses' source lines, and the shipped TPU kernels run clean."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import hypothesis
import pytest
from hypothesis import strategies as st
from jax._src.pallas.mosaic.interpret import interpret_pallas_call as tpu_interp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same

RACES = pallas_cpu.CompilerParams(detect_races=True)


@pytest.fixture(autouse=True)
def _fresh_reports():
  pallas_cpu.reset_races()
  yield
  pallas_cpu.reset_races()


def _compiled(build, x, params=RACES):
  pallas_cpu.reset_races()
  with pallas_cpu.force_cpu_backend(params):
    out = jax.block_until_ready(jax.jit(build)(x))
  return out, pallas_cpu.races_found()


def _interpreted(build, x, **kw):
  with pltpu.force_tpu_interpret_mode(
      pltpu.InterpretParams(detect_races=True, **kw)):
    out = jax.block_until_ready(jax.jit(build)(x))
  return out, tpu_interp.races.races_found


def _x(rows=16):
  return jnp.arange(rows * 128, dtype=jnp.float32).reshape(rows, 128)


# -- cores of a mesh ---------------------------------------------------------------
def _two_cores_write(ordered: bool):
  """Core 0 copies all of x to the output; core 1 overwrites rows 8:16 --
  after core 0 signals it (ordered) or whenever it gets there (a race)."""
  mesh = pltpu.create_tensorcore_mesh("core", num_cores=2)

  def build(x):
    @pl.kernel(out_type=jax.ShapeDtypeStruct(x.shape, x.dtype), mesh=mesh,
               scratch_types=[pltpu.SemaphoreType.REGULAR])
    def kernel(x_hbm, o_hbm, sem):
      c = jax.lax.axis_index("core")

      @pl.when(c == 0)
      def _():
        pltpu.sync_copy(x_hbm, o_hbm)
        if ordered:
          pl.semaphore_signal(sem, 1, core_index=1)

      @pl.when(c == 1)
      def _():
        if ordered:
          pl.semaphore_wait(sem, 1)
        pltpu.sync_copy(x_hbm.at[pl.ds(0, 8)], o_hbm.at[pl.ds(8, 8)])
    return kernel(x)
  return build


@pytest.mark.parametrize("ordered", [False, True], ids=["racy", "ordered"])
def test_cores_of_a_mesh(ordered):
  x = _x()
  got, found = _compiled(_two_cores_write(ordered), x)
  _, want_found = _interpreted(_two_cores_write(ordered), x)
  assert found == want_found == (not ordered)
  if ordered:
    assert_same(got, jnp.concatenate([x[:8], x[:8]]))
  else:
    (r,) = pallas_cpu.race_reports()
    assert r.kind == "write-write" and r.buffer == "output 0"
    assert (r.first, r.last) == (8 * 128, 16 * 128 - 1)
    # Both DMAs, with their cores and source lines.
    assert {"the DMA that core 0 started", "the DMA that core 1 started"} == {
        s.split(" at ")[0] for s in (r.earlier, r.later)}
    assert "test_races.py" in r.earlier and "test_races.py" in r.later


# -- a DMA in flight ---------------------------------------------------------------
def _read_before_wait(racy: bool, space=None):
  """A DMA from x into a buffer -- a VMEM scratch, or a second output in
  HBM / ANY -- that the kernel reads into its output (a load, or for HBM a
  second DMA) before (racy) or after the wait."""
  def kernel(x_hbm, o_ref, *rest):
    buf, sem = rest[0], rest[-1]

    def read():
      if space is None:
        o_ref[...] = buf[...]
      else:  # an HBM buffer is read by a DMA (as Mosaic requires)
        pltpu.sync_copy(buf, o_ref)

    copy = pltpu.make_async_copy(x_hbm, buf, sem)
    copy.start()
    if racy:
      read()  # the copy may still be writing buf
      copy.wait()
    else:
      copy.wait()
      read()

  def build(x):
    out = jax.ShapeDtypeStruct(x.shape, x.dtype)
    if space is None:
      return pl.pallas_call(
          kernel, out_shape=out,
          in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
          scratch_shapes=[pltpu.VMEM(x.shape, x.dtype),
                          pltpu.SemaphoreType.DMA])(x)
    o, _ = pl.pallas_call(
        kernel, out_shape=(out, out),
        in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
        out_specs=(pl.BlockSpec(memory_space=pltpu.VMEM),
                   pl.BlockSpec(memory_space=space)),
        scratch_shapes=[pltpu.SemaphoreType.DMA])(x)
    return o
  return build


@pytest.mark.parametrize("space", [None, pl.ANY, pltpu.HBM],
                         ids=["vmem", "any", "hbm"])
@pytest.mark.parametrize("mode", ["on_wait", "eager"])
@pytest.mark.parametrize("racy", [True, False], ids=["racy", "waited"])
def test_reading_a_dma_destination_before_its_wait(racy, mode, space):
  x = _x(8)
  got, found = _compiled(_read_before_wait(racy, space), x,
                         pallas_cpu.CompilerParams(detect_races=True,
                                                   dma_execution_mode=mode))
  _, want_found = _interpreted(_read_before_wait(racy, space), x,
                               dma_execution_mode=mode)
  assert found == want_found == racy
  if racy:
    (r,) = pallas_cpu.race_reports()
    assert r.kind == "read-write"
    assert ("scratch operand 0" if space is None else "output 1") in r.buffer
    sides = r.earlier + " | " + r.later
    assert "the DMA that the kernel started" in sides
    assert "test_races.py" in sides
  else:
    assert_same(got, x)


# -- a parallel grid dimension on two cores ------------------------------------------
def _accumulate_over(semantics: str):
  """Every step of the grid adds into the same output block: fine when the
  dimension runs in order on one core, a race when two cores split it."""
  def kernel(x_ref, o_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      o_ref[...] = jnp.zeros_like(o_ref)
    o_ref[...] += x_ref[...]

  def build(x):
    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((8, 128), x.dtype), grid=(4,),
        in_specs=[pl.BlockSpec((8, 128), lambda i: (i, 0))],
        out_specs=pl.BlockSpec((8, 128), lambda i: (0, 0)),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=(semantics,)))(x)
  return build


def _disjoint_blocks(semantics: str):
  """Each step writes its own output block: no race on any core count."""
  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2

  def build(x):
    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype), grid=(4,),
        in_specs=[pl.BlockSpec((8, 128), lambda i: (i, 0))],
        out_specs=pl.BlockSpec((8, 128), lambda i: (i, 0)),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=(semantics,)))(x)
  return build


@pytest.mark.parametrize("cores", [2, 4])
def test_a_parallel_dimension_writing_disjoint_blocks(cores):
  x = _x(32)
  got, found = _compiled(_disjoint_blocks("parallel"), x,
                         pallas_cpu.CompilerParams(detect_races=True,
                                                   num_cores=cores))
  _, want_found = _interpreted(_disjoint_blocks("parallel"), x,
                               num_cores_or_threads=cores)
  assert found == want_found is False
  assert_same(got, x * 2)


@pytest.mark.parametrize("semantics,cores,racy", [
    ("parallel", 2, True), ("parallel", 1, False), ("arbitrary", 2, False)])
def test_a_parallel_dimension_split_over_cores(semantics, cores, racy):
  x = _x(32)
  got, found = _compiled(_accumulate_over(semantics), x,
                         pallas_cpu.CompilerParams(detect_races=True,
                                                   num_cores=cores))
  _, want_found = _interpreted(_accumulate_over(semantics), x,
                               num_cores_or_threads=cores)
  assert found == want_found == racy
  if racy:  # the two sides are the two cores the dimension is split over
    for r in pallas_cpu.race_reports():
      assert r.buffer == "output 0"
      assert {r.earlier.split(" at ")[0], r.later.split(" at ")[0]} == {
          "core 0", "core 1"}
  else:
    assert_same(got, x.reshape(4, 8, 128).sum(0))


# -- how it is asked for -------------------------------------------------------------
def test_on_race_raise_fails_the_call():
  with pytest.raises(Exception, match=r"race detected \(write-write\) on "
                     r"output 0: the DMA that core \d started at"):
    _compiled(_two_cores_write(False), _x(), pallas_cpu.CompilerParams(
        detect_races=True, on_race="raise"))


def test_interpret_params_carry_over():
  """Code written for TPU interpret mode: its InterpretParams given to
  force_cpu_backend keep asking for race detection."""
  _, found = _compiled(_two_cores_write(False), _x(),
                       pltpu.InterpretParams(detect_races=True))
  assert found
  _, found = _compiled(_two_cores_write(False), _x(), pltpu.InterpretParams())
  assert not found


def test_environment_knob(monkeypatch):
  monkeypatch.setenv("PALLAS_CPU_DETECT_RACES", "1")
  build = _two_cores_write(False)  # a fresh function: not in jit's cache
  _, found = _compiled(build, _x(), pallas_cpu.CompilerParams())
  assert found


def test_reports_accumulate_until_reset():
  _compiled(_two_cores_write(False), _x())
  with pallas_cpu.force_cpu_backend(RACES):
    jax.block_until_ready(jax.jit(_read_before_wait(True))(_x(8)))
  assert len(pallas_cpu.race_reports()) == 2
  pallas_cpu.reset_races()
  assert not pallas_cpu.races_found()


def test_the_plain_build_finds_nothing():
  """Without detect_races the same racy kernel runs uninstrumented."""
  _, found = _compiled(_two_cores_write(False), _x(),
                       pallas_cpu.CompilerParams())
  assert not found


# -- the shipped kernels run clean ---------------------------------------------------
def test_shipped_kernels_have_no_races():
  from jax.experimental.pallas.ops.tpu import flash_attention, matmul
  k = jax.random.split(jax.random.key(0), 3)
  q, kk, v = (jax.random.normal(key, (1, 2, 256, 128), jnp.float32)
              for key in k)
  a = jax.random.normal(k[0], (256, 512), jnp.float32)
  b = jax.random.normal(k[1], (512, 256), jnp.float32)
  with pallas_cpu.force_cpu_backend(RACES):
    out = jax.jit(functools.partial(flash_attention.flash_attention,
                                    causal=True))(q, kk, v)
    mm = jax.jit(functools.partial(matmul.matmul, block_shape=(128, 128)))(
        a, b)
  want = flash_attention.mha_reference(q, kk, v, None, causal=True)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(mm, a @ b, rtol=1e-5, atol=1e-3)
  assert not pallas_cpu.races_found(), pallas_cpu.race_reports()


def test_scalar_and_smem_accesses():
  """Rank-0 windows (SMEM scalars, scalar prefetch) are accesses too."""
  def kernel(n_ref, x_ref, o_ref, s_ref):
    s_ref[0] = n_ref[0] * 2
    o_ref[...] = x_ref[...] + s_ref[0].astype(jnp.float32)

  x = _x(8)
  with pallas_cpu.force_cpu_backend(RACES):
    got = jax.jit(lambda n, x: pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        in_specs=[pl.BlockSpec(memory_space=pltpu.SMEM),
                  pl.BlockSpec(memory_space=pltpu.VMEM)],
        scratch_shapes=[pltpu.SMEM((1,), jnp.int32)])(n, x))(
            jnp.array([3], jnp.int32), x)
  assert_same(got, x + 6)
  assert not pallas_cpu.races_found()


# -- fuzzing: a race exactly where a wait is misplaced -------------------------------
@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(
    late=st.lists(st.booleans(), min_size=1, max_size=4),
    order=st.randoms(use_true_random=False),
    mode=st.sampled_from(["eager", "on_wait"]))
def test_fuzzed_wait_placement(late, order, mode):
  """k DMAs into k buffers, started in a random order; each buffer is read
  after its wait, or -- where ``late`` says -- before it: exactly the late
  buffers are reported.  (The ground truth, not TPU interpret mode's
  verdict: interpret mode gives DMAs random ids among a few vector-clock
  slots -- one for one core -- so a wait on one DMA can order another's
  write for it and hide the race.)"""
  k = len(late)
  starts = list(range(k))
  order.shuffle(starts)

  def kernel(x_hbm, o_ref, *scratch):
    bufs, sems = scratch[:k], scratch[k]
    copies = [pltpu.make_async_copy(x_hbm.at[pl.ds(8 * i, 8)], bufs[i],
                                    sems.at[i]) for i in range(k)]
    for i in starts:
      copies[i].start()
    for i in range(k):
      if not late[i]:
        copies[i].wait()
    for i in range(k):
      o_ref[pl.ds(8 * i, 8), :] = bufs[i][...]
    for i in range(k):
      if late[i]:
        copies[i].wait()

  def build(x):
    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
        scratch_shapes=[*(pltpu.VMEM((8, 128), jnp.float32)
                          for _ in range(k)),
                        pltpu.SemaphoreType.DMA((k,))])(x)

  x = _x(8 * k)
  got, found = _compiled(build, x, pallas_cpu.CompilerParams(
      detect_races=True, dma_execution_mode=mode))
  reported = {int(r.buffer.split()[2]) for r in pallas_cpu.race_reports()}
  assert reported == {i for i in range(k) if late[i]}
  assert found == any(late)
  if not any(late):
    assert_same(got, x)


def test_a_fused_dot_accumulation_is_an_access_too():
  """``o_ref[...] += jnp.dot(...)`` is fused into the matmul microkernel
  (lowering/fusion.py); its write still reaches the detector: over a
  parallel dimension split on two cores, a race."""
  def kernel(x_ref, w_ref, o_ref):
    @pl.when(pl.program_id(0) == 0)
    def _():
      o_ref[...] = jnp.zeros_like(o_ref)
    o_ref[...] += jnp.dot(x_ref[...], w_ref[...],
                          preferred_element_type=jnp.float32)

  def build(x):
    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((128, 128), x.dtype),
        grid=(4,),
        in_specs=[pl.BlockSpec((128, 128), lambda i: (i, 0)),
                  pl.BlockSpec((128, 128), lambda i: (0, 0))],
        out_specs=pl.BlockSpec((128, 128), lambda i: (0, 0)),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel",)))(x, x[:128])

  x = jnp.asarray(np.random.default_rng(0).standard_normal((512, 128)),
                  jnp.float32)
  text = pallas_cpu.lower(build, x, params=pallas_cpu.CompilerParams(
      detect_races=True)).as_text("kernel")
  assert "pallas_cpu_rt_matmul" in text  # the fused path
  for cores, racy in ((2, True), (1, False)):
    got, found = _compiled(build, x, pallas_cpu.CompilerParams(
        detect_races=True, num_cores=cores))
    assert found == racy
    if racy:
      assert any("output 0" in r.buffer for r in pallas_cpu.race_reports())
    else:
      np.testing.assert_allclose(
          got, (x.reshape(4, 128, 128) @ x[:128]).sum(0), rtol=1e-4,
          atol=1e-3)
