"""The machine's measured matrix-multiply throughput, and how much of it a backbone's forward pass reaches.

:func:`bench_gemm` times two pieces of dense work through OpenVINO, compiled
as the extraction paths are (:func:`cxrcluster.engines.compile_openvino`:
every usable core, unpinned), in fp32 and in int8 (quantised by NNCF as
extraction's int8 is, :func:`cxrcluster.engines.quantise_int8`, so that
OpenVINO runs its int8 kernels): one square matrix product (``matmul``) and
one 3x3 convolution of a batch of 32 feature maps (``conv3x3``, the implicit
GEMM that CNNs spend their time in; OpenVINO's convolution kernels can outrun
its matrix product, 192 against 180 GFLOP/s on a 2-core AVX2 EPYC). The
larger of the two, in GFLOP/s (two operations per multiply-add), is what this
CPU sustains on the friendliest work there is. :func:`model_flops` counts a
Keras backbone's multiply-adds per image (convolutions and dense layers, the
work that dominates), so that a path's forward images/s times that count,
divided by the GEMM figure, is the share of the machine the path uses.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.progress import log
from cxrcluster import engines

#: Side of the square matrices multiplied.
GEMM_N = 1024


def _work(kind: str, n: int):
    """An OpenVINO model of ``kind`` (``matmul`` or ``conv3x3``), its input, and its operations."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    if kind == "matmul":
        a = ops.parameter([n, n], np.float32, name="a")
        b = ops.constant(rng.standard_normal((n, n)).astype(np.float32))
        x = rng.standard_normal((n, n)).astype(np.float32)
        return ov.Model([ops.matmul(a, b, False, False)], [a], kind), x, 2.0 * n**3
    batch, channels, side = 32, 256, 28
    a = ops.parameter([batch, channels, side, side], np.float32, name="a")
    w = ops.constant(rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.05)
    x = rng.standard_normal((batch, channels, side, side)).astype(np.float32)
    model = ov.Model([ops.convolution(a, w, [1, 1], [1, 1], [1, 1], [1, 1])], [a], kind)
    return model, x, 2.0 * batch * side * side * channels * channels * 9


def bench_gemm(precisions: tuple[str, ...] = ("fp32", "int8"), n: int = GEMM_N, repeats: int = 5) -> list[dict]:
    """GFLOP/s of each kind of dense work in each precision (rows of the ``gemm`` section).

    ``n`` is the side of the matrix product.

    int8 is measured on every CPU; its row says whether the CPU has integer
    dot-product units (:func:`cxrcluster.engines.int8_support`) or emulates them.
    """
    engines.check_engine("openvino", "fp32")  # says how to install OpenVINO when it is missing
    rows = []
    for precision, kind in [(p, k) for p in precisions for k in ("matmul", "conv3x3")]:
        model, x, flops = _work(kind, n)
        note = ""
        if precision == "int8":
            model = engines.quantise_int8(model, [x, x * 0.5])
            native, why = engines.int8_support()
            note = ("native: " if native else "emulated (no integer dot-product units): ") + why
        compiled = engines.compile_openvino(model, precision)
        request = compiled.create_infer_request()
        request.infer({0: x})
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(4):
                request.infer({0: x})
            times.append((time.perf_counter() - start) / 4)
        seconds = float(np.median(times))
        gflops = flops / seconds / 1e9
        kernels = ", ".join(f"{k} {v}" for k, v in engines.kernel_summary(compiled).items())
        log(f"{kind} {precision}: {gflops:.0f} GFLOP/s ({kernels})")
        rows.append({"section": "gemm", "path": f"openvino-{precision}", "algorithm": kind, "engine": "openvino",
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
