"""Forward-pass engines: one built Keras backbone run by TensorFlow or OpenVINO, in fp32, bf16 or int8.

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
    asked for), one stream, latency mode, one fixed batch shape, and as many
    threads as this process may use (:func:`usable_cores`), unpinned.
    Reruns are deterministic on one machine.
``openvino`` / ``int8``
    The converted model quantised after training by NNCF (``nncf.quantize``,
    its default preset) on calibration images the caller gives (the
    pipeline: a seeded sample of the dataset's own images, no labels), then
    compiled as above. Only OpenVINO runs it.

Both OpenVINO steps are public for other OpenVINO models, so that the
benchmarks' matrix products run under extraction's settings:
:func:`quantise_int8` and :func:`compile_openvino`.

Threads: OpenVINO's latency mode uses one thread per *physical* core and pins
its threads. On a virtual machine whose two logical CPUs are the two hardware
threads of one core, that is one thread against TensorFlow's two, and pinned
threads cannot move away from a neighbour's load; this is the likeliest reason
OpenVINO fp32 gained nothing on one such machine (not verified there: see
the README). The threads are therefore set to the usable logical CPUs and
pinning is turned off; ``info["threads"]`` records what OpenVINO used and
``info["kernels"]`` the kernels it picked (e.g. ``brgconv_avx512_f32``).

bf16 is offered only where the CPU has bf16 instructions (``avx512_bf16`` or
``amx_bf16``; for OpenVINO also its ``OPTIMIZATION_CAPABILITIES``); elsewhere
:class:`EngineUnavailableError` says why. int8 runs anywhere OpenVINO lists
``INT8``, but only CPUs with integer dot-product units (:data:`INT8_CPU_FLAGS`)
run it natively; elsewhere it is emulated with 16-bit intermediate sums that
can saturate. How far lower precision moves the features depends on the
network and the data: :mod:`cxrcluster.extraction_path` chooses the path per
machine and checks lower precision on the user's own images before using it.
TensorFlow fp32 is the reference and :func:`make_forward`'s default.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Engines, and the precisions each runs.
ENGINES = ("tensorflow", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")

#: CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

#: CPU flags of integer dot-product units (int8 multiply, 32-bit accumulate in one instruction).
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")

#: The pinned NNCF release (also in ``requirements.txt``), which quantises for OpenVINO.
NNCF_PIN = "nncf==3.4.0"

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
    if precision == "int8":
        if engine != "openvino":
            raise EngineUnavailableError("precision int8 runs on engine openvino only (quantised by NNCF); "
                                         f"engine {engine} runs fp32 or bf16")
        _nncf()
        caps = openvino_capabilities()
        if "INT8" not in caps:
            raise EngineUnavailableError(f"OpenVINO's CPU plugin does not list INT8 among its capabilities "
                                         f"({', '.join(caps)}). Use precision fp32.")


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
        caps = openvino_capabilities()
        if "BF16" not in caps:
            return False, f"OpenVINO's CPU plugin does not list BF16 among its capabilities ({', '.join(caps)})"
        return True, f"CPU flags {', '.join(found)}; OpenVINO capabilities {', '.join(caps)}"
    return True, f"CPU flags {', '.join(found)}"


def int8_support() -> tuple[bool, str]:
    """Whether this CPU has integer dot-product units for int8, and the evidence.

    int8 runs without them too (OpenVINO emulates it), but with 16-bit
    intermediate sums that can saturate, and often no faster.
    """
    flags = cpu_flags()
    if not flags:
        return False, "cannot read the CPU flags (/proc/cpuinfo), so int8 support is unknown"
    found = [f for f in INT8_CPU_FLAGS if f in flags]
    if not found:
        return False, f"the CPU has none of the integer dot-product flags {', '.join(INT8_CPU_FLAGS)}"
    return True, f"CPU flags {', '.join(found)}"


def openvino_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin reports it supports here (``OPTIMIZATION_CAPABILITIES``: FP32, BF16, INT8, ...)."""
    return list(_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def usable_cores() -> int:
    """Logical CPUs this process may run on (its affinity mask), the thread count given to OpenVINO."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def make_forward(model, preprocess: Callable, batch_size: int, input_size: int,
                 engine: str = "tensorflow", precision: str = "fp32", *,
                 calibration: np.ndarray | None = None, int8_dir: str | os.PathLike | None = None) -> Forward:
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
    precision : {"fp32", "bf16", "int8"}
    calibration : numpy.ndarray, optional
        For int8: images ``(n, input_size, input_size, 3)`` in 0-255 that NNCF
        collects activation ranges on (whole batches of ``batch_size``; a
        partial last batch is dropped). Not needed when ``int8_dir`` already
        holds the quantised model.
    int8_dir : path-like, optional
        For int8: a folder where the quantised model is kept
        (``model.xml``/``model.bin``); read when present, written (atomically)
        after quantising otherwise. The caller's key to it must name
        everything it depends on (model, weights, versions, calibration images).

    Returns
    -------
    Forward
        Callable from ``(n, input_size, input_size, 3)`` float32 images in
        0-255 to ``(n, feature_dim)`` float32 features.

    Raises
    ------
    ValueError
        Unknown engine or precision, a batch size below 1, or int8 without
        calibration images or a quantised model.
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
    converted = _openvino().convert_model(graph)
    if precision == "int8":
        converted = _quantised(converted, calibration, batch_size, int8_dir, info)
    return _openvino_forward(converted, precision, batch_size, input_size, info)


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


#: NNCF's settings for int8 (its defaults, named so that the provenance records them).
INT8_SETTINGS = {"preset": "PERFORMANCE (symmetric int8 weights and activations)",
                 "fast_bias_correction": True, "calibration": "whole batches of the calibration images"}


def _quantised(converted, calibration: np.ndarray | None, batch_size: int, int8_dir, info: dict):
    """The converted model quantised to int8 by NNCF, read from or saved to ``int8_dir``."""
    import shutil
    import tempfile

    ov, nncf = _openvino(), _nncf()
    folder = Path(int8_dir) if int8_dir is not None else None
    info.update(quantised_by=f"nncf {nncf.__version__}", quantisation=INT8_SETTINGS)
    if folder is not None and (folder / "model.xml").is_file() and (folder / "model.bin").is_file():
        info["int8_model"] = f"cached in {folder}"
        return ov.Core().read_model(folder / "model.xml")
    if calibration is None or len(calibration) < batch_size:
        raise ValueError(f"int8 needs at least one batch ({batch_size}) of calibration images, "
                         f"got {0 if calibration is None else len(calibration)}")
    whole = len(calibration) // batch_size * batch_size
    batches = [np.ascontiguousarray(calibration[i:i + batch_size], dtype=np.float32)
               for i in range(0, whole, batch_size)]
    quantised = quantise_int8(converted, batches)
    info.update(calibration_images=whole)
    if folder is not None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        try:
            ov.save_model(quantised, tmp / "model.xml", compress_to_fp16=False)
            if folder.exists():  # another run finished first: the same model, keep theirs
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        info["int8_model"] = f"quantised and saved to {folder}"
    else:
        info["int8_model"] = "quantised in memory"
    return quantised


def openvino_config(hint: str) -> dict:
    """OpenVINO's CPU settings for extraction: ``hint`` precision, one stream, every usable core, unpinned."""
    return {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": usable_cores(), "ENABLE_HYPER_THREADING": True, "ENABLE_CPU_PINNING": False}


#: OpenVINO's inference precision hint per precision (int8: the rest of the graph in f32).
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def quantise_int8(model, batches: Sequence[np.ndarray]):
    """An OpenVINO model quantised to int8 by NNCF as extraction's int8 path quantises it.

    ``nncf.quantize`` with its defaults (:data:`INT8_SETTINGS`), collecting
    activation ranges on every one of ``batches``; NNCF's per-operation INFO
    lines are silenced.

    Parameters
    ----------
    model : openvino.Model
        An fp32 model (``openvino.convert_model``'s, or one built with OpenVINO's opsets).
    batches : sequence of numpy.ndarray
        Calibration inputs, each of the model's input shape, float32.

    Returns
    -------
    openvino.Model
        The quantised model; compile it with :func:`compile_openvino` and ``"int8"``.

    Raises
    ------
    EngineUnavailableError
        OpenVINO or NNCF is not installed.
    """
    import logging

    _openvino()
    nncf = _nncf()
    batches = list(batches)
    logging.getLogger("nncf").setLevel(logging.WARNING)  # one INFO line per skipped operation otherwise
    return nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))


