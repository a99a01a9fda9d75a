"""The case table and the words cases, runner and report share.

A table imports nothing: the case modules (``benchmarks/cases/``) register
themselves into it when ``benchmarks.cases`` imports them, as lowering rules
fill JAX's lowering table.  Nothing here imports JAX, so the report and the
plot can be rebuilt from ``results.json`` alone.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

PALLAS_BACKENDS = ("cpu", "interpret", "tpu-interpret")
XLA = "xla"
ALL_BACKENDS = ("cpu", XLA, "interpret", "tpu-interpret")
INTERPRETERS = ("interpret", "tpu-interpret")
LABELS = {"cpu": "pallas_cpu", XLA: "XLA", "interpret": "interpret=True",
          "tpu-interpret": "TPU interpret"}
# ratio name -> (numerator backend, denominator backend)
RATIOS = {"cpu/xla": ("cpu", XLA),
          "interpret/cpu": ("interpret", "cpu"),
          "tpu-interpret/cpu": ("tpu-interpret", "cpu")}
# Metrics targets can name: the ratios, and the compiled backend's time per
# grid step (per_step cases).
METRIC_LABELS = {"cpu/xla": "cpu/XLA", "interpret/cpu": "interpret/cpu",
                 "tpu-interpret/cpu": "tpu-interpret/cpu",
                 "cpu_us_per_step": "pallas_cpu µs/step"}
SKIPPED = "skipped (> budget)"
COMPILE_TARGET_S = 0.5        # median compile time (first call) target
SLOW_CELL_S = 1.0             # interpreter cells slower than this per call
                              # are timed over --slow-repeats calls
# Fast cells (compiled, XLA, variants) of a case whose slowest fast cell
# takes under FAST_CELL_S per call get more rounds than --repeats: as many
# as fit in FAST_TIME_S for that cell, at most MAX_FAST_ROUNDS.  A 1 ms
# memory-bound kernel's minimum over 5 calls moves by +-10% between runs on
# a shared machine; over ~100 it settles.
FAST_CELL_S = 0.02
FAST_TIME_S = 0.25
MAX_FAST_ROUNDS = 100


def label(key: str) -> str:
  """A timed cell's name: a backend's label, or "pallas_cpu <variant>"."""
  return LABELS.get(key, f"pallas_cpu {key}")


def metric_label(name: str) -> str:
  """A metric's name in the report: variant ratios are named as declared
  ("cores1/cores2")."""
  return METRIC_LABELS.get(name, name)


@dataclasses.dataclass
class Probe:
  """A smaller-grid variant of a case's kernel, used to estimate the
  interpreters' time on the full grid: estimate = probe call time * scale."""
  build: Callable[[str], Callable]   # backend -> un-jitted callable
  make_inputs: Callable[[], tuple]
  scale: float                       # full grid steps / probe grid steps


@dataclasses.dataclass
class Case:
  """One benchmark.

  build(backend) returns the (un-jitted) pallas_cpu.pallas_call for
  backend in PALLAS_BACKENDS; reference(*inputs) is the jnp computation of
  the same math (it runs under jax.jit as the XLA baseline and as the
  correctness reference).  targets maps a metric name ("cpu/xla",
  "interpret/cpu", "tpu-interpret/cpu", "cpu_us_per_step" for per_step
  cases, or a name of variant_ratios) to (op, bound), op one of "<=", ">=",
  "<", ">".  skip maps an interpreter backend to the stated reason it is not
  run.

  variants are more cells of the compiled backend: name -> build() of the
  (un-jitted) callable, e.g. the same kernel on a 1-, 2- and 4-core mesh.
  Each is checked against the reference and timed with the backends;
  variant_ratios maps a ratio name to (numerator, denominator), each a
  variant name or a backend ("cores1/cores2": ("cores1", "cores2") is
  t(cores1) / t(cores2)), and targets can name it.
  """
  name: str
  description: str
  make_inputs: Callable[[], tuple]
  build: Callable[[str], Callable]
  reference: Callable[..., Any]
  grid_steps: int
  targets: dict[str, tuple[str, float]] = dataclasses.field(
      default_factory=dict)
  rtol: float = 1e-6
  atol: float = 1e-6
  per_step: bool = False       # report time / grid_steps (µs per step)
  probe: Optional[Probe] = None
  quick: bool = True           # part of --quick
  skip: dict[str, str] = dataclasses.field(default_factory=dict)
  variants: dict[str, Callable[[], Callable]] = dataclasses.field(
      default_factory=dict)
  variant_ratios: dict[str, tuple[str, str]] = dataclasses.field(
      default_factory=dict)
  # False: the cells call build(backend)'s callable and the reference as
  # they are, never under jax.jit -- for a case whose every call traces
  # and compiles fresh kernels (the test-suite case): first calls only.
  jit: bool = True

  def __post_init__(self):
    clash = set(self.variants) & set(ALL_BACKENDS)
    if clash:
      raise ValueError(f"{self.name}: variant names {sorted(clash)} are "
                       "backend names")
    known = set(self.variants) | set(ALL_BACKENDS)
    for ratio, operands in self.variant_ratios.items():
      if ratio in RATIOS or not set(operands) <= known:
        raise ValueError(f"{self.name}: variant ratio {ratio!r} = "
                         f"{operands} names an unknown cell or shadows a "
                         "backend ratio")


CASES: list[Case] = []


def register(case: Case) -> Case:
  """Adds ``case`` to the table (in the order the family modules run)."""
  if any(c.name == case.name for c in CASES):
    raise ValueError(f"duplicate case name {case.name!r}")
  CASES.append(case)
  return case


def case(**fields) -> Callable[[Callable], Callable]:
  """Registers the decorated ``build(backend)`` as a case with ``fields``
  (every other field of :class:`Case`)::

    @case(name="my_kernel", description="...", make_inputs=...,
          reference=..., grid_steps=8, targets={"cpu/xla": ("<=", 1.5)})
    def build(backend):
      return pallas_cpu.pallas_call(kernel, ..., backend=backend)
  """
  def decorate(build: Callable[[str], Callable]) -> Callable[[str], Callable]:
    register(Case(build=build, **fields))
    return build
  return decorate
