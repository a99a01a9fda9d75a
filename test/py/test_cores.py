"""TensorCore meshes: ``pl.kernel`` / ``pl.core_map`` over
``pltpu.create_tensorcore_mesh``, each core on its own runtime thread, with
per-core scratch and semaphores, signals across cores, and deadlocks and
errors that end the call instead of hanging it -- checked against TPU
interpret mode and plain jnp."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import pallas_cpu
from conftest import assert_same

ROWS = 8


def _x(cores: int) -> jax.Array:
  return jnp.asarray(
      np.random.default_rng(cores).standard_normal((cores * ROWS, 128)),
      jnp.float32)


def _both(build, x, **interpret_kw):
  """``build(x)`` compiled and under TPU interpret mode."""
  with pallas_cpu.force_cpu_backend():
    got = jax.block_until_ready(jax.jit(build)(x))
  with pltpu.force_tpu_interpret_mode(pltpu.InterpretParams(**interpret_kw)):
    want = jax.block_until_ready(jax.jit(build)(x))
  return got, want


def _compiled(build, x):
  with pallas_cpu.force_cpu_backend():
    return jax.block_until_ready(jax.jit(build)(x))


def _per_core_rows(cores: int):
  """Each core copies its rows of x through a VMEM scratch, adding
  1000 * its core index."""
  mesh = pltpu.create_tensorcore_mesh("core", num_cores=cores)

  def build(x):
    @pl.kernel(out_type=jax.ShapeDtypeStruct(x.shape, x.dtype), mesh=mesh,
               scratch_types=[pltpu.VMEM((ROWS, 128), jnp.float32)])
    def kernel(x_hbm, o_hbm, buf):
      c = jax.lax.axis_index("core")
      rows = pl.ds(c * ROWS, ROWS)
      pltpu.sync_copy(x_hbm.at[rows], buf)
      buf[...] = buf[...] + (c * 1000).astype(jnp.float32)
      pltpu.sync_copy(buf, o_hbm.at[rows])
    return kernel(x)
  return build


@pytest.mark.parametrize("cores", [1, 2, 4, 8])
def test_each_core_runs_its_own_part(cores):
  x = _x(cores)
  got, want = _both(_per_core_rows(cores), x)
  ref = x + jnp.repeat(jnp.arange(cores, dtype=jnp.float32) * 1000,
                       ROWS)[:, None]
  assert_same(got, ref)
  assert_same(want, ref)


def test_core_map_form():
  """``pl.core_map`` over refs created with ``pl.run_state``-free code:
  the decorator form inside a function that allocates its output."""
  mesh = pltpu.create_tensorcore_mesh("core", num_cores=2)
  x = _x(2)

  def build(x):
    def stateful(refs):
      x_ref, o_ref = refs

      @pl.core_map(mesh)
      def _():
        c = jax.lax.axis_index("core")
        rows = pl.ds(c * ROWS, ROWS)
        pltpu.sync_copy(x_ref.at[rows], o_ref.at[rows])
    _, out = pl.run_state(stateful)((x, jnp.zeros_like(x)))
    return out
  got, want = _both(build, x)
  assert_same(got, x)
  assert_same(want, x)


def _ring_barrier_scratch(cores: int):
  """Every core writes its index into its own VMEM scratch, signals every
  other core's barrier semaphore and waits for all of them; it then reads
  its scratch back: with per-core scratch each core sees its own index."""
  mesh = pltpu.create_tensorcore_mesh("core", num_cores=cores)

  def build(x):
    @pl.kernel(out_type=jax.ShapeDtypeStruct(x.shape, x.dtype), mesh=mesh,
               scratch_types=[pltpu.VMEM((ROWS, 128), jnp.float32),
                              pltpu.SemaphoreType.REGULAR])
    def kernel(x_hbm, o_hbm, buf, sem):
      c = jax.lax.axis_index("core")
      buf[...] = jnp.full((ROWS, 128), c, jnp.float32)
      for other in range(cores):
        @pl.when(other != c)
        def _():
          pl.semaphore_signal(sem, 1, core_index=other)
      pl.semaphore_wait(sem, cores - 1)
      pltpu.sync_copy(buf, o_hbm.at[pl.ds(c * ROWS, ROWS)])
    return kernel(x)
  return build


@pytest.mark.parametrize("cores", [2, 4, 8])
def test_scratch_is_per_core_and_signals_cross_cores(cores):
  """(TPU interpret mode runs its cores as Python threads that wait inside
  XLA callbacks; past 2 cores on this 2-CPU machine it can starve XLA's
  callback threads and hang, so it is the reference for 2 cores only.)"""
  x = _x(cores)
  ref = jnp.repeat(jnp.arange(cores, dtype=jnp.float32), ROWS)[:, None] * \
      jnp.ones((1, 128), jnp.float32)
  if cores == 2:
    got, want = _both(_ring_barrier_scratch(cores), x)
    assert_same(want, ref)
  else:
    got = _compiled(_ring_barrier_scratch(cores), x)
  assert_same(got, ref)


def _shared_hbm_scratch(cores: int, scoped: bool):
  """Every core doubles its rows into an HBM scratch buffer (a kernel
  scratch operand, or a run_scoped buffer) and signals core 0, which then
  copies the whole buffer out: only with one buffer per device, shared by
  its cores, does it hold every core's rows."""
  mesh = pltpu.create_tensorcore_mesh("core", num_cores=cores)
  hbm = pltpu.HBM((cores * ROWS, 128), jnp.float32)

  def build(x):
    @pl.kernel(out_type=jax.ShapeDtypeStruct(x.shape, x.dtype), mesh=mesh,
               scratch_types=[pltpu.VMEM((ROWS, 128), jnp.float32),
                              pltpu.SemaphoreType.REGULAR,
                              *([] if scoped else [hbm])])
    def kernel(x_hbm, o_hbm, buf, sem, *operand):
      def body(shared):
        c = jax.lax.axis_index("core")
        rows = pl.ds(c * ROWS, ROWS)
        pltpu.sync_copy(x_hbm.at[rows], buf)
        buf[...] = buf[...] * 2
        pltpu.sync_copy(buf, shared.at[rows])
        pl.semaphore_signal(sem, 1, core_index=0)

        @pl.when(c == 0)
        def _():
          pl.semaphore_wait(sem, cores)
          pltpu.sync_copy(shared, o_hbm)
      if scoped:
        pl.run_scoped(body, hbm)
      else:
        body(*operand)
    return kernel(x)
  return build


