// The one XLA FFI target that runs every compiled Pallas kernel.
//
// The HLO carries only strings: the kernel id (a fingerprint of the kernel
// IR and compile options) and the kernel IR itself, so an executable restored
// from JAX's persistent compilation cache or from jax.export finds or
// rebuilds its native code in a fresh process.  No pointer ever enters HLO.
#include <Python.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <optional>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "abi.h"
#include "devices.h"
#include "kernel_info.h"
#include "kernel_registry.h"
#include "launch.h"
#include "runtime_context.h"
#include "subbyte.h"
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
  void Add(void* data, ffi::AnyBuffer::Dimensions dims, size_t nbytes) {
    Add(data, std::vector<int64_t>(dims.begin(), dims.end()), nbytes);
  }
  void Add(void* data, const std::vector<int64_t>& dims, size_t nbytes) {
    regions_.push_back({static_cast<char*>(data),
                        static_cast<int64_t>(nbytes)});
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

  // The buffers, as regions another device's remote DMA may address.
  const std::vector<Region>& regions() const { return regions_; }

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
  std::vector<Region> regions_;
};

// Times one call of a kernel that counts its calls for tier-up.
class CallTimer {
 public:
  CallTimer(KernelEntry* kernel, std::string_view id, std::string_view ir,
            int64_t budget_ns)
      : kernel_(kernel), id_(id), ir_(ir), budget_ns_(budget_ns),
        start_(std::chrono::steady_clock::now()) {}
  ~CallTimer() {
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                  std::chrono::steady_clock::now() - start_).count();
    RecordCall(kernel_, id_, ir_, ns, budget_ns_);
  }

 private:
  KernelEntry* kernel_;
  std::string_view id_, ir_;
  int64_t budget_ns_;
  std::chrono::steady_clock::time_point start_;
};

