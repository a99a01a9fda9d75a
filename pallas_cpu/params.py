"""Options of the compiled CPU backend."""
from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class CompilerParams:
  """CPU-specific options for ``pallas_cpu.pallas_call``.

  Example::

    pallas_cpu.pallas_call(kernel, out_shape=..., backend="cpu",
                           compiler_params=pallas_cpu.CompilerParams(
                               uninitialized_memory="zero"))

  Attributes:
    uninitialized_memory: what reads of memory the kernel never wrote see
      (edge-block padding, unwritten scratch): "nan" fills interpret=True's
      per-dtype value (NaN floats, INT_MIN signed ints -- 0 for int16 --,
      0 unsigned ints, False bool), "zero" fills zeros.
    dma_execution_mode: as in TPU interpret mode: "on_wait" runs a DMA only
      when a wait on its semaphore needs it (exposing reads that do not wait),
      "eager" copies at start.
    dimension_semantics: per grid dimension "parallel" or "arbitrary", as in
      ``pltpu.CompilerParams`` (which is honoured too when this is None): the
      first parallel dimension runs on a thread pool, in contiguous chunks.
    num_threads: threads for that dimension; None takes PALLAS_CPU_NUM_THREADS
      or the machine's cores.
    opt_level: LLVM optimisation level; None takes PALLAS_CPU_OPT_LEVEL, or
      if unset chooses by the kernel's work per call: 0 for at most ~1M
      element operations (a test's kernel: compile time dominates), else 3.
    grid_order: "sequential" (row-major, as TPU runs one core's grid) or
      "random": the iterations of every parallel dimension run in an order
      drawn from ``seed`` -- a kernel whose results depend on that order
      shows it, as it may on a megacore chip (TPU interpret mode permutes
      parallel dimensions the same way, InterpretParams(random_seed=...)).
      An order-independent kernel gives the same results either way.
    seed: the seed of "random" grid order.
    exit_checks: what a semaphore left with a non-zero count, or a DMA
      started and never waited for, at kernel exit (or at the end of the
      run_scoped scope that owns its semaphore) is: "error" (the call
      fails, naming the semaphore or the DMA's source line), "warn" (a
      RuntimeWarning; pending DMAs then complete as the hardware would) or
      "off".  A DMA still reading or writing a run_scoped buffer when its
      scope ends is always an error.
    detect_races: build the instrumented variant of the kernel (its own
      cache entry): every pair of conflicting accesses to a buffer by
      different actors -- the cores of a mesh, the cores a parallel grid
      dimension is split over (``num_cores``), devices, in-flight DMAs --
      that no semaphore, DMA wait or barrier orders is reported ("RACE
      DETECTED ...", ``pallas_cpu.race_reports()``).  PALLAS_CPU_DETECT_RACES=1
      turns it on for every kernel.
    on_race: "report" (print and record each race) or "raise" (the call
      fails with the first one).
    num_cores: the TPU cores per device a parallel grid dimension is split
      over in the race-detecting build, as TPU interpret mode's
      ``num_cores_or_threads`` (default 1: one core runs the grid in order;
      2 models a megacore chip).  The plain build splits over threads.
    device_timeout_s: a kernel that talks to other devices (remote DMAs
      and signals, barrier semaphores, inside shard_map) starts on all of
      them together; a device that has not arrived after this many seconds
      fails the call on the others, naming the devices that did arrive.
    tpu_checks: what a kernel Mosaic would not compile for ``tpu_generation``
      is, checked once per kernel before it is compiled (tpu_checks.py: JAX's
      own Mosaic lowering run offline, plus VMEM/SMEM capacity and dtype
      checks it cannot make): "error" (a ``TpuCompatibilityError``), "warn"
      (one ``TpuCompatibilityWarning`` per kernel) or "off".  None takes
      PALLAS_CPU_TPU_CHECKS (default "warn").
    tpu_generation: the TPU the checks target, as JAX names it
      (``jax._src.pallas.mosaic.tpu_info.ChipVersion``: "v5e", "v5p", "v6e",
      "7x"...; "v7x" and device kinds such as "TPU v6 lite" are accepted).
      None: the newest generation the installed jax knows.
  """
  uninitialized_memory: Literal["nan", "zero"] = "nan"
  dma_execution_mode: Literal["eager", "on_wait"] = "on_wait"
  dimension_semantics: tuple[str, ...] | None = None
  num_threads: int | None = None
  opt_level: int | None = None
  exit_checks: Literal["error", "warn", "off"] = "error"
  grid_order: Literal["sequential", "random"] = "sequential"
  seed: int = 0
  device_timeout_s: float = 20.0
  detect_races: bool = False
  on_race: Literal["report", "raise"] = "report"
  num_cores: int = 1
  tpu_checks: Literal["error", "warn", "off"] | None = None
  tpu_generation: str | None = None

  def __post_init__(self):
    if self.uninitialized_memory not in ("nan", "zero"):
      raise ValueError(
          "uninitialized_memory must be 'nan' or 'zero', got "
          f"{self.uninitialized_memory!r}")
    if self.dma_execution_mode not in ("eager", "on_wait"):
      raise ValueError("dma_execution_mode must be 'eager' or 'on_wait', got "
                       f"{self.dma_execution_mode!r}")
    if self.num_threads is not None and self.num_threads < 1:
      raise ValueError(f"num_threads must be >= 1, got {self.num_threads!r}")
    if self.dimension_semantics is not None:
      object.__setattr__(self, "dimension_semantics",
                         tuple(str(getattr(d, "value", d))
                               for d in self.dimension_semantics))
    if self.grid_order not in ("sequential", "random"):
      raise ValueError("grid_order must be 'sequential' or 'random', got "
                       f"{self.grid_order!r}")
    if self.exit_checks not in ("error", "warn", "off"):
      raise ValueError("exit_checks must be 'error', 'warn' or 'off', got "
                       f"{self.exit_checks!r}")
    if self.on_race not in ("report", "raise"):
      raise ValueError(f"on_race must be 'report' or 'raise', got "
                       f"{self.on_race!r}")
    if self.num_cores < 1:
      raise ValueError(f"num_cores must be >= 1, got {self.num_cores!r}")
    if not self.device_timeout_s > 0:
      raise ValueError("device_timeout_s must be > 0, got "
                       f"{self.device_timeout_s!r}")
    if self.opt_level is not None and self.opt_level not in (0, 1, 2, 3):
      raise ValueError(f"opt_level must be 0..3, got {self.opt_level!r}")
    if self.tpu_checks not in (None, "error", "warn", "off"):
      raise ValueError("tpu_checks must be 'error', 'warn' or 'off', got "
                       f"{self.tpu_checks!r}")
    if self.tpu_generation is not None:
      from pallas_cpu import tpu_checks
      tpu_checks.validate_generation(self.tpu_generation)


def from_interpret_params(p) -> CompilerParams:
  """The CompilerParams that mean what TPU interpret mode's ``p`` asks for
  (``pltpu.InterpretParams``): code written for interpret mode keeps its
  options on the compiled backend."""
  kw = {}
  for ours, theirs in (("detect_races", "detect_races"),
                       ("dma_execution_mode", "dma_execution_mode"),
                       ("uninitialized_memory", "uninitialized_memory"),
                       ("num_cores", "num_cores_or_threads")):
    if hasattr(p, theirs):
      kw[ours] = getattr(p, theirs)
  seed = getattr(p, "random_seed", None)
  if seed is not None:
    kw.update(grid_order="random", seed=int(seed))
  return CompilerParams(**kw)


@dataclasses.dataclass(frozen=True)
class CpuBackend:
  """Marker carried in ``pallas_call_p``'s ``interpret`` parameter.

  The CPU-platform lowering rule of pallas_cpu recognises it and compiles the
  kernel natively.  It is hashable and compares by value, so jit caching and
  ``force_cpu_backend`` (which sets JAX's interpret-mode context to it) work.
  """
  params: CompilerParams = CompilerParams()
