// Runtime error entry points called from generated code.
#include <sstream>

#include "abi.h"
#include "runtime_context.h"

extern "C" void pallas_cpu_rt_block_out_of_bounds(PallasCpuRuntimeContext* ctx,
                                                  int64_t operand, int64_t dim,
                                                  int64_t start, int64_t size,
                                                  int64_t limit) {
  std::ostringstream os;
  os << "block window out of bounds: operand " << operand << ", dimension "
     << dim << ": window [" << start << ", " << start + size
     << ") does not start inside [0, " << limit << ")";
  ctx->Fail(os.str());
}

extern "C" int32_t pallas_cpu_rt_failed(PallasCpuRuntimeContext* ctx) {
  return ctx->failed.load(std::memory_order_acquire) ? 1 : 0;
}
