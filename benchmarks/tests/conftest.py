"""The project's shared test settings (``tests/conftest.py``), imported rather than copied.

pytest loads ``tests/conftest.py`` for ``tests/`` only; importing it here applies what it sets at
import to these tests as well, before any of them imports Keras: an offline ``KERAS_HOME`` whose
``models/`` links to ``../shared``'s weights, and TensorFlow's log level. ``tests`` (no
``__init__.py``) is found as a namespace package from the project root, which pyproject.toml's
``pythonpath`` puts on ``sys.path``.

The tiers' hook comes along too, so that a heavy tier's marker implies ``slow`` when these tests are
collected on their own.
"""

from tests.conftest import (  # noqa: F401 (the hook is found by its name)
    HAVE_WEIGHTS,
    KERAS_HOME,
    SAMPLE_DIR,
    SHARED,
    needs_sample,
    needs_weights,
    pytest_collection_modifyitems,
)

__all__ = ["HAVE_WEIGHTS", "KERAS_HOME", "SAMPLE_DIR", "SHARED", "needs_sample", "needs_weights"]
