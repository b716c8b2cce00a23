"""Dependency cycles among the services of a cast, found before anything is sent to runed."""

from __future__ import annotations

from typing import Any


def dependency_cycles(services: list[Any]) -> list[list[str]]:
    """Service dependency cycles among ``services`` (as ``ns/name`` paths)."""
    graph: dict[str, list[str]] = {}
    for s in services:
        key = f"{s.namespace}/{s.name}"
        graph[key] = [f"{d.namespace or s.namespace}/{d.service}" for d in s.dependencies if d.service]
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, []):
            if state.get(m) == 1:
                cycles.append([*stack[stack.index(m) :], m])
            elif m in graph and not state.get(m):
                visit(m)
        stack.pop()
        state[n] = 2

    for n in graph:
        if not state.get(n):
            visit(n)
    return cycles
