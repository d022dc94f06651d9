"""Progress lines the benchmark prints as it goes, each stamped with the time of day."""

from __future__ import annotations

import time


def log(message: str) -> None:
    """Print a timestamped progress line."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
