"""Puts the repository root on sys.path, so that a bench script run as
`.venv/bin/python bench/bench_x.py` (which puts only bench/ there) can import gateway,
shared, tests and bench. Each script's first import is `import _root`."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
