"""``python -m benchmarks [name ...]``: run benchmark modules (default: all) and print a table.

Each module ``benchmarks/bench_<name>.py`` defines ``run() -> list[Row]``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

from .common import print_table


def main(argv: list[str]) -> int:
    names = argv or sorted(
        m.name[len("bench_") :]
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name.startswith("bench_")
    )
    rows = []
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        print(f"running {name} …", file=sys.stderr, flush=True)
        rows += module.run()
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
