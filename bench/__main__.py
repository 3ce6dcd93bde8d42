"""Run every ``bench/bench_*.py`` module's ``main()``, in name order."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench


def main() -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    only = set(sys.argv[1:])  # optional: python -m bench bench_inference
    failed: list[str] = []
    for name in names:
        if only and name not in only:
            continue
        print(f"=== {name} ===", flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            module.main()
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            failed.append(name)
            print(f"BENCH FAILED {name}: {type(exc).__name__}: {exc}", flush=True)
        print(f"=== {name} done in {time.perf_counter() - started:.1f} s ===\n", flush=True)
    if only - set(names):
        print(f"BENCH FAILED: no benchmark named {', '.join(sorted(only - set(names)))} (have {', '.join(names)})", flush=True)
        return 1
    if failed:
        print(f"BENCH FAILED: {', '.join(failed)} (their figures above, if any, are not valid)", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
