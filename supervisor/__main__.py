"""Entry point of the supervisor (``python -m supervisor`` / ``preview-supervisor``)."""

from __future__ import annotations

import sys


def main() -> int:
    print("supervisor: not implemented yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