ffi::Error PallasCpuCall(ffi::RunId run_id, ffi::RemainingArgs args,
                         ffi::RemainingRets rets,
                         std::string_view kernel_id,
                         std::string_view kernel_ir,
                         std::string_view kernel_name,
                         std::string_view semaphore_names,
                         ffi::Span<const int64_t> grid,
                         int64_t parallel_extent, int64_t num_threads,
                         std::string_view debug_prints,
                         std::string_view check_messages,
                         std::string_view sites,
                         std::string_view allocations, int64_t mesh_cores,
                         int64_t num_devices, int64_t collective,
                         int64_t device_timeout_ms,
                         ffi::Span<const int64_t> shared_buffers,
                         int64_t detect_races, int64_t race_cores,
                         int64_t tier_up_after_us) {
  std::string error;
  KernelEntry* kernel = LookupOrCompile(kernel_id, kernel_ir, &error);
  if (kernel == nullptr) return ffi::Error::Internal(error);
  const PallasCpuEntryFn entry = kernel->fn.load(std::memory_order_acquire);
  // A kernel built at -O0 for its size times its calls, until they are
  // worth its -O3 build (kernel_registry.h; budget < 0: none).
  std::optional<CallTimer> timer;
  if (tier_up_after_us >= 0 &&
      !kernel->tier_up_asked.load(std::memory_order_relaxed)) {
    timer.emplace(kernel, kernel_id, kernel_ir, tier_up_after_us * 1000);
  }

  // A kernel inside shard_map over several devices gets its logical device
  // id (computed by XLA from the mesh coordinates) as a last operand; one
  // that talks to other devices runs as one launch with their instances.
  int64_t device = 0;
  size_t n_args = args.size();
  if (num_devices > 1) {
    auto id = args.get<ffi::AnyBuffer>(--n_args);
    if (id.has_error()) return id.error();
    device = *static_cast<const int32_t*>(id->untyped_data());
    if (device < 0 || device >= num_devices) {
      return ffi::Error::InvalidArgument(
          "pallas_cpu kernel '" + std::string(kernel_name) + "': device id " +
          std::to_string(device) + " outside the mesh of " +
          std::to_string(num_devices) + " devices");
    }
  }
  DescriptorTable table;
  // Element bytes of every operand, for the race detector.
  std::vector<int64_t> elem_bytes;
  // int4 & co.: the kernel sees one element per byte (subbyte.h).
  SubByteBuffers subbyte;
  auto add = [&](ffi::AnyBuffer buf, bool is_result) -> bool {
    void* data = subbyte.Map(buf.untyped_data(), buf.element_type(),
                             static_cast<int64_t>(buf.element_count()),
                             !is_result, is_result);
    if (data == nullptr) return false;
    // (size_bytes() counts a sub-byte element as one byte: the copy's size)
    table.Add(data, buf.dimensions(), buf.size_bytes());
    elem_bytes.push_back(ffi::ByteWidth(buf.element_type()));
    return true;
  };
  auto no_copy = [&] {
    return ffi::Error::InvalidArgument(
        "pallas_cpu kernel '" + std::string(kernel_name) +
        "': failed to allocate the unpacked copy of a sub-byte operand");
  };
  for (size_t i = 0; i < n_args; ++i) {
    auto buf = args.get<ffi::AnyBuffer>(i);
    if (buf.has_error()) return buf.error();
    if (!add(*buf, false)) return no_copy();
  }
  for (size_t i = 0; i < rets.size(); ++i) {
    auto buf = rets.get<ffi::AnyBuffer>(i);
    if (buf.has_error()) return buf.error();
    if (!add(**buf, true)) return no_copy();
  }

  // HBM buffers the cores of a mesh kernel share: allocated once for this
  // device, passed to every core after the outputs.
  std::vector<std::unique_ptr<char, decltype(&std::free)>> shared;
  for (int64_t nbytes : shared_buffers) {
    size_t rounded = (static_cast<size_t>(nbytes) + 63) / 64 * 64;
    shared.emplace_back(static_cast<char*>(std::aligned_alloc(64, rounded)),
                        &std::free);
    if (shared.back() == nullptr) {
      return ffi::Error::InvalidArgument(
          "pallas_cpu kernel '" + std::string(kernel_name) +
          "': failed to allocate a shared HBM buffer of " +
          std::to_string(nbytes) + " bytes");
    }
    table.Add(shared.back().get(), std::vector<int64_t>{nbytes},
              static_cast<size_t>(nbytes));
    elem_bytes.push_back(1);
  }

  // A kernel with a parallel grid dimension runs it in contiguous chunks,
  // one runtime context (errors, pending DMAs, visited blocks) per chunk:
  // the chunks are independent, like TPU cores.  The cores of a mesh are
  // one actor each, all running at once on threads of their own, whatever
  // the machine's core count: they may wait for each other.  So may the
  // devices of a collective kernel, which run their grids in order, as a
  // one-core TPU does.
  // At least two chunks, as a megacore chip's two TensorCores split it,
  // whatever the machine: kernels written for megacore (paged_attention's
  // megacore modes) expect each core to start its own part afresh.  The
  // chunks run on at most `threads` threads at once (num_threads=1: one
  // after the other on the caller's thread).
  int64_t threads = num_threads > 0 ? num_threads : DefaultNumThreads();
  int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>(parallel_extent > 0 ? parallel_extent : 1,
                           std::max<int64_t>(threads, 2)));
  const bool devices = num_devices > 1 && collective != 0;
  if (devices) chunks = 1;
  // Race detection splits a parallel dimension over the TPU cores it
  // models (CompilerParams(num_cores=...)), not over the machine's threads:
  // a verdict must not depend on the machine.
  if (detect_races != 0 && !devices) {
    chunks = std::max<int64_t>(
        1, std::min<int64_t>(parallel_extent > 0 ? parallel_extent : 1,
                             std::max<int64_t>(race_cores, 1)));
  }
  if (mesh_cores > 0) chunks = mesh_cores;
  int64_t extent = parallel_extent > 0 ? parallel_extent : 1;
  std::vector<PallasCpuRuntimeContext> contexts(chunks);
  const KernelInfo info = KernelInfo::Decode(
      kernel_name, grid.begin(), grid.size(), semaphore_names, check_messages,
      sites, allocations, debug_prints);
  std::vector<PallasCpuRuntimeContext*> actors;
  for (auto& ctx : contexts) {
    ctx.kernel = &info;
    ctx.device = device;
    actors.push_back(&ctx);
  }
  std::shared_ptr<Launch> launch =
      devices ? JoinLaunch(run_id.run_id, kernel_id, device, num_devices,
                           chunks, mesh_cores > 0)
              : std::make_shared<Launch>(1, chunks, mesh_cores > 0);
  launch->set_timeout_ms(device_timeout_ms);
  const int64_t slot = devices ? device : 0;  // the device in the launch
  {
    auto lock = launch->Lock();
    if (detect_races != 0) launch->EnableRaces(detect_races == 2);
  }
  launch->Attach(slot, actors);
  {
    auto lock = launch->Lock();
    if (collective != 0) {  // remote DMAs name buffers by region
      for (int64_t c = 0; c < chunks; ++c) {
        launch->actor(slot, c)->regions = table.regions();
      }
    }
    if (RaceDetector* races = launch->races()) {
      const auto& regions = table.regions();
      for (size_t r = 0; r < regions.size(); ++r) {
        const int64_t n_in = static_cast<int64_t>(n_args);
        const int64_t i = static_cast<int64_t>(r);
        std::string name =
            i < n_in ? "input " + std::to_string(i)
            : i < n_in + static_cast<int64_t>(rets.size())
                ? "output " + std::to_string(i - n_in)
                : std::string("a shared HBM buffer");
        if (devices) name += " of device " + std::to_string(device);
        races->AddBuffer(regions[r].base, regions[r].nbytes, elem_bytes[r],
                         std::move(name));
      }
    }
  }
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
      auto lock = launch->Lock();
      WaitForIdleDmas(&ctx, lock);  // another actor may be copying one
      ctx.dmas.clear();
    }
    launch->Finish(launch->actor(slot, c));
  };
  if (mesh_cores > 0) {
    RunOnThreads(chunks, run);
  } else {
    ParallelFor(chunks, threads, run);
  }
  subbyte.PackResults();

  for (auto& ctx : contexts) PrintRecords(debug_prints, ctx.prints);
  for (auto& ctx : contexts) Warn(kernel_name, ctx.warnings);
  for (auto& ctx : contexts) {
    Warn(kernel_name, ctx.tpu_warnings, WarningKind::kTpuCompatibility);
  }
  {
    std::vector<RaceReport> races;
    {
      auto lock = launch->Lock();
      races = launch->TakeRaceReports();
    }
    ReportRaces(kernel_name, races);
  }
  error = launch->FirstError();
  // Independent chunks of a grid run side by side: the call's error is the
  // first in grid order -- that of the earliest chunk that failed (each
  // keeps its own first), not whichever failed first in time.  Coupled
  // actors (cores of a mesh, devices) keep the first in time: later
  // failures are usually its consequences.
  if (!launch->coupled()) {
    for (auto& ctx : contexts) {
      if (ctx.failed.load(std::memory_order_acquire)) {
        error = ctx.message;
        break;
      }
    }
  }
  if (devices) LeaveLaunch(run_id.run_id, kernel_id, launch);
  if (detect_races != 0 && !devices && mesh_cores == 0 && chunks == 1 &&
      extent > 1 && error.rfind("deadlock", 0) == 0) {
    // The plain build gives a parallel dimension at least two chunks, as a
    // megacore chip's cores: a kernel written for megacore (one whose
    // cores each start their part afresh) runs there and deadlocks here.
    error += " (the race-detecting build runs the parallel grid dimension "
             "on CompilerParams(num_cores=" + std::to_string(race_cores) +
             ") core, as TPU interpret mode's num_cores_or_threads does; a "
             "kernel written for megacore needs num_cores=2)";
  }
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
                                  .Ctx<ffi::RunId>()
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
                                  .Attr<int64_t>("mesh_cores")
                                  .Attr<int64_t>("num_devices")
                                  .Attr<int64_t>("collective")
                                  .Attr<int64_t>("device_timeout_ms")
                                  .Attr<ffi::Span<const int64_t>>(
                                      "shared_buffers")
                                  .Attr<int64_t>("detect_races")
                                  .Attr<int64_t>("race_cores")
                                  .Attr<int64_t>("tier_up_after_us"));

// The runtime is built as a Python extension module so that it installs and
// imports like any module of the package (editable installs included); its
// functions are reached through ctypes.
static PyModuleDef kRuntimeModule = {PyModuleDef_HEAD_INIT, "_runtime",
                                     "pallas_cpu native runtime", -1, nullptr};

PyMODINIT_FUNC PyInit__runtime(void) { return PyModule_Create(&kRuntimeModule); }
