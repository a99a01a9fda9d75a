"""The benchmark cases, one module per family.

Importing this package runs every family module in ``FAMILIES`` order; each
registers its cases into ``benchmarks.registry.CASES`` (``register`` or the
``@case`` / ``@library_case`` decorators), and that order is the order of
``--list`` and of the results table.  A new family (collectives,
races, ...) is one new module here and its name in ``FAMILIES``.
"""
import importlib

FAMILIES = (
    "matmul",       # tiled matmul, f32 and bf16
    "attention",    # flash (fwd, bwd), splash, paged, ragged paged
    "megablox",     # grouped matmuls gmm, tgmm
    "rows",         # softmax, layer norm
    "elementwise",  # add, fused transcendental chain, edge blocks
    "random",       # the shipped philox kernel vs its rounds in jnp
    "dma",          # manual double buffering
    "cores",        # TensorCore meshes: multi-core scaling
    "scaling",      # a parallel grid over 1, 2, 4, 8 runtime threads
    "races",        # race detection: the instrumented build's cost
    "collectives",  # remote DMAs across 8 devices vs lax collectives
    "overhead",     # per-grid-step cost: empty and tiny steps
    "suite",        # fifty fresh small kernels: a test suite's first calls
)

for _family in FAMILIES:
  importlib.import_module(f"{__name__}.{_family}")
