"""``python -m echo_lab`` runs the ``echo-lab`` command."""

from .cli import main

raise SystemExit(main())
