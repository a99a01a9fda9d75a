"""JAX dtypes and avals as MLIR types."""
from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax._src import dtypes as jax_dtypes
from mlir import ir

from pallas_cpu.lowering import fp8


def is_float(dtype) -> bool:
  # jnp knows the ml_dtypes floats (bfloat16, float8_*) that numpy does not.
  return jnp.issubdtype(np.dtype(dtype), jnp.floating)


def is_int(dtype) -> bool:
  # jnp knows the ml_dtypes sub-byte integers (int4, uint2...) too.
  return jnp.issubdtype(np.dtype(dtype), jnp.integer)


def is_unsigned(dtype) -> bool:
  return jnp.issubdtype(np.dtype(dtype), jnp.unsignedinteger)


# Sub-byte integers: i4/i2 in registers (arith wraps at their width, as XLA
# does), one element per byte in every memory space of the kernel (the low
# bits hold the value; stores sign- or zero-extend).  XLA's packed arrays are
# unpacked and repacked by the runtime's FFI handler (runtime/subbyte.h).
SUBBYTE_BITS = (2, 4)


def is_subbyte(dtype) -> bool:
  """int4/uint4/int2/uint2 (ml_dtypes' int1/uint1 are not JAX dtypes)."""
  dtype = np.dtype(dtype)
  return is_int(dtype) and jax_dtypes.itemsize_bits(dtype) < 8


def iinfo(dtype):
  """``np.iinfo`` that also knows the ml_dtypes integers (int4...)."""
  return ml_dtypes.iinfo(np.dtype(dtype))


def is_bool(dtype) -> bool:
  return np.dtype(dtype) == np.bool_


def bitwidth(dtype) -> int:
  """Bits of a register value (bool: 1)."""
  if is_bool(dtype):
    return 1
  if is_subbyte(dtype):
    return jax_dtypes.itemsize_bits(np.dtype(dtype))
  return np.dtype(dtype).itemsize * 8


def dtype_bits(dtype) -> int:
  """Bits of one element in memory (bool: 8), as JAX counts them."""
  return jax_dtypes.itemsize_bits(np.dtype(dtype))


_FLOATS = {
    np.dtype(np.float16): ir.F16Type.get,
    np.dtype(np.float32): ir.F32Type.get,
    np.dtype(np.float64): ir.F64Type.get,
    np.dtype(ml_dtypes.bfloat16): ir.BF16Type.get,
}


def element_type(dtype) -> ir.Type:
  """The MLIR register type of a JAX dtype (integers are signless; float8
  values are computed in f32, see fp8.py)."""
  dtype = np.dtype(dtype)
  if fp8.is_fp8(dtype):
    return ir.F32Type.get()
  if dtype in _FLOATS:
    return _FLOATS[dtype]()
  if is_bool(dtype):
    return ir.IntegerType.get_signless(1)
  if is_subbyte(dtype) and bitwidth(dtype) not in SUBBYTE_BITS:
    raise NotImplementedError(
        f"dtype {dtype} is not supported by pallas_cpu (sub-byte integers: "
        "int4, uint4, int2, uint2)")
  if is_int(dtype):
    return ir.IntegerType.get_signless(bitwidth(dtype))
  raise NotImplementedError(f"dtype {dtype} is not supported by pallas_cpu")


def memory_element_type(dtype) -> ir.Type:
  """The element type in memory: bools are bytes (as XLA stores them; LLVM
  cannot address i1), float8 values are their bytes, sub-byte integers one
  per byte (memory is byte-addressed in every memory space)."""
  if is_bool(dtype) or fp8.is_fp8(dtype) or is_subbyte(dtype):
    if is_subbyte(dtype):
      element_type(dtype)  # an unsupported width raises
    return ir.IntegerType.get_signless(8)
  return element_type(dtype)


def converted_in_registers(dtype) -> bool:
  """Whether the register type differs from the memory type (bool: i1 vs
  i8; float8: f32 vs i8; int4: i4 vs i8)."""
  return is_bool(dtype) or fp8.is_fp8(dtype) or is_subbyte(dtype)


def row_major_strides(shape) -> list[int]:
  strides, acc = [], 1
  for d in reversed(shape):
    strides.append(acc)
    acc *= d
  return list(reversed(strides))


def strided_layout(strides, dynamic_offset: bool = True) -> ir.Attribute:
  dyn = ir.ShapedType.get_dynamic_stride_or_offset()
  return ir.StridedLayoutAttr.get(dyn if dynamic_offset else 0,
                                  [dyn if s is None else s for s in strides])


def memref_type(shape, dtype, memory_space: ir.Attribute | None,
                strides=None) -> ir.MemRefType:
  """A memref of ``shape``; with ``strides`` (None entries are dynamic) it
  gets a strided layout with a dynamic offset, else the identity layout."""
  layout = None if strides is None else strided_layout(strides)
  return ir.MemRefType.get(list(shape), memory_element_type(dtype), layout=layout,
                           memory_space=memory_space)


def memref_strides(t: ir.MemRefType) -> list[int | None]:
  """Static strides of a memref type (None where dynamic)."""
  strides, _ = t.get_strides_and_offset()
  dyn = ir.ShapedType.get_dynamic_stride_or_offset()
  return [None if s == dyn else s for s in strides]
