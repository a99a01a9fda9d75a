"""Public entry points: pallas_call, force_cpu_backend, lower."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import jax
from jax._src import config as jax_config
from jax._src import core as jax_core
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_cpu import compiler, registration
from pallas_cpu import params as params_lib
from pallas_cpu.params import CompilerParams, CpuBackend

BACKENDS = ("cpu", "interpret", "tpu-interpret")


def pallas_call(kernel: Callable, out_shape: Any, *, backend: str = "cpu",
                compiler_params: Any = None, interpret: Any = None,
                **kwargs) -> Callable:
  """``pl.pallas_call`` with a ``backend`` choice.

  backend="cpu" compiles the kernel to native code; "interpret" and
  "tpu-interpret" hand it to JAX's ``interpret=True`` and TPU interpret mode
  (``interpret`` may then carry a ``pltpu.InterpretParams``).
  ``compiler_params`` takes ``pallas_cpu.CompilerParams`` or
  ``pltpu.CompilerParams`` (its CPU-meaningful fields are honoured).

  Example::

    def add(x_ref, y_ref, o_ref):
      o_ref[...] = x_ref[...] + y_ref[...]
    out = pallas_cpu.pallas_call(
        add, out_shape=jax.ShapeDtypeStruct((512, 512), jnp.float32),
        grid=(2, 2), in_specs=[pl.BlockSpec((256, 256), lambda i, j: (i, j))] * 2,
        out_specs=pl.BlockSpec((256, 256), lambda i, j: (i, j)))(x, y)
  """
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
  cpu_params = CompilerParams()
  # What the call chose itself -- its own CompilerParams, or an interpreter
  # -- holds inside force_cpu_backend too (whose context JAX otherwise lets
  # override every call's `interpret=`); a plain call takes the context's.
  explicit = backend != "cpu" or isinstance(compiler_params, CompilerParams)
  if isinstance(compiler_params, CompilerParams):
    cpu_params, compiler_params = compiler_params, None
  if backend == "cpu":
    interpret = CpuBackend(cpu_params)
  elif backend == "interpret":
    interpret = True if interpret in (None, False) else interpret
  else:
    if not isinstance(interpret, pltpu.InterpretParams):
      interpret = pltpu.InterpretParams()
  if not explicit:
    return pl.pallas_call(kernel, out_shape, interpret=interpret,
                          compiler_params=compiler_params, **kwargs)
  # (pl.pallas_call reads the context when it is made, not when called.)
  state = jax_config.pallas_tpu_interpret_mode_context_manager
  prev = state.swap_local(None)
  try:
    return pl.pallas_call(kernel, out_shape, interpret=interpret,
                          compiler_params=compiler_params, **kwargs)
  finally:
    state.set_local(prev)


@contextlib.contextmanager
def force_cpu_backend(params: CompilerParams = CompilerParams()):
  """Runs every ``pl.pallas_call`` traced inside on the compiled backend.

  It sets JAX's interpret-mode context (the one behind
  ``pltpu.force_tpu_interpret_mode``), which overrides each call's
  ``interpret=`` and is part of the jit cache key.  ``params`` may also be
  TPU interpret mode's ``pltpu.InterpretParams``: its options (race
  detection, DMA mode, cores, seed) carry over.

  Example::

    with pallas_cpu.force_cpu_backend():
      out = my_existing_pallas_function(x)
    with pallas_cpu.force_cpu_backend(
        pltpu.InterpretParams(detect_races=True)):
      out = my_existing_pallas_function(x)
      assert not pallas_cpu.races_found()
  """
  if not isinstance(params, CompilerParams):
    params = params_lib.from_interpret_params(params)
  registration.install()
  state = jax_config.pallas_tpu_interpret_mode_context_manager
  prev = state.swap_local(CpuBackend(params))
  try:
    yield
  finally:
    state.set_local(prev)


@dataclasses.dataclass
class LoweredKernel:
  name: str
  stages: dict[str, str]
  opt_level: int = 3

  def as_text(self, stage: str = "kernel") -> str:
    """The kernel after ``stage`` (one of ``compiler.STAGE_NAMES`` but the
    binary "so"); the native ones (llvm-ir, opt, asm) run LLVM's tools on
    first use."""
    if stage not in self.stages and stage in compiler.STAGE_NAMES[:-1]:
      self.stages.update(_native_texts(self.stages["llvm"], self.opt_level))
    if stage not in self.stages:
      raise ValueError(f"unknown stage {stage!r}; stages: "
                       f"{list(compiler.STAGE_NAMES[:-1])}")
    return self.stages[stage]


def _native_texts(llvm_dialect: str, opt_level: int) -> dict[str, str]:
  import shutil
  import tempfile
  from mlir import ir
  dump, work = tempfile.mkdtemp(), tempfile.mkdtemp()
  try:
    files = compiler.StageFiles("k", "lowered", dump_dir=dump)
    with ir.Context(), ir.Location.unknown():
      compiler.build_native(ir.Module.parse(llvm_dialect), opt_level, files,
                            work)
    out = {}
    for stage in ("llvm-ir", "opt", "asm"):
      with open(f"{files.dump_to}/{compiler.stage_file(stage)}") as f:
        out[stage] = f.read()
    return out
  finally:
    shutil.rmtree(dump, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


@dataclasses.dataclass
class Lowered:
  """The kernels of a function, with their IR at every compile stage."""
  kernels: list[LoweredKernel]

  def as_text(self, stage: str = "kernel", kernel: int = 0) -> str:
    if not self.kernels:
      raise ValueError("the function contains no pallas_call")
    return self.kernels[kernel].as_text(stage)


def lower(fn: Callable, *args, params: CompilerParams = CompilerParams(),
          **kwargs) -> Lowered:
  """Lowers every pallas_call of ``fn(*args)`` without running it.

  Example::

    print(pallas_cpu.lower(my_kernel_fn, x).as_text("loops"))
  """
  from mlir import ir

  closed = jax.make_jaxpr(fn)(*args, **kwargs)
  kernels = []
  for eqn, mesh_axes in _pallas_call_eqns(closed.jaxpr):
    backend = eqn.params["interpret"]
    if not isinstance(backend, CpuBackend):
      backend = CpuBackend(params)
    p = dict(eqn.params)
    avals_in = [v.aval for v in eqn.invars]
    if eqn.primitive.name == "mpmd_map":
      p = registration.mpmd_as_pallas_call(p, avals_in)
    spec = registration.kernel_spec(p, avals_in,
                                    [v.aval for v in eqn.outvars], backend,
                                    mesh_axes)
    stages = {"kernel": registration.kernel_ir(spec)[0]}
    with ir.Context(), ir.Location.unknown():
      module = ir.Module.parse(stages["kernel"])
      compiler.run_stages(
          module, name=spec.name,
          on_stage=lambda n, m: stages.__setitem__(n, str(m)))
    kernels.append(LoweredKernel(spec.name, stages, spec.opt_level))
  return Lowered(kernels)


def _pallas_call_eqns(jaxpr: jax_core.Jaxpr, mesh_axes: tuple = ()):
  """The kernels of ``jaxpr``, each with the shard_map mesh around it
  (``registration.device_mesh``'s form)."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("pallas_call", "mpmd_map"):
      yield eqn, mesh_axes
    else:
      inner = mesh_axes
      if eqn.primitive.name == "shard_map":
        mesh = eqn.params["mesh"]
        inner = tuple((a, int(mesh.shape[a])) for a in mesh.axis_names)
      for sub in jax_core.jaxprs_in_params(eqn.params):
        yield from _pallas_call_eqns(sub, inner)
