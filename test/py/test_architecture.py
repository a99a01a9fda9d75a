"""The import structure of pallas_cpu, checked from the source with the
standard library (``ast``): every import statement of every module --
module-level and inside functions alike -- is an edge of the graph.

- no import cycle anywhere in ``pallas_cpu/``;
- the lowering is layered: each module of ``pallas_cpu/lowering/`` sits on a
  floor (``FLOORS``) and imports only from its own floor or below;
- the rule registry is a table that imports nothing of pallas_cpu, and no
  lowering module but the entry (``kernel.py``) imports the rules: rules
  register themselves when the entry imports their package, as JAX's
  ``mlir.register_lowering`` table is filled.

An import of ``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``;
those implicit edges are left out (``pallas_cpu/__init__.py`` imports the
public API, which reaches every module), as import-graph tools do.
"""
from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "pallas_cpu"
LOWERING = "pallas_cpu.lowering"
RULES = "pallas_cpu.lowering.rules"
ENTRY = "pallas_cpu.lowering.kernel"

# Floors of pallas_cpu/lowering, bottom up: a module imports from its own
# floor or below.  (lowering/README.md draws the same picture.)
FLOORS = [
    # scalar code, dtypes, memory spaces, error types, the work estimate:
    # no lowering state
    ["errors", "scalars", "fp8", "types", "memory_spaces", "cost"],
    # lazy values, memref views
    ["values", "views"],
    # the kernel being built; jaxpr-level fusion patterns
    ["context", "fusion"],
    # kernel buffers (allocation, fills, semaphores, exit checks); refs
    # seen through width-changing bitcasts; shard_map devices
    ["buffers", "bit_views", "devices", "race_hooks"],
    # the rule table (imports nothing of pallas_cpu)
    ["registry"],
    # the jaxpr walker and lower_fun: look rules up in the table
    ["jaxpr"],
    # one module per primitive family, and their shared helpers
    ["rules", "rules.*"],
    # the grid loop nest around the kernel body
    ["grid", "coalesce"],
    # the entry: imports the rules package, builds the module
    ["kernel"],
]


