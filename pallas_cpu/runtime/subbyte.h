// Sub-byte integer operands (int4, uint4, int2, uint2) at the FFI boundary.
//
// XLA's CPU client packs them: the buffer an FFI handler receives holds the
// array's elements row-major, 8/w per byte (w = 4 or 2 bits), element
// k*(8/w) + i in bits [i*w, (i+1)*w) of byte k, over the whole array (no
// padding per row; a partial last byte) -- checked with a handler dumping
// its operand's bytes, jaxlib 0.10.2; the FFI's size_bytes() still counts
// one byte per element.  A kernel's memory holds one element per byte
// instead (lowering/types.py: the value in the low bits, sign- or
// zero-extended), so every memory space stays byte-addressed.  The handler
// gives the kernel such an unpacked copy of each sub-byte operand and packs
// each sub-byte result back after the run.  XLA's own convert from int8
// into a packed array runs ~20 ns per element on this machine (79 ms for
// 2048x2048); these loops take well under 1 ns.
#ifndef PALLAS_CPU_RUNTIME_SUBBYTE_H_
#define PALLAS_CPU_RUNTIME_SUBBYTE_H_

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace pallas_cpu {

// Bits per element of a sub-byte integer type; 0 for any other type.
inline int SubByteBits(xla::ffi::DataType t) {
  switch (t) {
    case xla::ffi::DataType::S4:
    case xla::ffi::DataType::U4:
      return 4;
    case xla::ffi::DataType::S2:
    case xla::ffi::DataType::U2:
      return 2;
    default:
      return 0;
  }
}

inline bool SubByteSigned(xla::ffi::DataType t) {
  return t == xla::ffi::DataType::S4 || t == xla::ffi::DataType::S2;
}

// One element per byte, sign- or zero-extended, from XLA's packed bytes.
template <int kBits, bool kSigned>
void UnpackSubByte(const uint8_t* packed, int8_t* out, int64_t n) {
  constexpr int kPer = 8 / kBits;
  const int64_t whole = n / kPer;
  for (int64_t k = 0; k < whole; ++k) {
    const uint8_t b = packed[k];
    for (int i = 0; i < kPer; ++i) {
      if (kSigned) {
        // The field to the top of the byte, then an arithmetic shift down.
        out[k * kPer + i] = static_cast<int8_t>(
            static_cast<int8_t>(b << (8 - kBits * (i + 1))) >> (8 - kBits));
      } else {
        out[k * kPer + i] =
            static_cast<int8_t>((b >> (kBits * i)) & ((1 << kBits) - 1));
      }
    }
  }
  for (int64_t e = whole * kPer; e < n; ++e) {
    const uint8_t b = packed[whole];
    const int i = static_cast<int>(e - whole * kPer);
    out[e] = kSigned ? static_cast<int8_t>(
                           static_cast<int8_t>(b << (8 - kBits * (i + 1))) >>
                           (8 - kBits))
                     : static_cast<int8_t>((b >> (kBits * i)) &
                                           ((1 << kBits) - 1));
  }
}

// XLA's packed bytes from one element per byte (its low bits).
template <int kBits>
void PackSubByte(const int8_t* in, uint8_t* packed, int64_t n) {
  constexpr int kPer = 8 / kBits;
  constexpr uint8_t kMask = (1 << kBits) - 1;
  const int64_t whole = n / kPer;
  for (int64_t k = 0; k < whole; ++k) {
    uint8_t b = 0;
    for (int i = 0; i < kPer; ++i) {
      b |= static_cast<uint8_t>((static_cast<uint8_t>(in[k * kPer + i]) & kMask)
                                << (kBits * i));
    }
    packed[k] = b;
  }
  if (whole * kPer < n) {  // the last, partial byte (its free bits 0)
    uint8_t b = 0;
    for (int64_t e = whole * kPer; e < n; ++e) {
      b |= static_cast<uint8_t>((static_cast<uint8_t>(in[e]) & kMask)
                                << (kBits * (e - whole * kPer)));
    }
    packed[whole] = b;
  }
}

// The unpacked copies of one call's sub-byte operands and results, by the
// address XLA gave (an aliased result is its operand's buffer: one copy).
class SubByteBuffers {
 public:
  // The buffer the kernel sees for XLA's `data` of type `t`, `n` elements:
  // `data` itself unless sub-byte.  Operands (`unpack`) are unpacked into
  // their copy; a result's copy starts uninitialized unless it aliases an
  // operand.  nullptr when the copy cannot be allocated.
  void* Map(void* data, xla::ffi::DataType t, int64_t n, bool unpack,
            bool is_result) {
    const int bits = SubByteBits(t);
    if (bits == 0) return data;
    for (Entry& e : entries_) {
      if (e.packed == data) {
        e.pack_back = e.pack_back || is_result;
        return e.unpacked.get();
      }
    }
    size_t rounded = (static_cast<size_t>(n) + 63) / 64 * 64;
    Entry e{data, bits, n, is_result,
            {static_cast<int8_t*>(std::aligned_alloc(64, rounded ? rounded : 64)),
             &std::free}};
    if (e.unpacked == nullptr) return nullptr;
    if (unpack) {
      const auto* p = static_cast<const uint8_t*>(data);
      const bool s = SubByteSigned(t);
      if (bits == 4) {
        s ? UnpackSubByte<4, true>(p, e.unpacked.get(), n)
          : UnpackSubByte<4, false>(p, e.unpacked.get(), n);
      } else {
        s ? UnpackSubByte<2, true>(p, e.unpacked.get(), n)
          : UnpackSubByte<2, false>(p, e.unpacked.get(), n);
      }
    }
    void* out = e.unpacked.get();
    entries_.push_back(std::move(e));
    return out;
  }

  // Packs every result back into XLA's buffer.
  void PackResults() {
    for (Entry& e : entries_) {
      if (!e.pack_back) continue;
      auto* p = static_cast<uint8_t*>(e.packed);
      if (e.bits == 4) {
        PackSubByte<4>(e.unpacked.get(), p, e.n);
      } else {
        PackSubByte<2>(e.unpacked.get(), p, e.n);
      }
    }
  }

 private:
  struct Entry {
    void* packed;
    int bits;
    int64_t n;
    bool pack_back;
    std::unique_ptr<int8_t, decltype(&std::free)> unpacked;
  };
  std::vector<Entry> entries_;
};

}  // namespace pallas_cpu

#endif  // PALLAS_CPU_RUNTIME_SUBBYTE_H_
