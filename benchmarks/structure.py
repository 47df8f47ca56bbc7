"""The shape of the package, as issue 24 counts it: modules over 300 lines, functions over 60 lines, import cycles
between lit-score modules (module-level imports), and project imports deferred into function bodies.

    python benchmarks/structure.py [--root lit_score]
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


if __name__ == "__main__":
    main()
