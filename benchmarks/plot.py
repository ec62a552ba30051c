"""matplotlib for the benchmarks' PNGs, headless; None (and a note) where it is not installed."""
from __future__ import annotations

import sys


def pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG written", file=sys.stderr)
        return None
    return plt