@pytest.mark.parametrize("scoped", [False, True], ids=["scratch", "scoped"])
@pytest.mark.parametrize("cores", [2, 4])
def test_hbm_scratch_is_shared_by_the_cores(cores, scoped):
  x = _x(cores)
  got = _compiled(_shared_hbm_scratch(cores, scoped), x)
  assert_same(got, x * 2)
  # TPU interpret mode runs the run_scoped form (2 cores: see above); an
  # HBM scratch operand fails an assertion there.
  if cores == 2 and scoped:
    with pltpu.force_tpu_interpret_mode(pltpu.InterpretParams(
        allow_hbm_allocation_in_run_scoped=True)):
      want = jax.block_until_ready(
          jax.jit(_shared_hbm_scratch(cores, scoped))(x))
    assert_same(want, x * 2)


def test_cores_share_hbm_ordered_by_a_regular_semaphore():
  """Core 0 writes rows 0:8 of the HBM output and then signals core 1,
  which waits, reads them back from HBM and writes twice them to rows
  8:16: the result depends on the order the semaphore imposes."""
  mesh = pltpu.create_tensorcore_mesh("core", num_cores=2)
  x = _x(2)

  def build(x):
    @pl.kernel(out_type=jax.ShapeDtypeStruct(x.shape, x.dtype), mesh=mesh,
               scratch_types=[pltpu.VMEM((ROWS, 128), jnp.float32),
                              pltpu.SemaphoreType.REGULAR])
    def kernel(x_hbm, o_hbm, buf, sem):
      c = jax.lax.axis_index("core")

      @pl.when(c == 0)
      def _():
        pltpu.sync_copy(x_hbm.at[pl.ds(0, ROWS)], o_hbm.at[pl.ds(0, ROWS)])
        pl.semaphore_signal(sem, 1, core_index=1)

      @pl.when(c == 1)
      def _():
        pl.semaphore_wait(sem, 1)
        pltpu.sync_copy(o_hbm.at[pl.ds(0, ROWS)], buf)
        buf[...] = buf[...] * 2
        pltpu.sync_copy(buf, o_hbm.at[pl.ds(ROWS, ROWS)])
    return kernel(x)
  got, want = _both(build, x)
  ref = jnp.concatenate([x[:ROWS], x[:ROWS] * 2])
  assert_same(got, ref)
  assert_same(want, ref)


