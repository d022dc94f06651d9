"""Forward-pass engines: one built Keras backbone run by TensorFlow or OpenVINO, in fp32 or bf16.

:func:`make_forward` turns a built backbone and its family's ``preprocess_input``
into a :class:`Forward`, a callable from a batch of images (float32, 0-255,
``(n, size, size, 3)``) to their pooled features (float32, ``(n, dim)``).
Every engine runs the same traced function, ``model(preprocess_input(x))``,
so the preprocessing is applied identically on every path, in float32:

``tensorflow`` / ``fp32``
    The reference: a ``tf.function`` with one fixed batch shape (the last
    batch is padded), so every pass uses one compiled graph and a rerun on the
    same machine gives byte-identical features.
``tensorflow`` / ``bf16``
    The same network cloned under Keras' ``mixed_bfloat16`` policy (bfloat16
    compute, float32 weights, batch normalisation and global pooling in float32),
    with the same weights.
``openvino`` / ``fp32`` and ``bf16``
    The same ``tf.function`` converted by ``openvino.convert_model`` and
    compiled for the CPU with ``INFERENCE_PRECISION_HINT`` set explicitly (on
    CPUs with bf16 units OpenVINO's own default is bf16, so fp32 must be
    asked for), one stream, latency mode, one fixed batch shape. Reruns are
    deterministic on one machine.

bf16 is offered only where the CPU has bf16 instructions (``avx512_bf16`` or
``amx_bf16``; for OpenVINO also its ``OPTIMIZATION_CAPABILITIES``); elsewhere
:class:`EngineUnavailableError` says why. bf16 keeps 8 bits of mantissa: how
far its features move from fp32 depends on the network (the benchmark,
``python -m cxrcluster.bench``, measures it per model; MobileNetV2-0.35's
ImageNet features fall to a cosine of 0.95 for some images), so it is never a
default. TensorFlow fp32 is the reference and :func:`make_forward`'s default;
OpenVINO fp32 gives the same features to about 1e-5 of the largest, faster,
and is what the pipeline runs by default (``make``'s ``ENGINE``, notebook 02's
``engine``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Engines, and the precisions each runs.
ENGINES = ("tensorflow", "openvino")
PRECISIONS = ("fp32", "bf16")

#: CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

#: The pinned OpenVINO release (also in ``requirements.txt``).
OPENVINO_PIN = "openvino==2026.4.1"

#: Layers left in float32 by the TensorFlow bf16 path: input scaling and the pooling
#: that produces the features (cheap, and a bfloat16 mean of many values loses digits).
_FLOAT32_LAYERS = ("InputLayer", "Rescaling", "Normalization", "GlobalAveragePooling2D",
                   "GlobalAveragePooling1D", "GlobalMaxPooling2D")


class EngineUnavailableError(RuntimeError):
    """The engine or precision asked for cannot run here (package missing, no bf16 on this CPU)."""


@dataclass
class Forward:
    """A compiled forward pass: images in 0-255 to pooled float32 features.

    Call it with a float32 array ``(n, size, size, 3)``; batches smaller than
    ``batch_size`` are padded with zeros (one input shape, one compiled graph,
    identical numerics for every batch), larger ones are run in chunks.

    Attributes
    ----------
    engine, precision : str
        As given to :func:`make_forward`.
    batch_size, input_size : int
        The fixed batch and square input size.
    info : dict
        What to record in provenance: engine, precision, and the settings
        actually in effect (library version, inference precision, threads).
    """

    engine: str
    precision: str
    batch_size: int
    input_size: int
    info: dict
    _run: Callable[[np.ndarray], np.ndarray] = field(repr=False)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images, dtype=np.float32)
        expected = (self.input_size, self.input_size, 3)
        if x.ndim != 4 or x.shape[1:] != expected:
            raise ValueError(f"expected a batch of shape (n, {', '.join(map(str, expected))}), got {x.shape}")
        outs = []
        for start in range(0, len(x), self.batch_size):
            chunk = x[start:start + self.batch_size]
            n = len(chunk)
            if n < self.batch_size:
                chunk = np.concatenate([chunk, np.zeros((self.batch_size - n,) + expected, np.float32)])
            outs.append(np.asarray(self._run(chunk), dtype=np.float32)[:n])
        if not outs:
            raise ValueError("empty batch")
        return outs[0] if len(outs) == 1 else np.concatenate(outs)


def check_engine(engine: str, precision: str) -> None:
    """Refuse an unknown engine or precision, or one this machine cannot run.

    Raises
    ------
    ValueError
        Unknown ``engine`` or ``precision`` (the message lists the known ones).
    EngineUnavailableError
        OpenVINO is not installed, or bf16 is asked for on a CPU without bf16
        instructions.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if engine == "openvino":
        _openvino()
    if precision == "bf16":
        ok, reason = bf16_support(engine)
        if not ok:
            raise EngineUnavailableError(
                f"precision bf16 is not available with engine {engine} on this machine: {reason}. "
                "Use precision fp32.")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def bf16_support(engine: str = "tensorflow") -> tuple[bool, str]:
    """Whether this CPU runs bfloat16 natively for ``engine``, and the evidence.

    Returns
    -------
    supported : bool
    reason : str
        The flags found (``avx512_bf16``, ``amx_bf16``), or why not.
    """
    flags = cpu_flags()
    found = [f for f in BF16_CPU_FLAGS if f in flags]
    if not flags:
        return False, "cannot read the CPU flags (/proc/cpuinfo), so bf16 support is unknown"
    if not found:
        return False, f"the CPU has none of the bf16 instruction flags {', '.join(BF16_CPU_FLAGS)}"
    if engine == "openvino":
        caps = _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in caps:
            return False, f"OpenVINO's CPU plugin does not list BF16 among its capabilities ({', '.join(caps)})"
        return True, f"CPU flags {', '.join(found)}; OpenVINO capabilities {', '.join(caps)}"
    return True, f"CPU flags {', '.join(found)}"