def _module_name(path: pathlib.Path, package: pathlib.Path) -> str:
  parts = list(path.relative_to(package.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _modules(package: pathlib.Path) -> dict[str, pathlib.Path]:
  return {_module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def _bound_names(path: pathlib.Path) -> set[str]:
  """The names a module binds at its top level."""
  names = set()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      names.update((a.asname or a.name).partition(".")[0] for a in node.names)
    elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      names.update(n.id for t in targets for n in ast.walk(t)
                   if isinstance(n, ast.Name))
  return names


def _imports(name: str, path: pathlib.Path, known: dict[str, pathlib.Path]):
  """(imported pallas_cpu module, line) for every import in the module.
  ``from package import x``, x not bound by the package's ``__init__``,
  imports the submodule x, compiled ones (``_runtime``) included."""
  tree = ast.parse(path.read_text(), filename=str(path))
  is_package = path.name == "__init__.py"
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        target = alias.name
        while target and target not in known:  # import a.b.c: a.b.c itself
          target = target.rpartition(".")[0]
        if target:
          yield target, node.lineno
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        package = name if is_package else name.rpartition(".")[0]
        for _ in range(node.level - 1):
          package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
      for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in known:  # from a.b import c, c a module
          yield sub, node.lineno
        elif base in known:  # from a.b import name, a name in a.b
          init = known[base]
          if (init.name == "__init__.py"
              and alias.name not in _bound_names(init)):
            yield sub, node.lineno  # a compiled submodule
          else:
            yield base, node.lineno


def import_graph(package: pathlib.Path = PACKAGE) -> dict[str, dict[str, int]]:
  """module -> {imported module: first line importing it}."""
  modules = _modules(package)
  graph = {}
  for name, path in modules.items():
    edges: dict[str, int] = {}
    for target, line in _imports(name, path, modules):
      if target != name:
        edges.setdefault(target, line)
    graph[name] = edges
  return graph


def _cycles(graph) -> list[list[str]]:
  """The strongly connected components with more than one module
  (Tarjan's algorithm)."""
  index, low, on_stack, stack, out = {}, {}, set(), [], []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def _floor(module: str) -> int | None:
  rel = module[len(LOWERING) + 1:]
  for k, names in enumerate(FLOORS):
    for n in names:
      if rel == n or (n.endswith(".*") and rel.startswith(n[:-1])):
        return k
  return None


def _in_lowering(module: str) -> bool:
  return module.startswith(LOWERING + ".")


def _is_rules(module: str) -> bool:
  return module == RULES or module.startswith(RULES + ".")


def test_the_graph_sees_every_kind_of_import(tmp_path):
  """The parser finds module-level, function-level and relative imports,
  so the checks below do not pass by seeing nothing."""
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("from pkg.a import f\n")
  (pkg / "a.py").write_text("import pkg.sub.c\ndef f():\n  from . import b\n")
  (pkg / "b.py").write_text("from .sub import c\nfrom pkg import _ext, f\n")
  (pkg / "sub" / "__init__.py").write_text("")
  (pkg / "sub" / "c.py").write_text("from ..a import f\n")
  graph = import_graph(pkg)
  assert graph == {
      "pkg": {"pkg.a": 1},
      "pkg.a": {"pkg.sub.c": 1, "pkg.b": 3},    # module and function level
      "pkg.b": {"pkg.sub.c": 1, "pkg._ext": 2,  # a compiled submodule
                "pkg": 2},                      # a name pkg binds
      "pkg.sub": {},
      "pkg.sub.c": {"pkg.a": 1},                # relative, two levels
  }
  assert _cycles(graph) == [["pkg", "pkg.a", "pkg.b", "pkg.sub.c"]]

  graph = import_graph()
  assert "pallas_cpu.lowering.jaxpr" in graph[ENTRY]
  assert RULES in graph[ENTRY]  # from pallas_cpu.lowering import rules
  assert "pallas_cpu.lowering.rules.bits" in graph[RULES]
  assert "pallas_cpu._runtime" in graph["pallas_cpu.runtime_lib"]  # in a def
  assert len(graph) > 40


def test_no_import_cycle():
  graph = import_graph()
  cycles = _cycles(graph)
  lines = []
  for component in cycles:
    members = set(component)
    lines.append(" <-> ".join(component))
    for a in component:
      for b, line in sorted(graph[a].items()):
        if b in members:
          lines.append(f"    {a}:{line} imports {b}")
  assert not cycles, "import cycles in pallas_cpu:\n" + "\n".join(lines)


def test_lowering_floors():
  graph = import_graph()
  unplaced = sorted(m for m in graph if _in_lowering(m) and _floor(m) is None)
  assert not unplaced, (
      f"give {unplaced} a floor in FLOORS (and in lowering/README.md)")
  upward = []
  for a, edges in graph.items():
    if not _in_lowering(a):
      continue
    for b, line in edges.items():
      if _in_lowering(b) and _floor(b) > _floor(a):
        upward.append(f"{a}:{line} (floor {_floor(a)}) imports {b} "
                      f"(floor {_floor(b)})")
  assert not upward, "imports from a higher floor:\n" + "\n".join(upward)


def test_registry_is_a_table_that_imports_nothing():
  graph = import_graph()
  ours = sorted(graph["pallas_cpu.lowering.registry"])
  assert not ours, f"lowering/registry.py imports {ours}"


def test_only_the_entry_imports_the_rules():
  graph = import_graph()
  bad = [f"{a}:{line} imports {b}"
         for a, edges in graph.items() for b, line in edges.items()
         if _is_rules(b) and _in_lowering(a) and not _is_rules(a)
         and a != ENTRY]
  assert not bad, ("only lowering/kernel.py may import the rules:\n"
                   + "\n".join(bad))