def _on_cores(body, cores=2, scratch=(pltpu.SemaphoreType.REGULAR,)):
  """``body(x_hbm, o_hbm, *scratch)`` as a pl.kernel over a mesh of
  ``cores`` TensorCores: a function of x."""
  mesh = pltpu.create_tensorcore_mesh("core", num_cores=cores)

  def build(x):
    return pl.kernel(body, out_type=jax.ShapeDtypeStruct(x.shape, x.dtype),
                     mesh=mesh, scratch_types=list(scratch))(x)
  return build


def test_cross_core_deadlock_is_reported_not_a_hang():
  """Both cores wait for a signal nobody sends: a proof, at once."""
  def body(x_hbm, o_hbm, sem):
    pl.semaphore_wait(sem, 1)
    pltpu.sync_copy(x_hbm, o_hbm)
  with pytest.raises(Exception, match=r"deadlock: every running core waits "
                     r"and none can be signalled: core 0 waits on semaphore "
                     r"'scratch operand 0'\[0\] for 1 .*; core 1 waits on "):
    _compiled(_on_cores(body), _x(2))


def test_wait_for_a_core_that_finished_is_a_deadlock():
  def body(x_hbm, o_hbm, sem):
    c = jax.lax.axis_index("core")

    @pl.when(c == 0)
    def _():
      pl.semaphore_wait(sem, 2)     # core 1 signals only once

    @pl.when(c == 1)
    def _():
      pl.semaphore_signal(sem, 1, core_index=0)
      pltpu.sync_copy(x_hbm, o_hbm)
  with pytest.raises(Exception, match=r"core 0 waits on semaphore 'scratch "
                     r"operand 0'\[0\] for 2 .*holds 1.*1 other core\(s\) "
                     r"finished"):
    _compiled(_on_cores(body), _x(2))


def test_an_error_on_one_core_releases_the_others():
  """Core 1 fails a debug check before it signals core 0, which waits:
  the call fails with core 1's error, and core 0 does not hang."""
  def body(x_hbm, o_hbm, sem):
    c = jax.lax.axis_index("core")

    @pl.when(c == 0)
    def _():
      pl.semaphore_wait(sem, 1)
      pltpu.sync_copy(x_hbm, o_hbm)

    @pl.when(c == 1)
    def _():
      pl.debug_check(c == 0, "core 1 refuses")
      pl.semaphore_signal(sem, 1, core_index=0)
  with pl.enable_debug_checks(True), pytest.raises(
      Exception, match=r"core 1: debug check failed .*core 1 refuses"):
    _compiled(_on_cores(body), _x(2))


def test_signal_to_a_core_outside_the_mesh_is_an_error():
  def body(x_hbm, o_hbm, sem):
    pltpu.sync_copy(x_hbm, o_hbm)
    pl.semaphore_signal(sem, 1, core_index=jax.lax.axis_index("core") + 2)
  with pytest.raises(Exception, match=r"targets core [23] but the kernel "
                     r"runs on 2 cores"):
    _compiled(_on_cores(body), _x(2))

