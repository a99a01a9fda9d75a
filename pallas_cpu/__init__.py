"""pallas_cpu: run JAX Pallas TPU kernels on the CPU as native code.

Kernel jaxprs lower to linalg/scf/memref MLIR with HBM/VMEM/SMEM memory
spaces, compile through LLVM (opt, llc) into a cached shared object, and run
as one XLA FFI custom call into a C++ runtime.
"""
from pallas_cpu.api import force_cpu_backend, lower, pallas_call
from pallas_cpu.compiler import CompilationError
from pallas_cpu.lowering.errors import LoweringError, UnsupportedError
from pallas_cpu.params import CompilerParams
from pallas_cpu.races import (RaceReport, race_reports, races_found,
                              reset_races)
from pallas_cpu.runtime_lib import KernelExitWarning
from pallas_cpu.tpu_checks import TpuCompatibilityError, TpuCompatibilityWarning
from pallas_cpu import registration as _registration

_registration.install()

__all__ = ["pallas_call", "force_cpu_backend", "lower", "CompilerParams",
           "CompilationError", "LoweringError", "UnsupportedError",
           "KernelExitWarning", "RaceReport", "race_reports", "races_found",
           "reset_races", "TpuCompatibilityError", "TpuCompatibilityWarning"]
