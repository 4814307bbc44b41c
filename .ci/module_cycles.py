#!/usr/bin/env python3
"""Fails when the crate's top-level modules depend on each other in a cycle.

A node is a top-level module (`src/x.rs` or the folder `src/x/`); an edge is any path
`crate::x::…` (in a `use` or in code) from a file of one module to another. Dependencies must
point one way (api and worker above the core, the core above the store, the store above the
leaves), so every strongly connected component must be a single module. Prints the graph's
edges with --edges.
"""

import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
ROOTS = {"lib.rs", "main.rs"}


def module_of(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC)
    if len(rel.parts) > 1:
        return rel.parts[0]
    return rel.stem


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def graph():
    modules = {module_of(p) for p in SRC.rglob("*.rs") if p.name not in ROOTS}
    edges = {m: set() for m in modules}
    for path in SRC.rglob("*.rs"):
        if path.name in ROOTS and path.parent == SRC:
            continue
        src = module_of(path)
        text = strip_comments(path.read_text())
        for target in re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text):
            if target in modules and target != src:
                edges[src].add(target)
        # `use crate::{a, b::c}` groups.
        for group in re.findall(r"\buse\s+crate::\{([^;]*)\}", text, flags=re.S):
            for target in re.findall(r"(?:^|[,{\s])([a-z_][a-z0-9_]*)\s*(?:::|,|}|$)", group):
                if target in modules and target != src:
                    edges[src].add(target)
    return edges


def components(edges):
    """Tarjan's strongly connected components."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    edges = graph()
    if "--edges" in sys.argv:
        for m in sorted(edges):
            print(f"{m} -> {', '.join(sorted(edges[m])) or '-'}")
    cycles = [c for c in components(edges) if len(c) > 1]
    if cycles:
        for c in cycles:
            print("module cycle: " + " <-> ".join(c), file=sys.stderr)
        sys.exit(1)
    print(f"module graph: {len(edges)} top-level modules, no cycle")


if __name__ == "__main__":
    main()