def compile_openvino(model, precision: str = "fp32"):
    """An OpenVINO model compiled for this CPU as extraction compiles it (:func:`openvino_config`).

    Parameters
    ----------
    model : openvino.Model
        fp32, or quantised by :func:`quantise_int8` for ``"int8"``.
    precision : {"fp32", "bf16", "int8"}
        Sets ``INFERENCE_PRECISION_HINT``: ``f32``, ``bf16``, and ``f32`` for
        int8 (the quantised operations run in int8, the rest of the graph in f32).

    Returns
    -------
    openvino.CompiledModel

    Raises
    ------
    ValueError
        Unknown precision.
    EngineUnavailableError
        OpenVINO is not installed, or it compiled the model in another
        precision than asked (it falls back silently where it cannot honour the hint).
    """
    if precision not in _HINTS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(_HINTS)}")
    ov = _openvino()
    hint = _HINTS[precision]
    compiled = ov.Core().compile_model(model, "CPU", openvino_config(hint))
    used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if used != hint:  # OpenVINO falls back silently where the hint cannot be honoured
        raise EngineUnavailableError(f"OpenVINO compiled the model in {used}, not {hint} as asked")
    return compiled


def _openvino_forward(converted, precision: str, batch_size: int, input_size: int, info: dict) -> Forward:
    ov = _openvino()
    hint = _HINTS[precision]
    compiled = compile_openvino(converted, precision)
    info.update(graph="tf.function of preprocess_input + model, converted by openvino.convert_model",
                openvino=ov.__version__.split("-")[0],
                inference_precision=hint,
                performance_hint="LATENCY",
                num_streams=int(compiled.get_property("NUM_STREAMS")),
                threads=int(compiled.get_property("INFERENCE_NUM_THREADS")),
                cpu_pinning=bool(compiled.get_property("ENABLE_CPU_PINNING")),
                kernels=kernel_summary(compiled))
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        # the output tensor is reused by the next call: copy it out
        return request.infer({0: x})[0].copy()

    return Forward("openvino", precision, batch_size, input_size, info, run)


def kernel_summary(compiled) -> dict[str, int]:
    """How many layers of a compiled OpenVINO model run on each kind of kernel, most frequent first.

    Constants, inputs, outputs and reshapes (``unknown``) are left out; what
    remains says which instruction set the heavy layers use, e.g.
    ``brgconv_avx2_1x1_f32`` or ``brgconv_avx512_amx_bf16``.
    """
    from collections import Counter

    kinds = Counter()
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        kind = rt["primitiveType"].astype(str) if "primitiveType" in rt else "unknown"
        if not kind.startswith("unknown"):
            kinds[kind] += 1
    return dict(kinds.most_common())


def _nncf():
    try:
        import nncf
    except ImportError:
        raise EngineUnavailableError(
            f"precision int8 needs the nncf package, which is not installed: pip install {NNCF_PIN} "
            "(it is in requirements.txt; `make venv` installs it)") from None
    return nncf


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
