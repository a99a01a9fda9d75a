// The single list of symbols that generated kernel code and the Python
// driver may call in the pallas_cpu runtime.  Everything here has C linkage
// so the MLIR ExecutionEngine (generated code) and ctypes (Python) can bind
// to it by name.
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
// `PallasCpuRuntimeContext*`; args[1 + i] points to a pointer to the MLIR
// memref descriptor of XLA buffer i (inputs first, then outputs):
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
PALLAS_CPU_EXPORT void pallas_cpu_rt_register_kernel(const char* kernel_id, uint64_t entry);
PALLAS_CPU_EXPORT int64_t pallas_cpu_rt_num_registered_kernels(void);

// ---------------------------------------------------------------------------
// Called from generated code.
// ---------------------------------------------------------------------------

// A block index map produced a window outside its operand.  The grid point
// is skipped and the custom call fails with a message naming the operand.
PALLAS_CPU_EXPORT void pallas_cpu_rt_block_out_of_bounds(PallasCpuRuntimeContext* ctx,
                                       int64_t operand, int64_t dim,
                                       int64_t start, int64_t size,
                                       int64_t limit);

// Returns 1 once any error has been recorded for this call.
PALLAS_CPU_EXPORT int32_t pallas_cpu_rt_failed(PallasCpuRuntimeContext* ctx);

}  // extern "C"

#endif  // PALLAS_CPU_RUNTIME_ABI_H_
