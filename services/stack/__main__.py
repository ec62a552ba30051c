"""`python -m services.stack up|down|status|logs [COMPONENT...]`: the local stack (docs/stack.md)."""
from __future__ import annotations

import sys

from services.stack.cli import main

if __name__ == "__main__":
    sys.exit(main())
