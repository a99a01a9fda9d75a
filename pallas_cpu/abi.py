"""Every name and encoding shared with the C++ runtime: the Python mirror of
``runtime/abi.h``.  A name that crosses the language line is spelled here
once, beside the header's line that spells it in C.

Imports nothing from pallas_cpu: the lowering, the compiler and the runtime
loader all sit above it.
"""
from __future__ import annotations

import dataclasses
import json

# -- the custom call and the kernel's entry points ----------------------------
FFI_TARGET = "pallas_cpu_call"          # XLA_FFI_DEFINE_HANDLER_SYMBOL(PallasCpuCall)
ENTRY = "pallas_cpu_entry"              # the kernel's func.func
CIFACE_ENTRY = "_mlir_ciface_" + ENTRY  # its llvm.emit_c_interface wrapper
PACKED_ENTRY = "pallas_cpu_entry_packed"  # PallasCpuEntryFn: void(void**)

# -- attributes of the kernel module (the IR the HLO carries) -----------------
KERNEL_NAME_ATTR = "pallas_cpu.kernel_name"
OPT_LEVEL_ATTR = "pallas_cpu.opt_level"
RUNTIME_INFO_ATTR = "pallas_cpu.runtime_info"
# A kernel built small asks for its -O3 build once its calls took this many
# microseconds (lowering/cost.py); the runtime gets the budget as the FFI
# attribute of the same name, the compiler makes the -O3 variant of an IR
# that carries it (compiler.tiered_ir).
TIER_UP_ATTR = "pallas_cpu.tier_up_after_us"

# -- runtime functions generated code calls (abi.h, "Called from generated
# code"); the functions that take a memref of one element type carry it in
# their name -----------------------------------------------------------------
RT_FAILED = "pallas_cpu_rt_failed"
RT_BLOCK_INDEX = "pallas_cpu_rt_block_index"
RT_BLOCK_OUT_OF_BOUNDS = "pallas_cpu_rt_block_out_of_bounds"
RT_INDEX_OUT_OF_BOUNDS = "pallas_cpu_rt_index_out_of_bounds"
RT_INDEX_OUT_OF_BOUNDS_AT = "pallas_cpu_rt_index_out_of_bounds_at"
RT_CROSSING_WINDOW_AT = "pallas_cpu_rt_crossing_window_at"
RT_OUTPUT_BLOCK_CHANGED = "pallas_cpu_rt_output_block_changed"
RT_DEBUG_PRINT = "pallas_cpu_rt_debug_print"
RT_CHECK_FAILED = "pallas_cpu_rt_check_failed"
RT_SEM_SIGNAL = "pallas_cpu_rt_sem_signal"
RT_SEM_WAIT = "pallas_cpu_rt_sem_wait"
RT_SEM_READ = "pallas_cpu_rt_sem_read"
RT_SEM_REGISTER = "pallas_cpu_rt_sem_register"
RT_ENTER = "pallas_cpu_rt_enter"
RT_SEM_SIGNAL_REMOTE = "pallas_cpu_rt_sem_signal_remote"
RT_DEVICE_ID = "pallas_cpu_rt_device_id"
RT_BUFFER_REGISTER = "pallas_cpu_rt_buffer_register"
RT_EXIT_BARRIER = "pallas_cpu_rt_exit_barrier"
RT_BUFFER_EXIT = "pallas_cpu_rt_buffer_exit"
RT_SEM_EXIT = "pallas_cpu_rt_sem_exit"
RT_KERNEL_EXIT = "pallas_cpu_rt_kernel_exit"
ALLOC_FN = "_mlir_memref_to_llvm_alloc"  # memref.alloc, checked (abi.h)

# Element types (MLIR spelling) with a DMA entry point
# (PALLAS_CPU_DMA_START_FOR in dma.cc).
DMA_ELEMENT_TYPES = ("f16", "bf16", "f32", "f64", "i8", "i16", "i32", "i64",
                     "f8E4M3FN", "f8E5M2")


