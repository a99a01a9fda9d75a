#include "kernel_registry.h"

#include <atomic>
#include <memory>
#include <cstdio>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>
#include <vector>

namespace pallas_cpu {
namespace {

struct Registry {
  std::shared_mutex mu;
  std::unordered_map<std::string, std::unique_ptr<KernelEntry>> entries;
  std::atomic<PallasCpuCompileFn> compiler{nullptr};
  std::atomic<PallasCpuTierUpFn> tier_up{nullptr};
  std::atomic<PallasCpuPrintFn> printer{nullptr};
  std::atomic<PallasCpuWarnFn> warner{nullptr};
  std::atomic<PallasCpuWarnFn> tpu_warner{nullptr};
  std::atomic<PallasCpuWarnFn> race_reporter{nullptr};
  std::mutex compile_mu;  // one compilation at a time
};

Registry& GetRegistry() {
  static Registry* registry = new Registry();  // never destroyed: no
                                               // teardown-order hazards
  return *registry;
}

KernelEntry* Find(Registry& r, const std::string& key) {
  std::shared_lock<std::shared_mutex> lock(r.mu);
  auto it = r.entries.find(key);
  return it == r.entries.end() ? nullptr : it->second.get();
}

// Stores `fn` as the code of `key` (a new entry, or the faster build of a
// known one); returns the entry.
KernelEntry* Store(Registry& r, const std::string& key, PallasCpuEntryFn fn) {
  std::unique_lock<std::shared_mutex> lock(r.mu);
  std::unique_ptr<KernelEntry>& slot = r.entries[key];
  if (slot == nullptr) slot = std::make_unique<KernelEntry>();
  slot->fn.store(fn, std::memory_order_release);
  return slot.get();
}

}  // namespace

KernelEntry* LookupOrCompile(std::string_view kernel_id,
                             std::string_view kernel_ir, std::string* error) {
  Registry& r = GetRegistry();
  std::string key(kernel_id);
  if (KernelEntry* e = Find(r, key)) return e;

  std::lock_guard<std::mutex> compile_lock(r.compile_mu);
  if (KernelEntry* e = Find(r, key)) return e;
  PallasCpuCompileFn compiler = r.compiler.load();
  if (compiler == nullptr) {
    *error = "pallas_cpu: kernel " + key +
             " is not compiled in this process and no compiler is installed "
             "(import pallas_cpu before running this executable)";
    return nullptr;
  }
  std::vector<char> err(4096, '\0');
  uint64_t addr = compiler(kernel_ir.data(), kernel_ir.size(), err.data(),
                           err.size());
  if (addr == 0) {
    *error = std::string("pallas_cpu: compiling kernel ") + key +
             " failed: " + err.data();
    return nullptr;
  }
  // The background build may have registered it meanwhile.
  if (KernelEntry* e = Find(r, key)) return e;
  return Store(r, key, reinterpret_cast<PallasCpuEntryFn>(addr));
}

void RecordCall(KernelEntry* entry, std::string_view kernel_id,
                std::string_view kernel_ir, int64_t elapsed_ns,
                int64_t budget_ns) {
  if (entry->spent_ns.fetch_add(elapsed_ns) + elapsed_ns < budget_ns) return;
  if (entry->tier_up_asked.exchange(true)) return;
  if (PallasCpuTierUpFn hook = GetRegistry().tier_up.load()) {
    hook(kernel_id.data(), kernel_id.size(), kernel_ir.data(),
         kernel_ir.size());
  }
}

void PrintRecords(std::string_view table,
                  const std::vector<std::pair<int64_t, std::vector<int64_t>>>&
                      records) {
  PallasCpuPrintFn printer = GetRegistry().printer.load();
  if (printer == nullptr) return;
  for (const auto& [id, values] : records) {
    printer(table.data(), table.size(), id, values.data(),
            static_cast<int64_t>(values.size()));
  }
}

void Warn(std::string_view kernel_name,
          const std::vector<std::string>& messages, WarningKind kind) {
  PallasCpuWarnFn warner = kind == WarningKind::kTpuCompatibility
                               ? GetRegistry().tpu_warner.load()
                               : GetRegistry().warner.load();
  for (const std::string& m : messages) {
    std::string text = "pallas_cpu kernel '" + std::string(kernel_name) +
                       "': " + m;
    if (warner != nullptr) {
      warner(text.data(), text.size());
    } else {
      std::fprintf(stderr, "warning: %s\n", text.c_str());
    }
  }
}

namespace {
std::string Json(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}
}  // namespace

void ReportRaces(std::string_view kernel_name,
                 const std::vector<RaceReport>& reports) {
  PallasCpuWarnFn reporter = GetRegistry().race_reporter.load();
  for (const RaceReport& r : reports) {
    std::string json =
        "{\"kernel\": " + Json(kernel_name) + ", \"kind\": " + Json(r.kind) +
        ", \"buffer\": " + Json(r.buffer) +
        ", \"first\": " + std::to_string(r.first) +
        ", \"last\": " + std::to_string(r.last) +
        ", \"earlier\": " + Json(r.earlier) + ", \"later\": " + Json(r.later) +
        "}";
    if (reporter != nullptr) {
      reporter(json.data(), json.size());
    } else {
      std::fprintf(stderr, "RACE DETECTED %s\n", json.c_str());
    }
  }
}

}  // namespace pallas_cpu

extern "C" void pallas_cpu_rt_set_race_reporter(PallasCpuWarnFn fn) {
  pallas_cpu::GetRegistry().race_reporter.store(fn);
}

extern "C" void pallas_cpu_rt_set_warner(PallasCpuWarnFn fn) {
  pallas_cpu::GetRegistry().warner.store(fn);
}

extern "C" void pallas_cpu_rt_set_tpu_warner(PallasCpuWarnFn fn) {
  pallas_cpu::GetRegistry().tpu_warner.store(fn);
}

extern "C" void pallas_cpu_rt_set_printer(PallasCpuPrintFn fn) {
  pallas_cpu::GetRegistry().printer.store(fn);
}

extern "C" void pallas_cpu_rt_set_compiler(PallasCpuCompileFn fn) {
  pallas_cpu::GetRegistry().compiler.store(fn);
}

extern "C" void pallas_cpu_rt_set_tier_up(PallasCpuTierUpFn fn) {
  pallas_cpu::GetRegistry().tier_up.store(fn);
}

extern "C" void pallas_cpu_rt_register_kernel(const char* kernel_id,
                                              uint64_t entry) {
  pallas_cpu::Store(pallas_cpu::GetRegistry(), kernel_id,
                    reinterpret_cast<PallasCpuEntryFn>(entry));
}

extern "C" int64_t pallas_cpu_rt_num_registered_kernels(void) {
  auto& r = pallas_cpu::GetRegistry();
  std::shared_lock<std::shared_mutex> lock(r.mu);
  return static_cast<int64_t>(r.entries.size());
}
