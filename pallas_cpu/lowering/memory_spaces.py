"""Named memory spaces carried by every memref of the kernel IR.

They are builtin string attributes, so the printed IR reads
``memref<256x256xf32, strided<[2048, 1], offset: ?>, "vmem">``.  The
compile pipeline erases them just before lowering to LLVM: on CPU every space
is ordinary host memory.
"""
from __future__ import annotations

from mlir import ir

HBM = "hbm"          # whole kernel operands (what pl.ANY / pltpu.HBM name)
ANY = "any"          # operands passed with memory_space=pl.ANY
VMEM = "vmem"        # blocks, VMEM scratch, temporaries
SMEM = "smem"        # scalar memory: scalar prefetch, SMEM blocks/scratch
SEMAPHORE = "semaphore"

ALL = (HBM, ANY, VMEM, SMEM, SEMAPHORE)


def attr(space: str) -> ir.Attribute:
  assert space in ALL, space
  return ir.StringAttr.get(space)


def from_pallas(memory_space) -> str:
  """Maps a Pallas/TPU memory space object to our space name."""
  if memory_space is None:
    return VMEM
  name = str(getattr(memory_space, "name", memory_space)).lower()
  if "smem" in name:
    return SMEM
  if "sem" in name:
    return SEMAPHORE
  if "any" in name:
    return ANY
  if "hbm" in name:
    return HBM
  return VMEM
