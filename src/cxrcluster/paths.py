"""One project root from which every default path is derived.

Notebooks run from ``notebooks/`` in Jupyter and from the project root under
papermill; resolving their relative parameters against :data:`PROJECT_ROOT`
makes both give the same files.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root (``src/cxrcluster/paths.py`` -> two levels up from ``src``).
PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Where ``make all`` puts the generated synthetic demo data by default.
DEMO_DATA_DIR = PROJECT_ROOT / "data" / "demo"


def resolve(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Return ``path`` as an absolute path, relative ones taken from ``root``.

    Parameters
    ----------
    path : path-like
        An absolute path, or one relative to ``root``.
    root : path-like, optional
        Base folder for relative paths; :data:`PROJECT_ROOT` by default.

    Returns
    -------
    pathlib.Path
        Normalised (``a/../b`` becomes ``b``) without resolving links.
    """
    path = Path(path).expanduser()
    if not path.is_absolute():
        path = Path(root or PROJECT_ROOT) / path
    return Path(os.path.normpath(path))
