"""``python -m echo_lab.broker [--host H] [--port P] [--token T] [--redis URL]``."""

from __future__ import annotations

import sys

from .server import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
