"""Collectives across 8 CPU devices: the distributed guide's ring
all-gather and all-reduce (pallas_cpu.examples.collectives), with remote
DMAs, inside ``jax.shard_map``, next to XLA's own ``lax.all_gather`` /
``lax.psum`` on the same devices.

At realistic sizes (1 MiB shards) TPU interpret mode deadlocks on 8 host
devices (its callbacks copy operands through device 0 while device 0 waits
inside one), so it is measured on small shards, where it runs; there the
race-detecting build is measured too.  bench.py starts JAX with 8 host CPU
devices.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh
from pallas_cpu.examples import collectives as C

from benchmarks.cases.common import (RACE_RATIOS, RACE_TARGETS,
                                     library_case, race_variants)

N = 8
_NO_REMOTE = "interpret=True has no remote DMAs (device_id)"
_DEADLOCK = ("TPU interpret mode deadlocks at this size on 8 host devices "
             "(test/devices/test_collectives.py, test_reduce_scatter_"
             "pipelined's note)")


def _mesh() -> Mesh:
  return Mesh(np.array(jax.devices()[:N]), ("x",))


def _shard_map(collective, body):
  """``body`` (the kernel's or the lax reference's per-shard function) in
  a shard_map of the collective's mesh and specs."""
  return jax.shard_map(body, mesh=collective.mesh,
                       in_specs=collective.in_specs,
                       out_specs=collective.out_specs, check_vma=False)


def _inputs(rows: int, cols: int):
  # Exactly representable partial sums: the ring adds in any order.
  return (np.arange(N * rows * cols, dtype=np.float32).reshape(N * rows, cols)
          % 1024 * 0.5,)


def _register(kind: str, rows: int, cols: int, realistic: bool):
  mesh = _mesh()
  collective = (C.build_all_gather(mesh) if kind == "all_gather"
                else C.build_all_reduce(mesh))
  reference = _shard_map(collective, collective.reference)
  mib = rows * cols * 4 / 2 ** 20
  name = f"{kind}_8dev_{rows}x{cols}"
  what = ("ring all-gather (lax.all_gather)" if kind == "all_gather" else
          "ring all-reduce (lax.psum)")
  extra = {}
  if realistic:
    extra = dict(skip={"interpret": _NO_REMOTE, "tpu-interpret": _DEADLOCK},
                 targets={"cpu/xla": ("<=", 2.0)})
  else:
    extra = dict(skip={"interpret": _NO_REMOTE},
                 variants=race_variants(
                     _shard_map(collective, collective.local)),
                 variant_ratios=RACE_RATIOS,
                 targets={"tpu-interpret/cpu": (">=", 100.0),
                          **RACE_TARGETS})
  library_case(
      name=name,
      description=(f"the distributed guide's {what}: remote DMAs between 8 "
                   f"CPU devices in shard_map, {rows}x{cols} f32 shards "
                   f"({mib:g} MiB); reference: the lax collective in the "
                   f"same shard_map"),
      make_inputs=lambda: _inputs(rows, cols), reference=reference,
      grid_steps=N, rtol=0, atol=0, quick=False, **extra)(
          _shard_map(collective, collective.local))


for _kind in ("all_gather", "all_reduce"):
  _register(_kind, 512, 512, realistic=True)     # 1 MiB shards
  _register(_kind, 16, 128, realistic=False)     # TPU interpret runs these
