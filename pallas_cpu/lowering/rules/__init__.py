"""Lowering rules, one module per primitive family.  Importing this package
registers every rule in ``registry``; the entry (``lowering/kernel.py``)
does, and no other lowering module imports a rule.  ``common``,
``approx``: helpers the families share."""
from pallas_cpu.lowering.rules import (  # noqa: F401
    bits,
    control_flow,
    debug,
    dma,
    dot,
    dynamic_slicing,
    elementwise,
    grid_queries,
    layout,
    memory,
    misc,
    mxu,
    pipeline,
    random,
    reductions,
    shape,
)
