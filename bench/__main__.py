"""Run every benchmark module (bench/bench_*.py): `python -m bench [name ...] [--option ...]`.

Options (from the first argument starting with ``-``) go to the selected benchmarks whose ``run``
takes an argument list, e.g. ``python -m bench scale --n 100``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
import time

import bench


def main(argv: list[str]) -> int:
    split = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    wanted_names, options = argv[:split], argv[split:]
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    wanted = [n for n in names if not wanted_names or any(a in n for a in wanted_names)]
    for name in wanted:
        mod = importlib.import_module(f"bench.{name}")
        print(f"== {name}: {(mod.__doc__ or '').strip().splitlines()[0]}", flush=True)
        t0 = time.perf_counter()
        if inspect.signature(mod.run).parameters:
            mod.run(options)
        elif options:
            print(f"   (takes no options: {' '.join(options)} ignored)")
            mod.run()
        else:
            mod.run()
        print(f"   ({time.perf_counter() - t0:.1f}s)\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
