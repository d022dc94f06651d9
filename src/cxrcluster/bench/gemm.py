"""The machine's measured matrix-multiply throughput, and how much of it a backbone's forward pass reaches.

:func:`bench_gemm` times one square matrix product through OpenVINO, compiled
as the extraction paths are (:func:`cxrcluster.engines.make_forward`'s
settings: every usable core, unpinned), in fp32 and in int8 (the product
quantised by NNCF, so that OpenVINO runs its int8 kernels). The result, in
GFLOP/s (two operations per multiply-add), is what this CPU sustains on the
friendliest work there is. :func:`model_flops` counts a Keras backbone's
multiply-adds per image (convolutions and dense layers, the work that
dominates), so that a path's forward images/s times that count, divided by
the GEMM figure, is the share of the machine the path uses.
"""

from __future__ import annotations

import time

import numpy as np

from cxrcluster import engines
from cxrcluster.bench.progress import log

#: Side of the square matrices multiplied.
GEMM_N = 1024


def _matmul_model(n: int):
    import openvino as ov
    import openvino.opset13 as ops

    a = ops.parameter([n, n], np.float32, name="a")
    b = ops.constant(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
    return ov.Model([ops.matmul(a, b, False, False)], [a], "gemm")


def bench_gemm(precisions: tuple[str, ...] = ("fp32", "int8"), n: int = GEMM_N, repeats: int = 5) -> list[dict]:
    """GFLOP/s of an ``n`` x ``n`` x ``n`` product in each precision (rows of the ``gemm`` section).

    int8 is measured on every CPU; its row says whether the CPU has integer
    dot-product units (:func:`cxrcluster.engines.int8_support`) or emulates them.
    """
    ov = engines._openvino()
    rows = []
    x = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
    for precision in precisions:
        model = _matmul_model(n)
        note = ""
        if precision == "int8":
            nncf = engines._nncf()
            import logging

            logging.getLogger("nncf").setLevel(logging.WARNING)
            model = nncf.quantize(model, nncf.Dataset([x, x * 0.5]), subset_size=2)
            native, why = engines.int8_support()
            note = ("native: " if native else "emulated (no integer dot-product units): ") + why
        hint = "bf16" if precision == "bf16" else "f32"
        compiled = ov.Core().compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": engines.usable_cores(), "ENABLE_HYPER_THREADING": True,
            "ENABLE_CPU_PINNING": False})
        request = compiled.create_infer_request()
        request.infer({0: x})
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(4):
                request.infer({0: x})
            times.append((time.perf_counter() - start) / 4)
        seconds = float(np.median(times))
        gflops = 2 * n**3 / seconds / 1e9
        kernels = ", ".join(f"{k} {v}" for k, v in engines.kernel_summary(compiled).items())
        log(f"GEMM {n}x{n}x{n} {precision}: {gflops:.0f} GFLOP/s ({kernels})")
        rows.append({"section": "gemm", "path": f"openvino-{precision}", "engine": "openvino",
                     "precision": precision, "n": n, "repeats": repeats, "seconds": round(seconds, 5),
                     "gflops": round(gflops, 1), "status": "ok",
                     "note": "; ".join(filter(None, [note, f"kernels {kernels}",
                                                     f"{engines.usable_cores()} threads"]))})
    return rows


def model_flops(model) -> float:
    """Floating-point operations per image of a Keras backbone's convolutions and dense layers (2 per multiply-add)."""
    macs = 0.0
    for layer in _layers(model):
        kind = type(layer).__name__
        try:
            out_shape = tuple(layer.output.shape)
            in_shape = tuple(layer.input.shape)
        except (AttributeError, ValueError):
            continue
        if kind == "Conv2D":
            kh, kw = layer.kernel_size
            groups = getattr(layer, "groups", 1) or 1
            macs += np.prod(out_shape[1:]) * kh * kw * in_shape[-1] / groups
        elif kind == "DepthwiseConv2D":
            kh, kw = layer.kernel_size
            macs += np.prod(out_shape[1:]) * kh * kw
        elif kind == "SeparableConv2D":
            kh, kw = layer.kernel_size
            depthwise_out = np.prod(out_shape[1:3]) * in_shape[-1] * layer.depth_multiplier
            macs += depthwise_out * kh * kw + np.prod(out_shape[1:3]) * in_shape[-1] * layer.depth_multiplier \
                * out_shape[-1]
        elif kind == "Dense":
            macs += np.prod(in_shape[1:]) * out_shape[-1]
    return float(2 * macs)


def _layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _layers(layer)
        else:
            yield layer