def rt_dma_start(element_type: str) -> str:
  if element_type not in DMA_ELEMENT_TYPES:
    raise NotImplementedError(
        f"pallas_cpu: DMAs of {element_type} elements are not supported")
  return f"pallas_cpu_rt_dma_start_{element_type}"


def rt_race_access(element_type: str) -> str:
  """pallas_cpu_rt_race_access_<T> (PALLAS_CPU_RACE_ACCESS_FOR in dma.cc)."""
  if element_type not in DMA_ELEMENT_TYPES:
    raise NotImplementedError(
        f"pallas_cpu: race detection of {element_type} refs is not "
        "supported")
  return f"pallas_cpu_rt_race_access_{element_type}"


def rt_matmul(a: str, b: str) -> str:
  """pallas_cpu_rt_matmul_<A>_<B> (runtime/matmul.cc), A, B in f32/bf16."""
  return f"pallas_cpu_rt_matmul_{a}_{b}"


# -- enumerations passed as integers ------------------------------------------
DMA_MODES = {"eager": 0, "on_wait": 1}        # pallas_cpu_rt_dma_start `mode`
# pallas_cpu_rt_dma_start `add` (PallasCpuDmaAdd): overwrite, or accumulate
# in the arithmetic of the element type (integers of any width and
# signedness: DMA_ADD_INT, wrapping).
DMA_COPY = 0
DMA_ADD_FLOAT = {"float32": 1, "float64": 2, "bfloat16": 3, "float16": 4}
DMA_ADD_INT = 5
EXIT_CHECK_MODES = {"error": 0, "warn": 1, "off": 2}  # "Lifetime checks"
# pallas_cpu_rt_crossing_window_at `mode` (tpu_checks; "off" calls nothing).
TPU_CHECK_MODES = {"error": 0, "warn": 1}
# FFI attribute `detect_races`: off, report races, or fail the call.
RACE_MODES = {None: 0, "report": 1, "raise": 2}


# -- what the runtime knows of a kernel ---------------------------------------
@dataclasses.dataclass
class RuntimeInfo:
  """Static facts the runtime needs for messages and prints, gathered while
  lowering.  The kernel module carries them as JSON (RUNTIME_INFO_ATTR);
  the custom call as FFI attributes (``ffi_attributes``), which
  ``runtime/kernel_info.cc`` decodes -- the two ends of one encoding."""
  semaphore_names: list[str] = dataclasses.field(default_factory=list)
  debug_prints: list[dict] = dataclasses.field(default_factory=list)
  check_messages: list[str] = dataclasses.field(default_factory=list)
  sites: list[str] = dataclasses.field(default_factory=list)
  allocations: list[tuple[int, str]] = dataclasses.field(default_factory=list)
  # The kernel talks to other devices (remote DMAs or signals, a barrier
  # semaphore): its instances on the devices of a shard_map run as one
  # launch (FFI attribute `collective`).
  collective: bool = False
  # Byte sizes of the buffers the cores of a mesh kernel share (HBM scratch
  # and run_scoped buffers): the entry's last arguments, allocated by the
  # runtime once per device (FFI attribute `shared_buffers`).
  shared_buffers: list[int] = dataclasses.field(default_factory=list)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> "RuntimeInfo":
    d = json.loads(text)
    d["allocations"] = [tuple(a) for a in d.get("allocations", [])]
    return cls(**d)

  def ffi_attributes(self) -> dict[str, str]:
    """String attributes: lists one entry per line (newlines in an entry
    become spaces), allocations as ``<bytes>\\t<name>`` lines, the print
    table as JSON (Python formats the prints)."""
    lines = lambda xs: "\n".join(x.replace("\n", " ") for x in xs)
    return {
        "semaphore_names": lines(self.semaphore_names),
        "check_messages": lines(self.check_messages),
        "sites": lines(self.sites),
        "allocations": lines(f"{n}\t{name}" for n, name in self.allocations),
        "debug_prints": json.dumps(self.debug_prints),
    }
