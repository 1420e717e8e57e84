"""The domain's modules import each other in one direction: no circle, TYPE_CHECKING imports included."""

from __future__ import annotations

import grimp


def _cycle_through(graph: grimp.ImportGraph, start: str, modules: set[str]) -> list[str] | None:
    """A path of imports from `start` back to itself, if there is one."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        module, path = stack.pop()
        for imported in graph.find_modules_directly_imported_by(module) & modules:
            if imported == start:
                return [*path, start]
            if imported not in seen:
                seen.add(imported)
                stack.append((imported, [*path, imported]))
    return None


def test_no_domain_module_imports_itself_in_a_circle() -> None:
    graph = grimp.build_graph("domain", include_external_packages=False)
    modules = {m for m in graph.modules if m != "domain"}
    cycles = [cycle for m in sorted(modules) if (cycle := _cycle_through(graph, m, modules))]
    assert not cycles, "import circles in the domain:\n" + "\n".join(" -> ".join(c) for c in cycles)
