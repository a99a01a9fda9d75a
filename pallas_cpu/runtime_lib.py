"""The C++ runtime, loaded once: FFI target, kernel registry, compiler hook."""
from __future__ import annotations

import ctypes
import functools
import traceback

import jax

FFI_TARGET = "pallas_cpu_call"

_COMPILE_FN = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t,
                               ctypes.c_void_p, ctypes.c_size_t)


@functools.cache
def library() -> ctypes.CDLL:
  from pallas_cpu import _runtime  # the built extension module
  lib = ctypes.CDLL(_runtime.__file__, mode=ctypes.RTLD_GLOBAL)
  lib.pallas_cpu_rt_register_kernel.argtypes = [ctypes.c_char_p, ctypes.c_uint64]
  lib.pallas_cpu_rt_num_registered_kernels.restype = ctypes.c_int64
  lib.pallas_cpu_rt_set_compiler.argtypes = [_COMPILE_FN]
  return lib


def path() -> str:
  from pallas_cpu import _runtime
  return _runtime.__file__


@functools.cache
def ensure_registered() -> None:
  """Registers the FFI target and the compile hook (idempotent)."""
  lib = library()
  jax.ffi.register_ffi_target(
      FFI_TARGET, jax.ffi.pycapsule(lib.PallasCpuCall), platform="cpu")
  lib.pallas_cpu_rt_set_compiler(_compile_hook)


def register_kernel(kernel_id: str, entry_address: int) -> None:
  library().pallas_cpu_rt_register_kernel(kernel_id.encode(), entry_address)


def _compile_from_runtime(ir_ptr, ir_len, err, err_len) -> int:
  """Called by the FFI handler for a kernel id unknown in this process (an
  executable from the persistent cache or from jax.export)."""
  try:
    from pallas_cpu import compiler
    kernel_ir = ctypes.string_at(ir_ptr, ir_len).decode()
    compiled = compiler.compile_kernel(kernel_ir)
    return compiled.entry_address
  except BaseException:  # noqa: BLE001 - reported through the FFI error
    msg = traceback.format_exc().encode()[: err_len - 1]
    ctypes.memmove(err, msg + b"\0", len(msg) + 1)
    return 0


_compile_hook = _COMPILE_FN(_compile_from_runtime)  # kept alive for C++
