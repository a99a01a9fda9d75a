"""The C++ runtime, loaded once: FFI target, kernel registry, compiler hook."""
from __future__ import annotations

import ctypes
import functools
import json
import traceback
import warnings

import ml_dtypes  # noqa: F401  (bfloat16 & co. as numpy dtypes)
import numpy as np

import jax

from pallas_cpu import background, compiler, races
from pallas_cpu.abi import FFI_TARGET

_COMPILE_FN = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t,
                               ctypes.c_void_p, ctypes.c_size_t)
_TIER_UP_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t,
                               ctypes.c_void_p, ctypes.c_size_t)
_PRINT_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t,
                             ctypes.c_int64, ctypes.POINTER(ctypes.c_int64),
                             ctypes.c_int64)
_WARN_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t)


@functools.cache
def library() -> ctypes.CDLL:
  from pallas_cpu import _runtime  # the built extension module
  lib = ctypes.CDLL(_runtime.__file__, mode=ctypes.RTLD_GLOBAL)
  lib.pallas_cpu_rt_register_kernel.argtypes = [ctypes.c_char_p, ctypes.c_uint64]
  lib.pallas_cpu_rt_num_registered_kernels.restype = ctypes.c_int64
  lib.pallas_cpu_rt_set_compiler.argtypes = [_COMPILE_FN]
  lib.pallas_cpu_rt_set_tier_up.argtypes = [_TIER_UP_FN]
  lib.pallas_cpu_rt_set_printer.argtypes = [_PRINT_FN]
  lib.pallas_cpu_rt_set_warner.argtypes = [_WARN_FN]
  lib.pallas_cpu_rt_set_tpu_warner.argtypes = [_WARN_FN]
  lib.pallas_cpu_rt_set_race_reporter.argtypes = [_WARN_FN]
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
  lib.pallas_cpu_rt_set_tier_up(_tier_up_hook)
  lib.pallas_cpu_rt_set_printer(_print_hook)
  lib.pallas_cpu_rt_set_warner(_warn_hook)
  lib.pallas_cpu_rt_set_tpu_warner(_tpu_warn_hook)
  lib.pallas_cpu_rt_set_race_reporter(_race_hook)


def register_kernel(kernel_id: str, entry_address: int) -> None:
  library().pallas_cpu_rt_register_kernel(kernel_id.encode(), entry_address)


def _compile_from_runtime(ir_ptr, ir_len, err, err_len) -> int:
  """Called by the FFI handler for a kernel id unknown in this process (an
  executable from the persistent cache or from jax.export)."""
  try:
    kernel_ir = ctypes.string_at(ir_ptr, ir_len).decode()
    compiled = compiler.compile_kernel(kernel_ir)
    return compiled.entry_address
  except BaseException as e:  # noqa: BLE001 - reported through the FFI error
    # What failed first (the buffer is short), then where.
    msg = (f"{type(e).__name__}: {e}\n\n{traceback.format_exc()}"
           .encode()[: err_len - 1])
    ctypes.memmove(err, msg + b"\0", len(msg) + 1)
    return 0


_compile_hook = _COMPILE_FN(_compile_from_runtime)  # kept alive for C++


def _tier_up_from_runtime(id_ptr, id_len, ir_ptr, ir_len) -> None:
  """Called by the runtime (once per kernel, on the thread that ran it)
  when a kernel built at -O0 for its size has run long enough: its -O3
  build is made on the background thread and registered under the same
  id, and later calls run it (lowering/cost.py)."""
  kernel_id = ctypes.string_at(id_ptr, id_len).decode()
  kernel_ir = ctypes.string_at(ir_ptr, ir_len).decode()

  def build():
    try:
      compiled = compiler.compile_tiered(kernel_ir)
    except Exception as e:  # noqa: BLE001 - the -O0 code goes on running
      warnings.warn(f"pallas_cpu: the -O3 build of kernel {kernel_id} "
                    f"failed; it keeps its -O0 code: {type(e).__name__}: "
                    f"{e}", RuntimeWarning)
      return
    if compiled is not None:
      register_kernel(kernel_id, compiled.entry_address)

  background.submit(build)


_tier_up_hook = _TIER_UP_FN(_tier_up_from_runtime)  # kept alive for C++


@functools.lru_cache(maxsize=256)
def _print_table(table: str) -> list:
  return json.loads(table)


def decode_scalar(bits: int, dtype: str):
  """A debug_print operand from the raw bits the kernel recorded."""
  dt = jax.numpy.dtype(dtype)  # knows bfloat16 and the float8s
  if dt == np.bool_:
    return np.bool_(bits & 1)
  raw = np.array([bits], np.int64).view(np.uint64)[0]
  width = dt.itemsize * 8
  raw = np.uint64(int(raw) & ((1 << width) - 1))
  return np.array([raw], np.uint64).astype(
      {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[dt.itemsize]
  ).view(dt)[0]


def decode_operands(values, dtypes, shapes=None) -> list:
  """The debug_print operands from the raw bits the kernel recorded: one
  i64 per element, arrays in row-major order (rules/debug.py)."""
  shapes = shapes or [[]] * len(dtypes)
  args, pos = [], 0
  for dtype, shape in zip(dtypes, shapes):
    if not shape:
      args.append(decode_scalar(values[pos], dtype))
      pos += 1
      continue
    size = int(np.prod(shape))
    raw = np.array(values[pos:pos + size], np.int64).view(np.uint64)
    dt = jax.numpy.dtype(dtype)
    if dt == np.bool_:
      arr = (raw & np.uint64(1)).astype(np.bool_)
    else:
      uint = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[dt.itemsize]
      arr = raw.astype(uint).view(dt)  # astype keeps the low bits
    args.append(arr.reshape(shape))
    pos += size
  return args


def _print_record(table_ptr, table_len, print_id, values, n) -> None:
  """Prints one pl.debug_print record exactly as interpret mode would."""
  try:
    from jax._src import debugging
    entry = _print_table(ctypes.string_at(table_ptr, table_len).decode())[print_id]
    args = decode_operands(values, entry["dtypes"], entry.get("shapes"))
    debugging._format_print_callback(
        entry["fmt"], dict(entry["np_printoptions"]),
        entry["has_placeholders"], None, *args)
  except BaseException:  # noqa: BLE001 - never unwind into C++
    traceback.print_exc()


_print_hook = _PRINT_FN(_print_record)  # kept alive for C++


class KernelExitWarning(RuntimeWarning):
  """A kernel left a semaphore count or an unwaited DMA behind
  (``CompilerParams(exit_checks="warn")``)."""


def _warn(message_ptr, length, category=KernelExitWarning) -> None:
  try:
    import warnings
    warnings.warn(ctypes.string_at(message_ptr, length).decode(),
                  category, stacklevel=2)
  except BaseException:  # noqa: BLE001 - never unwind into C++
    traceback.print_exc()


def _tpu_warn(message_ptr, length) -> None:
  """A TPU-compatibility finding made at run time (a masked window that
  crossed its ref's end, tpu_checks="warn")."""
  from pallas_cpu.tpu_checks import TpuCompatibilityWarning
  _warn(message_ptr, length, TpuCompatibilityWarning)


_warn_hook = _WARN_FN(_warn)  # kept alive for C++
_tpu_warn_hook = _WARN_FN(_tpu_warn)


def _race(json_ptr, length) -> None:
  try:
    races.record(ctypes.string_at(json_ptr, length).decode())
  except BaseException:  # noqa: BLE001 - never unwind into C++
    traceback.print_exc()


_race_hook = _WARN_FN(_race)  # kept alive for C++