# -- the order of parallel iterations ------------------------------------------
def _order_kernel(x_ref, o_ref, last):
  """Order-dependent on purpose: each step writes the index of the step
  that ran before it (a scratch carried across the parallel dimension)."""
  i = pl.program_id(0)

  @pl.when(i == 0)
  def _():
    last[0] = -1

  o_ref[...] = x_ref[...] * 0 + last[0].astype(jnp.float32)
  last[0] = i


def _ordered(x, order, seed=0, kernel=_order_kernel, semantics="parallel"):
  spec = pl.BlockSpec((8, 128), lambda i: (i, 0))
  return pallas_cpu.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
      grid=(x.shape[0] // 8,), in_specs=[spec], out_specs=spec,
      scratch_shapes=[pltpu.SMEM((1,), jnp.int32)],
      compiler_params=pallas_cpu.CompilerParams(
          dimension_semantics=(semantics,), num_threads=1,
          grid_order=order, seed=seed))(x)


def test_random_grid_order_shows_an_order_dependent_kernel():
  x = _x(8)  # 64 rows: 8 steps
  sequential = np.asarray(_ordered(x, "sequential"))[::8, 0]
  # (The dimension is split in two, as a megacore's two cores split it,
  # even on one thread: the second half starts with the scratch's fill.)
  np.testing.assert_array_equal(
      sequential, [-1, 0, 1, 2, np.iinfo(np.int32).min, 4, 5, 6])
  shuffled = np.asarray(_ordered(x, "random", seed=3))[::8, 0]
  assert not np.array_equal(shuffled, sequential)
  # Each step but step 0 (which resets the record to -1) and the first to
  # run on each half (which sees the scratch's fill) saw the step run
  # before it: distinct steps, each recorded once.
  seen = [int(v) for v in shuffled if v in range(8)]
  assert len(seen) >= 5 and len(set(seen)) == len(seen)
  # The same seed gives the same order; "arbitrary" dimensions keep theirs.
  assert_same(_ordered(x, "random", seed=3)[::8, 0], jnp.asarray(shuffled))
  np.testing.assert_array_equal(
      np.asarray(_ordered(x, "random", seed=3, semantics="arbitrary"))[::8, 0],
      [-1, 0, 1, 2, 3, 4, 5, 6])


def test_random_grid_order_keeps_an_order_independent_kernel():
  def kernel(x_ref, o_ref, _):
    o_ref[...] = x_ref[...] * 2 + pl.program_id(0).astype(jnp.float32)
  x = _x(8)
  want = x * 2 + jnp.repeat(jnp.arange(8, dtype=jnp.float32), 8)[:, None]
  for seed in (0, 1, 2):
    assert_same(_ordered(x, "random", seed=seed, kernel=kernel), want)


@pytest.mark.parametrize("semantics", ["core_parallel", "subcore_parallel",
                                       "parallel"])
def test_core_parallel_grid_dimensions(semantics):
  """A grid whose first dimension is split across cores (megacore), each
  core accumulating over the second, arbitrary, dimension with its own
  resident output block: the same result as jnp and interpret=True."""
  x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 6, 8, 128)),
                  jnp.float32)

  def kernel(x_ref, o_ref):
    @pl.when(pl.program_id(1) == 0)
    def _():
      o_ref[...] = jnp.zeros_like(o_ref)
    o_ref[...] += x_ref[0, 0] * (pl.program_id(1) + 1).astype(jnp.float32)

  def build(x, **kw):
    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((4, 8, 128), jnp.float32),
        grid=(4, 6),
        in_specs=[pl.BlockSpec((1, 1, 8, 128), lambda i, j: (i, j, 0, 0))],
        out_specs=pl.BlockSpec((None, 8, 128), lambda i, j: (i, 0, 0)),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=(semantics, "arbitrary")), **kw)(x)
  got = _compiled(build, x)
  want = jnp.einsum("ijrc,j->irc", x, jnp.arange(1, 7, dtype=jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
  interpreted = jax.jit(functools.partial(build, interpret=True))(x)
  # (XLA contracts interpret mode's x * k + acc into an FMA; we round
  # twice: the last bit differs, hence atol at the sums' scale.)
  np.testing.assert_allclose(got, interpreted, rtol=1e-6, atol=1e-5)