def make_forward(model, preprocess: Callable, batch_size: int, input_size: int,
                 engine: str = "tensorflow", precision: str = "fp32") -> Forward:
    """Compile a backbone's forward pass for one engine and precision.

    Parameters
    ----------
    model : keras.Model
        A built backbone (:func:`cxrcluster.models.build_backbone`), mapping
        preprocessed images to pooled features.
    preprocess : callable
        Its family's ``keras.applications.<family>.preprocess_input``; traced
        into the same graph on every engine.
    batch_size : int
        The one batch shape compiled.
    input_size : int
        Square input size of the model.
    engine : {"tensorflow", "openvino"}
    precision : {"fp32", "bf16"}

    Returns
    -------
    Forward
        Callable from ``(n, input_size, input_size, 3)`` float32 images in
        0-255 to ``(n, feature_dim)`` float32 features.

    Raises
    ------
    ValueError
        Unknown engine or precision, or a batch size below 1.
    EngineUnavailableError
        See :func:`check_engine`.
    """
    check_engine(engine, precision)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if engine == "tensorflow" and precision == "bf16":
        model = _mixed_bfloat16_clone(model)
    graph = _traced(model, preprocess, batch_size, input_size,
                    cast_output=engine == "tensorflow" and precision == "bf16")
    info = {"engine": engine, "precision": precision, "batch_size": batch_size}
    if engine == "tensorflow":
        import tensorflow as tf

        info.update(graph="tf.function of preprocess_input + model, one fixed batch shape",
                    dtype_policy="mixed_bfloat16" if precision == "bf16" else "float32",
                    tensorflow=tf.__version__)

        def run(x: np.ndarray) -> np.ndarray:
            return graph(tf.constant(x)).numpy()

        return Forward(engine, precision, batch_size, input_size, info, run)
    return _openvino_forward(graph, precision, batch_size, input_size, info)


def _traced(model, preprocess: Callable, batch_size: int, input_size: int, cast_output: bool):
    import tensorflow as tf

    spec = tf.TensorSpec((batch_size, input_size, input_size, 3), tf.float32)

    @tf.function(input_signature=[spec], reduce_retracing=True)
    def forward(x):
        y = model(preprocess(x), training=False)
        return tf.cast(y, tf.float32) if cast_output else y

    return forward


def _mixed_bfloat16_clone(model):
    """The same network and weights with every compute-heavy layer under ``mixed_bfloat16``."""
    import keras

    def clone_layer(layer):
        config = layer.get_config()
        if type(layer).__name__ not in _FLOAT32_LAYERS and "dtype" in config:
            config["dtype"] = "mixed_bfloat16"
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def _openvino_forward(graph, precision: str, batch_size: int, input_size: int, info: dict) -> Forward:
    ov = _openvino()
    core = ov.Core()
    converted = ov.convert_model(graph)
    hint = {"fp32": "f32", "bf16": "bf16"}[precision]
    compiled = core.compile_model(converted, "CPU", {
        "INFERENCE_PRECISION_HINT": hint,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": "1",
    })
    used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if used != hint:  # OpenVINO falls back silently where the hint cannot be honoured
        raise EngineUnavailableError(f"OpenVINO compiled the model in {used}, not {hint} as asked")
    info.update(graph="tf.function of preprocess_input + model, converted by openvino.convert_model",
                openvino=ov.__version__.split("-")[0],
                inference_precision=hint,
                performance_hint="LATENCY",
                num_streams=int(compiled.get_property("NUM_STREAMS")),
                threads=int(compiled.get_property("INFERENCE_NUM_THREADS")))
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        # the output tensor is reused by the next call: copy it out
        return request.infer({0: x})[0].copy()

    return Forward("openvino", precision, batch_size, input_size, info, run)


def _openvino():
    try:
        import openvino
    except ImportError:
        raise EngineUnavailableError(
            f"engine openvino needs the openvino package, which is not installed: pip install {OPENVINO_PIN} "
            "(it is in requirements.txt; `make venv` installs it)") from None
    return openvino


def openvino_version() -> str | None:
    """The installed OpenVINO version, or None."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__.split("-")[0]


def describe_cpu() -> dict:
    """CPU model, logical cores, the flags that matter for inference speed, and memory."""
    model_name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        import platform

        model_name = platform.processor()
    flags = cpu_flags()
    relevant = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma", "avx_vnni"))
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpu": model_name or "unknown", "logical_cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "flags": relevant, "amx": any(f.startswith("amx") for f in flags),
            "memory_gib": memory}
