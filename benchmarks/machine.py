"""The machine's description in the report: CPU, cores, flags, bf16 support, thread settings, versions.

The CPU's model, cores, instruction-set flags, AMX and memory come from
:func:`cxrcluster.engines.describe_cpu`; :func:`describe_machine` adds the
platform, library versions, each engine's bf16 support and the environment
variables of :data:`THREAD_ENV` that are set. The load average is read by the
command line (:func:`benchmarks.cli.main`) at the start and the end.
"""

from __future__ import annotations

import contextlib
import os
import platform

import numpy as np

from cxrcluster import engines

#: Environment variables that change how libraries use threads, recorded in the report.
THREAD_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def describe_machine() -> dict:
    """CPU, cores, relevant flags, memory, load and library versions."""
    import PIL
    import sklearn

    info = engines.describe_cpu()
    versions = {"python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__,
                "pillow": PIL.__version__}
    with contextlib.suppress(ImportError):
        import keras
        import tensorflow as tf

        versions.update(tensorflow=tf.__version__, keras=keras.__version__)
    versions["openvino"] = engines.openvino_version() or "not installed"
    info.update(platform=platform.platform(), versions=versions,
                environment={k: os.environ[k] for k in THREAD_ENV if k in os.environ})
    bf16 = {}
    for engine in engines.ENGINES:
        try:
            bf16[engine] = engines.bf16_support(engine)[1]
        except engines.EngineUnavailableError as exc:
            bf16[engine] = str(exc)
    info["bf16"] = bf16
    return info
