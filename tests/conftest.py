"""Shared fixtures: where ../shared is, an offline Keras cache that points at it, and the test tiers.

The tiers (README: tests). Every test is in the **unit** tier unless a marker puts it in a heavier one:
``notebook`` (executes notebooks in a kernel), ``e2e`` (runs ``make`` end to end), ``dask`` (starts
scheduler and worker processes), ``int8`` (quantises a network with NNCF), ``shared`` (reads the real
images or weights of ``../shared``: :data:`needs_sample`, :data:`needs_weights`), or ``slow`` itself
(builds full-size networks, fits full suites, or takes more than a few seconds for another reason).
Every test of a heavy tier is also marked ``slow`` here, so that ``-m "not slow"`` (``make test-fast``)
is the unit tier.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrcluster.paths import PROJECT_ROOT

SHARED = Path(os.environ.get("CXR_SHARED", PROJECT_ROOT.parent / "shared"))
SAMPLE_DIR = SHARED / "data" / "cxr-sample"
WEIGHTS_MODELS_DIR = SHARED / "weights" / "keras" / "models"

#: Markers of the heavy tiers; each implies ``slow`` (:func:`pytest_collection_modifyitems`).
HEAVY_TIERS = ("notebook", "e2e", "dask", "int8", "shared")


#: The longest test files, longest first: collected first, so that with pytest-xdist's one file to a
#: process (``--dist loadfile``) the longest starts at once rather than last, while the other process
#: works through the rest (it ran last, alphabetically, with the other process idle).
LONGEST_FIRST = ("test_pipeline.py", "test_robustness.py", "test_executor.py", "test_notebooks.py", "test_bench.py",
                 "test_clustering.py")


def pytest_collection_modifyitems(items):
    for item in items:
        if any(item.get_closest_marker(tier) for tier in HEAVY_TIERS):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a file is kept


def _needs_shared(available: bool, reason: str):
    """A decorator: the test is in the ``shared`` tier, and skips with ``reason`` when ``../shared`` lacks it."""
    skip = pytest.mark.skipif(not available, reason=reason)

    def mark(test):
        return pytest.mark.shared(skip(test))
    return mark


needs_sample = _needs_shared(SAMPLE_DIR.is_dir(),
                             f"real chest X-ray sample not found at {SAMPLE_DIR} (../shared absent)")


HAVE_WEIGHTS = (WEIGHTS_MODELS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5").is_file()


def _offline_keras_home() -> str | None:
    """A scratch KERAS_HOME whose ``models/`` links to the shared weights.

    Keras reads KERAS_HOME once, at import, and writes its ``keras.json`` there;
    a scratch folder with a link keeps ``../shared`` untouched while weights load
    through Keras' own cache lookup, exactly as after a download. Set before any
    test imports Keras.
    """
    if not HAVE_WEIGHTS or os.environ.get("KERAS_HOME"):
        return os.environ.get("KERAS_HOME")
    home = Path(tempfile.mkdtemp(prefix="keras_home_"))
    (home / "models").symlink_to(WEIGHTS_MODELS_DIR, target_is_directory=True)
    os.environ["KERAS_HOME"] = str(home)
    return str(home)


KERAS_HOME = _offline_keras_home()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
needs_weights = _needs_shared(
    HAVE_WEIGHTS, f"MobileNetV2-0.35 ImageNet weights not found in {WEIGHTS_MODELS_DIR} (../shared absent)")


#: A hand-written results table of two models x three algorithms. The failed run has the lowest
#: change: it must neither be drawn nor chosen as best; DBSCAN and Spectral tie for ResNet50.
HAND_MADE_RESULTS = pd.DataFrame({
    "model": ["ResNet50", "ResNet50", "ResNet50", "VGG16", "VGG16", "VGG16"],
    "clustering": ["KMeans", "DBSCAN", "Spectral", "KMeans", "DBSCAN", "Spectral"],
    "label_percentage_change": [30.0, 12.5, 12.5, 41.25, np.nan, 1.0],
    "ari": [0.2, 0.31, 0.45, 0.1, np.nan, 0.9],
    "wall_time_s": [0.5, 2.0, 40.0, 0.0, np.nan, 3.0],
    "status": ["ok", "ok", "ok", "ok", "skipped: too few points", "failed: out of memory"],
})
