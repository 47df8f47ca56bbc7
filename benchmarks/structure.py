"""The shape of the package, as issue 24 counts it: modules over 300 lines, functions over 60 lines, import cycles
between lit-score modules (module-level imports), project imports deferred into function bodies, and probes on the
package's own objects.

    python benchmarks/structure.py [--root lit_score]

A probe on an own object is ``getattr(obj, "name", ...)`` / ``hasattr(obj, "name")`` whose literal ``name`` (not a
dunder) is an attribute or method some class of the package defines (in its body or as ``self.name = ...``), or
``isinstance(x, C)`` / ``issubclass(x, C)`` with C (or one of a tuple of them) a name imported from the package
(its exceptions left out: ``except`` and ``isinstance`` on an error are how Python asks what went wrong): a question a
declared capability should answer instead.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def scan(root: Path):
    modules, long_functions, deferred, edges, all_edges = {}, [], [], {}, {}
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        source = path.read_text()
        tree = ast.parse(source)
        modules[name] = len(source.splitlines())
        edges[name] = set()
        all_edges[name] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long_functions.append((f"{name}.{node.name}", length))
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith(root.name):
                        deferred.append((name, node.name, inner.module))
                        all_edges[name].update([inner.module] + [f"{inner.module}.{a.name}" for a in inner.names])
                    elif isinstance(inner, ast.Import):
                        deferred.extend((name, node.name, a.name) for a in inner.names if a.name.startswith(root.name))
        for node in tree.body:  # module-level imports only: the cycles that import order must resolve
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(root.name):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith(root.name)]
            edges[name].update(targets)
            all_edges[name].update(targets)
    known = set(modules)
    graph = {m: {t for t in targets if t in known and t != m} for m, targets in edges.items()}
    hidden = {m: {t for t in targets if t in known and t != m} for m, targets in all_edges.items()}
    return modules, long_functions, deferred, graph, hidden


def own_attributes(trees: dict[str, ast.Module]) -> set[str]:
    """Every attribute and method name a class of the package defines: methods and properties, class-level
    assignments, and ``self.name = ...`` in its methods (dunders left out: they are Python's protocols)."""
    names: set[str] = set()
    for tree in trees.values():
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for node in cls.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(node.name)
                elif isinstance(node, ast.Assign):
                    names.update(t.id for t in node.targets if isinstance(t, ast.Name))
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    names.add(node.target.id)
            for node in ast.walk(cls):
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
                for target in targets:
                    for t in ast.walk(target):
                        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                            names.add(t.attr)
    return {n for n in names if not (n.startswith("__") and n.endswith("__"))}


def own_exceptions(trees: dict[str, ast.Module]) -> set[str]:
    """The package's exception classes: those with a base named ``*Error`` / ``*Exception`` / ``*Warning`` or another
    of them (by name, to a fixed point)."""
    bases = {c.name: [ast.unparse(b).split(".")[-1] for b in c.bases]
             for tree in trees.values() for c in ast.walk(tree) if isinstance(c, ast.ClassDef)}
    found: set[str] = set()
    while True:
        more = {name for name, of in bases.items()
                if any(b.endswith(("Error", "Exception", "Warning")) or b in found for b in of)}
        if more <= found:
            return found
        found |= more


def imported_names(tree: ast.Module, package: str, leave_out: set[str] = frozenset()) -> set[str]:
    """The names a module binds by importing from the package, anywhere in it (classes, modules and their aliases),
    less ``leave_out``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == package):
            names.update(a.asname or a.name for a in node.names if a.name not in leave_out)
        elif isinstance(node, ast.Import):
            names.update(a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] == package)
    return names


class _ProbeFinder(ast.NodeVisitor):
    """The probe sites of one module, each as (function, line, call); ``function`` is the enclosing qualified name."""

    def __init__(self, attributes: set[str], imported: set[str], exceptions: set[str]) -> None:
        self.attributes, self.imported, self.exceptions = attributes, imported, exceptions
        self.scope: list[str] = []
        self.sites: list[tuple[str, int, str]] = []

    def _scoped(self, node) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def _own_class(self, node: ast.expr) -> bool:
        """``C`` or ``module.C`` imported from the package, not one of its exceptions."""
        if isinstance(node, ast.Attribute) and node.attr in self.exceptions:
            return False
        while isinstance(node, ast.Attribute):
            node = node.value
        return isinstance(node, ast.Name) and node.id in self.imported

    def _is_probe(self, node: ast.Call) -> bool:
        name, args = (node.func.id if isinstance(node.func, ast.Name) else None), node.args
        if name in ("getattr", "hasattr") and len(args) >= 2 and isinstance(args[1], ast.Constant):
            return args[1].value in self.attributes
        if name in ("isinstance", "issubclass") and len(args) == 2:
            return any(map(self._own_class, args[1].elts if isinstance(args[1], ast.Tuple) else [args[1]]))
        return False

    def visit_Call(self, node: ast.Call) -> None:
        if self._is_probe(node):
            call = ast.unparse(node)
            call = call if len(call) <= 90 else call[:87] + "..."
            self.sites.append((".".join(self.scope) or "<module>", node.lineno, call))
        self.generic_visit(node)


def probes(root: Path) -> list[tuple[str, str, int, str]]:
    """Probes on the package's own objects: (module, function, line, call) for every site (see the module notes)."""
    trees = {module_name(p, root): ast.parse(p.read_text()) for p in sorted(root.rglob("*.py"))}
    attributes, exceptions = own_attributes(trees), own_exceptions(trees)
    sites = []
    for module, tree in trees.items():
        finder = _ProbeFinder(attributes, imported_names(tree, root.name, exceptions), exceptions)
        finder.visit(tree)
        sites.extend((module, *site) for site in finder.sites)
    return sites


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1] / "lit_score"))
    root = Path(parser.parse_args().root)
    modules, long_functions, deferred, graph, hidden = scan(root)
    big = sorted(((n, m) for m, n in modules.items() if n > 300), reverse=True)
    print(f"modules: {len(modules)}; over 300 lines: {len(big)}")
    for n, m in big:
        print(f"  {n:5d}  {m}")
    print(f"functions over 60 lines: {len(long_functions)}")
    for name, n in sorted(long_functions, key=lambda x: -x[1]):
        print(f"  {n:5d}  {name}")
    found = cycles(graph)
    print(f"import cycles (module level): {len(found)}")
    for c in found:
        print("  " + " -> ".join(c))
    found = cycles(hidden)
    print(f"import cycles counting the imports deferred into functions: {len(found)}")
    for c in found:
        print("  " + " -> ".join(c))
    print(f"project imports deferred into function bodies: {len(deferred)}")
    for module, function, target in deferred:
        print(f"  {module}.{function}: {target}")
    found = probes(root)
    print(f"probes on own objects (getattr / hasattr of a package attribute, isinstance / issubclass of a package"
          f" class): {len(found)}")
    for module, function, line, call in found:
        print(f"  {module}.{function}:{line}: {call}")


if __name__ == "__main__":
    main()
