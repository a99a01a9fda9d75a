// The one XLA FFI target that runs every compiled Pallas kernel.
//
// The HLO carries only strings: the kernel id (a fingerprint of the kernel
// IR and compile options) and the kernel IR itself, so an executable restored
// from JAX's persistent compilation cache or from jax.export finds or
// rebuilds its native code in a fresh process.  No pointer ever enters HLO.
#include <Python.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "abi.h"
#include "kernel_registry.h"
#include "runtime_context.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

void PallasCpuRunPendingDmas(PallasCpuRuntimeContext* ctx);  // dma.cc

namespace pallas_cpu {
namespace {

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
  // to its descriptor.
  void Pack(PallasCpuRuntimeContext** ctx, std::vector<void*>* desc_ptrs,
            std::vector<void*>* packed) {
    desc_ptrs->resize(starts_.size());
    packed->resize(starts_.size() + 1);
    (*packed)[0] = ctx;
    for (size_t i = 0; i < starts_.size(); ++i) {
      (*desc_ptrs)[i] = &words_[starts_[i]];
      (*packed)[i + 1] = &(*desc_ptrs)[i];
    }
  }

 private:
  std::vector<int64_t> words_;
  std::vector<size_t> starts_;
};

std::vector<std::string> SplitLines(std::string_view s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < s.size()) {
    size_t end = s.find('\n', start);
    if (end == std::string_view::npos) end = s.size();
    out.emplace_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

ffi::Error PallasCpuCall(ffi::RemainingArgs args, ffi::RemainingRets rets,
                         std::string_view kernel_id,
                         std::string_view kernel_ir,
                         std::string_view kernel_name,
                         std::string_view semaphore_names,
                         ffi::Span<const int64_t> grid) {
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

  PallasCpuRuntimeContext ctx;
  ctx.semaphore_names = SplitLines(semaphore_names);
  ctx.grid.assign(grid.begin(), grid.end());
  PallasCpuRuntimeContext* ctx_ptr = &ctx;
  std::vector<void*> desc_ptrs, packed;
  table.Pack(&ctx_ptr, &desc_ptrs, &packed);
  entry(packed.data());
  PallasCpuRunPendingDmas(&ctx);

  if (ctx.failed.load()) {
    return ffi::Error::InvalidArgument("pallas_cpu kernel '" +
                                       std::string(kernel_name) +
                                       "': " + ctx.message);
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
                                  .Attr<ffi::Span<const int64_t>>("grid"));

// The runtime is built as a Python extension module so that it installs and
// imports like any module of the package (editable installs included); its
// functions are reached through ctypes.
static PyModuleDef kRuntimeModule = {PyModuleDef_HEAD_INIT, "_runtime",
                                     "pallas_cpu native runtime", -1, nullptr};

PyMODINIT_FUNC PyInit__runtime(void) { return PyModule_Create(&kRuntimeModule); }
