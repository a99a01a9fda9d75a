"""Command line: ``python -m pallas_cpu {demo,coverage,opt}``."""
from __future__ import annotations

import argparse
import sys


def _coverage() -> int:
  """Mosaic's TensorCore table against ours, then what we lower beyond it
  (primitives jnp binds that Mosaic rejects: jnp.arcsin, jnp.cumsum, ...),
  by the rule family (``rules/<family>.py``) that lowers each."""
  from jax._src.pallas.mosaic import lowering as mosaic
  from pallas_cpu.lowering import registry
  from pallas_cpu.lowering import rules  # noqa: F401  (fill the table)
  table = registry.registered()
  ours = {p.name for p in table}
  mosaic_tc = sorted({p.name for p in mosaic.lowering_rules[
      mosaic.MOSAIC_CORE_TYPE_TC if hasattr(mosaic, "MOSAIC_CORE_TYPE_TC")
      else next(iter(mosaic.lowering_rules))]})
  have = [p for p in mosaic_tc if p in ours]
  missing = [p for p in mosaic_tc if p not in ours]
  print(f"Mosaic TensorCore primitives lowered: {len(have)}/{len(mosaic_tc)}")
  print("lowered:     " + ", ".join(have))
  print("not lowered: " + (", ".join(missing) or "(none)"))
  families: dict[str, set[str]] = {}
  for prim, rule in table.items():
    if prim.name not in mosaic_tc:
      family = rule.fn.__module__.rsplit(".", 1)[-1]
      families.setdefault(family, set()).add(prim.name)
  n = sum(len(v) for v in families.values())
  print()
  print(f"Beyond Mosaic's table: {n} more primitives lowered (Mosaic has no "
        "rule for them), by rule family:")
  width = max((len(f) for f in families), default=0) + 1
  for family in sorted(families):
    print(f"  {family + ':':<{width}} " + ", ".join(sorted(families[family])))
  return 0


def _opt(path: str, pipeline: str) -> int:
  """Runs an MLIR pass pipeline on a file (the reproducer of a failed
  stage; this install ships no mlir-opt)."""
  from mlir import ir, passmanager
  with ir.Context(), ir.Location.unknown():
    module = ir.Module.parse(open(path).read())
    passmanager.PassManager.parse(pipeline).run(module.operation)
    print(module)
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m pallas_cpu")
  sub = parser.add_subparsers(dest="cmd", required=True)
  demo = sub.add_parser("demo", help="compile, check and time a demo kernel")
  demo.add_argument("--repeats", type=int, default=5)
  sub.add_parser("coverage", help="primitives lowered vs Mosaic's table")
  opt = sub.add_parser("opt", help="run a pass pipeline on an MLIR file")
  opt.add_argument("file")
  opt.add_argument("--pass-pipeline", required=True)
  args = parser.parse_args(argv)
  if args.cmd == "demo":
    from pallas_cpu import demo as demo_mod
    return demo_mod.main(args.repeats)
  if args.cmd == "coverage":
    return _coverage()
  return _opt(args.file, args.pass_pipeline)


if __name__ == "__main__":
  sys.exit(main())
