// The single list of symbols that generated kernel code and the Python
// driver may call in the pallas_cpu runtime.  Everything here has C linkage
// so generated code (resolved when its shared object is loaded) and ctypes
// (Python) can bind to it by name.  pallas_cpu/abi.py spells the same names
// (and the integer encodings of modes) on the Python side; the custom
// call's attributes are decoded in kernel_info.h.
#ifndef PALLAS_CPU_RUNTIME_ABI_H_
#define PALLAS_CPU_RUNTIME_ABI_H_

#include <cstddef>
#include <cstdint>

#define PALLAS_CPU_EXPORT __attribute__((visibility("default")))

extern "C" {

// ---------------------------------------------------------------------------
// Kernel entry ABI.
//
// Every compiled kernel exposes the MLIR "packed" C-interface wrapper of its
// entry function: `void entry(void** args)`.  args[0] points to a
// `PallasCpuRuntimeContext*`; args[1] and args[2] to int64 lo and hi, the
// range of the parallel grid dimension to run (the whole grid when the kernel
// has none); args[3 + i] points to a pointer to the MLIR memref descriptor of
// XLA buffer i (inputs first, then outputs), then of the buffers the cores of
// a mesh kernel share (FFI attribute `shared_buffers`: one memref<N x i8>
// each, allocated by the runtime once per device):
//   { void* allocated; void* aligned; int64_t offset;
//     int64_t sizes[rank]; int64_t strides[rank]; }
// ---------------------------------------------------------------------------
typedef void (*PallasCpuEntryFn)(void** packed_args);

// Per-call state handed to generated code (opaque to it).
struct PallasCpuRuntimeContext;

// Called by the Python driver when the FFI handler meets a kernel id it has
// not seen in this process (fresh process after a persistent-cache hit, a
// deserialized jax.export artifact).  It compiles `kernel_ir` and returns the
// entry address, or 0 after writing a message to `err` (NUL-terminated,
// at most `err_len` bytes).
typedef uint64_t (*PallasCpuCompileFn)(const char* kernel_ir, size_t ir_len,
                                       char* err, size_t err_len);

PALLAS_CPU_EXPORT void pallas_cpu_rt_set_compiler(PallasCpuCompileFn fn);

// Called (once per kernel, from the thread that ran it) when a kernel built
// at a low optimisation level has run long enough to be worth its -O3
// build: Python starts that build in the background and registers it under
// `kernel_id` (pallas_cpu_rt_register_kernel) when it is ready.
typedef void (*PallasCpuTierUpFn)(const char* kernel_id, size_t id_len,
                                  const char* kernel_ir, size_t ir_len);
PALLAS_CPU_EXPORT void pallas_cpu_rt_set_tier_up(PallasCpuTierUpFn fn);

// Formats and prints one pl.debug_print record (Python's formatting, the same
// as interpret mode's): `table` is the kernel's print table (JSON, FFI
// attribute `debug_prints`), `values` the raw bits of the printed scalars.
typedef void (*PallasCpuPrintFn)(const char* table, size_t table_len,
                                 int64_t print_id, const int64_t* values,
                                 int64_t n);
PALLAS_CPU_EXPORT void pallas_cpu_rt_set_printer(PallasCpuPrintFn fn);
// Receives each kernel-exit finding made in "warn" mode (a leftover
// semaphore count, a DMA never waited for), prefixed with the kernel name.
typedef void (*PallasCpuWarnFn)(const char* message, size_t len);
PALLAS_CPU_EXPORT void pallas_cpu_rt_set_warner(PallasCpuWarnFn fn);
// Receives each TPU-compatibility finding made at run time in "warn" mode
// (pallas_cpu_rt_crossing_window_at), prefixed with the kernel name: Python
// issues it as a TpuCompatibilityWarning, the warner's as KernelExitWarning.
PALLAS_CPU_EXPORT void pallas_cpu_rt_set_tpu_warner(PallasCpuWarnFn fn);
// Receives each race the instrumented build found, as a JSON object
// (kernel, kind, buffer, first, last, earlier, later).
PALLAS_CPU_EXPORT void pallas_cpu_rt_set_race_reporter(PallasCpuWarnFn fn);
PALLAS_CPU_EXPORT void pallas_cpu_rt_register_kernel(const char* kernel_id, uint64_t entry);
PALLAS_CPU_EXPORT int64_t pallas_cpu_rt_num_registered_kernels(void);

// ---------------------------------------------------------------------------
// Called from generated code.
// ---------------------------------------------------------------------------

// Error messages start with TPU interpret mode's own words for the same
// error ("Out-of-bounds block index (2, 0) for input "x_ref" in iteration
// (2,)", "Out-of-bounds read of ...", "Revisited block ... of output 0 in
// iteration (2,)"), so tests that match on them pass on either; our detail
// follows.
//
// A block index map produced a window outside its operand: generated code
// first passes the block index, one pallas_cpu_rt_block_index per
// dimension, then the failing dimension's window.  `site` (FFI attribute
// `sites`) reads `input "x_ref"<TAB>operand 0<TAB>input 0` (interpret
// mode's name, then ours).  The grid point is skipped and the call fails.
PALLAS_CPU_EXPORT void pallas_cpu_rt_block_index(PallasCpuRuntimeContext* ctx,
                                                 int64_t dim, int64_t index);
PALLAS_CPU_EXPORT void pallas_cpu_rt_block_out_of_bounds(
    PallasCpuRuntimeContext* ctx, int64_t site, int64_t dim, int64_t start,
    int64_t size, int64_t limit, int64_t grid_index);

// Returns 1 once any error has been recorded for this call.
PALLAS_CPU_EXPORT int32_t pallas_cpu_rt_failed(PallasCpuRuntimeContext* ctx);

// A dynamic ref index left its ref: reported; the generated code clamps the
// index so that no access leaves the buffer.  `site` reads `Out-of-bounds
// read of input 0 'x_ref'<TAB><source line>` (swap, masked swap, write...);
// the form without a site says "Out-of-bounds access".
PALLAS_CPU_EXPORT void pallas_cpu_rt_index_out_of_bounds_at(
    PallasCpuRuntimeContext* ctx, int64_t site, int64_t dim, int64_t start,
    int64_t size, int64_t limit, int64_t grid_index);
PALLAS_CPU_EXPORT void pallas_cpu_rt_index_out_of_bounds(
    PallasCpuRuntimeContext* ctx, int64_t dim, int64_t start, int64_t size,
    int64_t limit, int64_t grid_index);

// A masked load or store's window crossed its ref's end (dimension `dim`:
// [start, start + size) against [0, limit)) while its mask kept to the
// in-bounds elements: interpret mode allows it, a TPU does not (Mosaic does
// not bounds-check dynamic windows).  `site` reads `masked load of input 0
// 'x_ref' of shape (10,)<TAB><source line><TAB><what a TPU would do>`.
// `mode` (CompilerParams(tpu_checks=...)) 0 = error: fails the call; 1 =
// warn: a warning once per kernel and site in the process (the TPU warner).
// Nothing once the call failed.
PALLAS_CPU_EXPORT void pallas_cpu_rt_crossing_window_at(
    PallasCpuRuntimeContext* ctx, int64_t site, int64_t dim, int64_t start,
    int64_t size, int64_t limit, int64_t mode, int64_t grid_index);

// The block of output `output` (identified by the element offset of its
// window) differs from the previous grid step's.  Revisiting a block that
// an earlier, non-adjacent step wrote is an error, as in interpret mode: on
// a TPU the earlier write-back would be lost.  `site` gives the output's
// geometry for the message: `<array dims>;<block dims>`, comma-separated,
// a squeezed block dimension as 0.
PALLAS_CPU_EXPORT void pallas_cpu_rt_output_block_changed(
    PallasCpuRuntimeContext* ctx, int64_t output, int64_t block_offset,
    int64_t site, int64_t grid_index);

// pl.debug_print: records the raw bits of its scalar operands (a rank-1
// i64 memref); printed through the Python printer when the call ends.
PALLAS_CPU_EXPORT void pallas_cpu_rt_debug_print(
    PallasCpuRuntimeContext* ctx, int64_t print_id, int64_t* alloc,
    int64_t* aligned, int64_t offset, int64_t size, int64_t stride);

// pl.debug_check failed (with debug checks enabled): message `check_id` of
// the FFI attribute `check_messages`.
PALLAS_CPU_EXPORT void pallas_cpu_rt_check_failed(PallasCpuRuntimeContext* ctx,
                                                  int64_t check_id,
                                                  int64_t grid_index);

// ---------------------------------------------------------------------------
// Semaphores are int32 counters in kernel memory (memref<...xi32,
// "semaphore">).  Generated code passes one as a rank-0 memref (allocated,
// aligned, offset): the offset is the semaphore's index in its array.
// `sem_id` names the array (FFI attribute `semaphore_names`, one per line);
// `grid_index` is the row-major index of the current grid point.
// ---------------------------------------------------------------------------
PALLAS_CPU_EXPORT void pallas_cpu_rt_sem_signal(
    PallasCpuRuntimeContext* ctx, int32_t* alloc, int32_t* sem, int64_t offset,
    int32_t inc, int64_t sem_id, int64_t grid_index);
// Decrements by `value` once the count allows it, running pending DMAs that
// signal this semaphore first and sleeping while another core may still
// signal it.  A wait nothing can satisfy is a deadlock: reported, and the
// count left alone (returns 0; 1 on success; 0 too once any core failed).
PALLAS_CPU_EXPORT int32_t pallas_cpu_rt_sem_wait(
    PallasCpuRuntimeContext* ctx, int32_t* alloc, int32_t* sem, int64_t offset,
    int32_t value, int64_t sem_id, int64_t grid_index);
PALLAS_CPU_EXPORT int32_t pallas_cpu_rt_sem_read(
    PallasCpuRuntimeContext* ctx, int32_t* alloc, int32_t* sem, int64_t offset);
// The kernel's semaphore array `sem_id` (`count` int32 at `base`): called
// once at entry for every array, so other cores can signal it.
PALLAS_CPU_EXPORT void pallas_cpu_rt_sem_register(PallasCpuRuntimeContext* ctx,
                                                  int64_t sem_id, int64_t base,
                                                  int64_t count);
// After the entry's allocations and initialization: returns once every
// core of the launch got there (they start the kernel together, and each
// has registered its semaphores).
PALLAS_CPU_EXPORT void pallas_cpu_rt_enter(PallasCpuRuntimeContext* ctx);
// semaphore_signal(..., core_index=core, device_id=device): signals
// semaphore `offset` of array `sem_id` on that core of that device of the
// launch (launch.h); -1 for either means the signalling actor's own.
PALLAS_CPU_EXPORT void pallas_cpu_rt_sem_signal_remote(
    PallasCpuRuntimeContext* ctx, int64_t sem_id, int64_t offset, int32_t inc,
    int64_t device, int64_t core, int64_t grid_index);

// ---------------------------------------------------------------------------
// Kernels that run on several devices (inside shard_map) or on a TensorCore
// mesh: their actors start and end together.
// ---------------------------------------------------------------------------
// The logical id of the device running this instance of the kernel (the
// row-major index of its shard_map mesh coordinates; 0 on one device).
PALLAS_CPU_EXPORT int32_t pallas_cpu_rt_device_id(PallasCpuRuntimeContext* ctx);
// A buffer of the kernel (scratch, scoped, temporaries), registered at
// entry in allocation order -- the same on every device -- so that a remote
// DMA can name the same buffer on another device, and the race detector
// can keep its shadow state (`elem_bytes`-sized elements; `site` names the
// buffer, or -1).  The operands are registered by the FFI handler, before
// them.
PALLAS_CPU_EXPORT void pallas_cpu_rt_buffer_register(
    PallasCpuRuntimeContext* ctx, int64_t base, int64_t nbytes,
    int64_t elem_bytes, int64_t site);
// Phase 0, past the grid: returns once every actor finished its grid.
// Phase 1, before the kernel's buffers are freed: returns once every actor
// finished its exit checks.  (launch.h, Launch::ExitBarrier.)
PALLAS_CPU_EXPORT void pallas_cpu_rt_exit_barrier(PallasCpuRuntimeContext* ctx,
                                                  int64_t phase);

// ---------------------------------------------------------------------------
// DMAs.  Source and destination arrive as unranked memrefs (rank, pointer to
// the ranked descriptor); the copy moves `elem_bytes`-sized elements between
// any two strided windows of equal shape.  `mode` 0 = eager (copy now),
// 1 = on_wait (copy when a wait on the semaphore needs it), as in TPU
// interpret mode.  Completion signals the semaphore by the bytes copied, or
// by 1 when `regular` (a REGULAR semaphore: one completion, as on TPU v6+).
// `device` >= 0 makes it a remote copy (make_async_remote_copy): the
// destination window and `sem` are taken as the same buffer and semaphore
// of the same core on that device, and the send semaphore (`send_sem_id`
// >= 0) of the sender is signalled when the read is done.  `site` names the
// start's source line (FFI attribute `sites`).  `add` (a PallasCpuDmaAdd)
// makes it an accumulating DMA (`start(add=True)`): each destination
// element becomes destination + source, in the element type's arithmetic;
// accumulating DMAs run under the launch's lock, so concurrent ones into the
// same destination (from other cores or devices) each add all of theirs.
// `pad` (an unranked memref of i64) describes a window reaching into its
// buffer's tile padding, as TPU buffers are padded to whole tiles: empty
// when both windows lie inside their arrays, else [fill, the source's valid
// count per dimension, the destination's]: the leading elements that exist.
// Source elements past their valid count read as `fill` (the uninitialized
// value's bits); destination elements past theirs are not written.  The
// semaphore still counts the whole window.
// ---------------------------------------------------------------------------
enum PallasCpuDmaAdd : int64_t {
  kPallasCpuDmaCopy = 0,    // overwrite (add=False)
  kPallasCpuDmaAddF32 = 1,  // IEEE add, round to nearest even
  kPallasCpuDmaAddF64 = 2,
  kPallasCpuDmaAddBf16 = 3,  // added in f32, rounded to nearest even
  kPallasCpuDmaAddF16 = 4,   // added in f32, rounded to nearest even
  kPallasCpuDmaAddInt = 5,   // two's complement, wrapping (signed and
                             // unsigned alike), `elem_bytes` wide
};
PALLAS_CPU_EXPORT void pallas_cpu_rt_dma_start(
    PallasCpuRuntimeContext* ctx, int64_t src_rank, void* src_desc,
    int64_t dst_rank, void* dst_desc, int64_t elem_bytes, int32_t* sem_alloc,
    int32_t* sem, int64_t sem_offset, int64_t sem_id, int32_t* send_alloc,
    int32_t* send_sem, int64_t send_offset, int64_t send_sem_id,
    int64_t device, int64_t mode, int64_t regular, int64_t add,
    int64_t pad_rank, void* pad_desc, int64_t site, int64_t grid_index);

// ---------------------------------------------------------------------------
// Race detection (the instrumented build only; runtime/races.h): one call
// per ref operation -- a get, a swap, a masked load or store, a block copy
// -- with the window it reads (`write` 0) or writes (1) as an unranked
// memref, one entry point per element type (PALLAS_CPU_RACE_ACCESS_FOR in
// dma.cc).  `site` names the operation's source line.
// ---------------------------------------------------------------------------
PALLAS_CPU_EXPORT void pallas_cpu_rt_race_access(
    PallasCpuRuntimeContext* ctx, int64_t rank, void* desc,
    int64_t elem_bytes, int64_t write, int64_t site, int64_t grid_index);

// ---------------------------------------------------------------------------
// Lifetime checks.  `mode` 0 = a finding fails the call, 1 = it is a
// warning (CompilerParams(exit_checks=...)), 2 = not checked.
// ---------------------------------------------------------------------------
// A run_scoped buffer ([base, base + nbytes), named by `site`) ends: a DMA
// that reads or writes it and was not waited for is an error (always: its
// memory is gone), and is dropped.
PALLAS_CPU_EXPORT void pallas_cpu_rt_buffer_exit(PallasCpuRuntimeContext* ctx,
                                                 int64_t base, int64_t nbytes,
                                                 int64_t site,
                                                 int64_t grid_index);
// An array of `count` semaphores (int32 at `base`, array `sem_id`) ends, at
// kernel exit or at the end of its run_scoped scope (`scoped`): a non-zero
// count, or a DMA signalling it that was never waited for, is reported.
PALLAS_CPU_EXPORT void pallas_cpu_rt_sem_exit(PallasCpuRuntimeContext* ctx,
                                              int64_t base, int64_t count,
                                              int64_t sem_id, int64_t scoped,
                                              int64_t mode, int64_t grid_index);
// The kernel's last call: DMAs still tracked (they signal semaphores the
// kernel does not own) were never waited for.
PALLAS_CPU_EXPORT void pallas_cpu_rt_kernel_exit(PallasCpuRuntimeContext* ctx,
                                                 int64_t mode,
                                                 int64_t grid_index);

// ---------------------------------------------------------------------------
// Allocation.  Generated code's memref.alloc/dealloc call these (MLIR's
// generic allocation functions): a request that fails -- or exceeds the
// machine's memory -- returns null and fails the call with a message naming
// the buffer (FFI attribute `allocations`); the entry function checks
// pallas_cpu_rt_failed after its allocations and then runs nothing.
// ---------------------------------------------------------------------------
PALLAS_CPU_EXPORT void* _mlir_memref_to_llvm_alloc(uint64_t size);
PALLAS_CPU_EXPORT void _mlir_memref_to_llvm_free(void* ptr);

// ---------------------------------------------------------------------------
// dot_general's fast path, pallas_cpu_rt_matmul_<A>_<B> for A, B in {f32,
// bf16} (runtime/matmul.cc): C (+)= A @ B with f32 C.  Each operand is a
// rank-2 strided memref, expanded (allocated, aligned, offset, sizes[2],
// strides[2]); A and B may be transposed views; C has a unit column stride.
// ---------------------------------------------------------------------------

}  // extern "C"

#endif  // PALLAS_CPU_RUNTIME_ABI_H_
