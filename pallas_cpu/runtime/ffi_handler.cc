// The one XLA FFI target that runs every compiled Pallas kernel.
//
// The HLO carries only strings: the kernel id (a fingerprint of the kernel
// IR and compile options) and the kernel IR itself, so an executable restored
// from JAX's persistent compilation cache or from jax.export finds or
// rebuilds its native code in a fresh process.  No pointer ever enters HLO.
#include <Python.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "abi.h"
#include "kernel_info.h"
#include "kernel_registry.h"
#include "launch.h"
#include "runtime_context.h"
#include "threads.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace pallas_cpu {
namespace {

using pallas_cpu::DefaultNumThreads;

// Lays out MLIR memref descriptors ({alloc, aligned, offset, sizes, strides})
// for row-major XLA buffers in one flat int64 array.
class DescriptorTable {
 public:
  void Add(void* data, ffi::AnyBuffer::Dimensions dims) {
    starts_.push_back(words_.size());
    words_.push_back(reinterpret_cast<int64_t>(data));
    words_.push_back(reinterpret_cast<int64_t>(data));
    words_.push_back(0);
    for (int64_t d : dims) words_.push_back(d);
    int64_t stride = 1;
    std::vector<int64_t> strides(dims.size());
    for (size_t i = dims.size(); i-- > 0;) {
      strides[i] = stride;
      stride *= dims[i];
    }
    for (int64_t s : strides) words_.push_back(s);
  }

  // Fills `packed` as the MLIR packed C-interface wrapper expects: each slot
  // points at the argument value, and a memref argument's value is a pointer
  // to its descriptor.  The entry takes (ctx, lo, hi, buffers...): [lo, hi)
  // is the range of the split parallel grid dimension this call runs.
  void Pack(PallasCpuRuntimeContext** ctx, int64_t* lo, int64_t* hi,
            std::vector<void*>* desc_ptrs, std::vector<void*>* packed) {
    desc_ptrs->resize(starts_.size());
    packed->resize(starts_.size() + 3);
    (*packed)[0] = ctx;
    (*packed)[1] = lo;
    (*packed)[2] = hi;
    for (size_t i = 0; i < starts_.size(); ++i) {
      (*desc_ptrs)[i] = &words_[starts_[i]];
      (*packed)[i + 3] = &(*desc_ptrs)[i];
    }
  }

 private:
  std::vector<int64_t> words_;
  std::vector<size_t> starts_;
};

ffi::Error PallasCpuCall(ffi::RemainingArgs args, ffi::RemainingRets rets,
                         std::string_view kernel_id,
                         std::string_view kernel_ir,
                         std::string_view kernel_name,
                         std::string_view semaphore_names,
                         ffi::Span<const int64_t> grid,
                         int64_t parallel_extent, int64_t num_threads,
                         std::string_view debug_prints,
                         std::string_view check_messages,
                         std::string_view sites,
                         std::string_view allocations, int64_t mesh_cores) {
  std::string error;
  PallasCpuEntryFn entry = LookupOrCompile(kernel_id, kernel_ir, &error);
  if (entry == nullptr) return ffi::Error::Internal(error);

  DescriptorTable table;
  for (size_t i = 0; i < args.size(); ++i) {
    auto buf = args.get<ffi::AnyBuffer>(i);
    if (buf.has_error()) return buf.error();
    table.Add(buf->untyped_data(), buf->dimensions());
  }
  for (size_t i = 0; i < rets.size(); ++i) {
    auto buf = rets.get<ffi::AnyBuffer>(i);
    if (buf.has_error()) return buf.error();
    table.Add((*buf)->untyped_data(), (*buf)->dimensions());
  }

  // A kernel with a parallel grid dimension runs it in contiguous chunks,
  // one runtime context (errors, pending DMAs, visited blocks) per chunk:
  // the chunks are independent, like TPU cores.  The cores of a mesh are
  // one actor each, all running at once on threads of their own, whatever
  // the machine's core count: they may wait for each other.
  int64_t threads = num_threads > 0 ? num_threads : DefaultNumThreads();
  int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>(parallel_extent > 0 ? parallel_extent : 1, threads));
  if (mesh_cores > 0) chunks = mesh_cores;
  int64_t extent = parallel_extent > 0 ? parallel_extent : 1;
  std::vector<PallasCpuRuntimeContext> contexts(chunks);
  const KernelInfo info = KernelInfo::Decode(
      kernel_name, grid.begin(), grid.size(), semaphore_names, check_messages,
      sites, allocations, debug_prints);
  std::vector<PallasCpuRuntimeContext*> actors;
  for (auto& ctx : contexts) {
    ctx.kernel = &info;
    actors.push_back(&ctx);
  }
  Launch launch(actors, /*mesh=*/mesh_cores > 0);
  auto run = [&](int64_t c) {
    PallasCpuRuntimeContext& ctx = contexts[c];
    int64_t lo = extent * c / chunks;
    int64_t hi = extent * (c + 1) / chunks;
    PallasCpuRuntimeContext* ctx_ptr = &ctx;
    std::vector<void*> desc_ptrs, packed;
    table.Pack(&ctx_ptr, &lo, &hi, &desc_ptrs, &packed);
    ScopedContext scoped(&ctx);  // for the kernel's allocations
    entry(packed.data());
    // The kernel's exit checks handled every DMA; one left here belongs to
    // a run that failed part-way, and its buffers are gone: drop it.
    {
      auto lock = launch.Lock();
      ctx.dmas.clear();
    }
    launch.Finish(launch.actor(c));
  };
  if (mesh_cores > 0) {
    RunOnThreads(chunks, run);
  } else {
    ParallelFor(chunks, run);
  }

  for (auto& ctx : contexts) PrintRecords(debug_prints, ctx.prints);
  for (auto& ctx : contexts) Warn(kernel_name, ctx.warnings);
  error = launch.FirstError();
  if (!error.empty()) {
    return ffi::Error::InvalidArgument("pallas_cpu kernel '" +
                                       std::string(kernel_name) + "': " +
                                       error);
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace pallas_cpu

// Exported despite -fvisibility=hidden: Python wraps it in a PyCapsule.
extern "C" PALLAS_CPU_EXPORT XLA_FFI_Error* PallasCpuCall(XLA_FFI_CallFrame*);

XLA_FFI_DEFINE_HANDLER_SYMBOL(PallasCpuCall, pallas_cpu::PallasCpuCall,
                              ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<std::string_view>("kernel_id")
                                  .Attr<std::string_view>("kernel_ir")
                                  .Attr<std::string_view>("kernel_name")
                                  .Attr<std::string_view>("semaphore_names")
                                  .Attr<ffi::Span<const int64_t>>("grid")
                                  .Attr<int64_t>("parallel_extent")
                                  .Attr<int64_t>("num_threads")
                                  .Attr<std::string_view>("debug_prints")
                                  .Attr<std::string_view>("check_messages")
                                  .Attr<std::string_view>("sites")
                                  .Attr<std::string_view>("allocations")
                                  .Attr<int64_t>("mesh_cores"));

// The runtime is built as a Python extension module so that it installs and
// imports like any module of the package (editable installs included); its
// functions are reached through ctypes.
static PyModuleDef kRuntimeModule = {PyModuleDef_HEAD_INIT, "_runtime",
                                     "pallas_cpu native runtime", -1, nullptr};

PyMODINIT_FUNC PyInit__runtime(void) { return PyModule_Create(&kRuntimeModule); }
