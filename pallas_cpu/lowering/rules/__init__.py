"""Lowering rules, one module per primitive family.  Importing this package
registers every rule."""
from pallas_cpu.lowering.rules import (  # noqa: F401
    control_flow,
    elementwise,
    grid_queries,
    memory,
    shape,
)
