"""Synthetic demo data: small, deterministic, and labelled synthetic everywhere.

The demo set exists so that ``make all`` runs end to end on a fresh machine
without any download. It is *not* evidence of anything about chest X-rays.
Each image is a crude radiograph-like drawing: a bright body with two dark lung
fields, a spine and ribs. The classes differ in ways a CNN can pick up:

* ``NORMAL``: clear lung fields;
* ``PNEUMONIA``: one or two dense, bright, lobar patches in one lung;
* ``COVID``: many faint, diffuse ground-glass blotches in the lower and outer
  zones of both lungs.

Run ``python -m cxrcluster.demo OUT_DIR`` to write it (``--per-class N``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("COVID", "NORMAL", "PNEUMONIA")

#: Marker file written at the root of the demo folder; its presence is how the
#: pipeline knows (and says) that the data is synthetic.
MARKER = "SYNTHETIC.md"

MARKER_TEXT = """# SYNTHETIC DEMO DATA

Every image in this folder was drawn by `cxrcluster.demo` from a fixed seed.
None of them is a chest X-ray. Results computed on them show that the pipeline
runs; they are not evidence of anything about COVID, pneumonia or normal lungs.
"""


def _blob(yy, xx, cy, cx, ry, rx):
    return np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))


def synthetic_xray(label: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """Draw one synthetic radiograph-like image.

    Parameters
    ----------
    label : {"COVID", "NORMAL", "PNEUMONIA"}
        The class to draw.
    rng : numpy.random.Generator
        Source of all randomness (pose, contrast, lesions, noise).
    size : int
        Width and height in pixels.

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` uint8 grayscale image.
    """
    if label not in CLASSES:
        raise ValueError(f"unknown class {label!r}; expected one of {CLASSES}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    cy, cx = 0.5 + rng.normal(0, 0.02), 0.5 + rng.normal(0, 0.02)
    img = 0.08 + 0.05 * rng.random()
    img = img + 0.55 * (_blob(yy, xx, cy + 0.05, cx, 0.55, 0.42) > 0.35)  # body
    lungs = np.zeros_like(yy)
    sides = []
    for side in (-1, 1):
        ly, lx = cy - 0.02 + rng.normal(0, 0.015), cx + side * (0.19 + rng.normal(0, 0.01))
        ry, rx = 0.30 + rng.normal(0, 0.02), 0.13 + rng.normal(0, 0.01)
        lungs = np.maximum(lungs, np.clip(1.6 * _blob(yy, xx, ly, lx, ry, rx) - 0.3, 0, 1))
        sides.append((ly, lx, ry, rx))
    img = img - 0.42 * lungs
    img = img + 0.25 * np.exp(-(((xx - cx) / 0.035) ** 2))  # spine
    phase = rng.uniform(0, 2 * np.pi)
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * 9 * (yy + 0.25 * (xx - cx) ** 2) + phase)
    img = img + 0.08 * lungs * ribs ** 4
    lesion = np.zeros_like(yy)
    if label == "PNEUMONIA":
        # lobar consolidation: one large, dense opacity filling part of one lung
        ly, lx, ry, rx = sides[rng.integers(2)]
        py, px = ly + rng.uniform(0.1, 0.45) * ry, lx + rng.uniform(-0.2, 0.2) * rx
        lesion = np.clip(1.8 * _blob(yy, xx, py, px, rng.uniform(0.12, 0.16), rng.uniform(0.08, 0.11)), 0, 1)
        lesion = 0.55 * lesion
    elif label == "COVID":
        # bilateral, peripheral, patchy ground-glass opacities in the lower zones
        for ly, lx, ry, rx in sides:
            for _ in range(rng.integers(14, 20)):
                py = ly + rng.uniform(-0.1, 0.8) * ry
                px = lx + np.sign(lx - cx) * rng.uniform(0.1, 0.9) * rx
                lesion += _blob(yy, xx, py, px, rng.uniform(0.025, 0.05), rng.uniform(0.025, 0.05))
        lesion = 0.30 * np.clip(lesion, 0, 1)
    img = img + lesion * lungs
    gain, gamma = rng.uniform(0.92, 1.08), rng.uniform(0.92, 1.08)
    img = gain * np.clip(img, 0, 1) ** gamma + rng.normal(0, 0.01, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def write_demo_dataset(out_dir: str | os.PathLike, per_class: int = 50, seed: int = 20240501,
                       size: int = 256) -> Path:
    """Write the demo dataset in the real dataset's layout, atomically.

    Parameters
    ----------
    out_dir : path-like
        Destination folder; replaced whole (written to a temporary folder
        beside it first, so an interrupted run leaves no partial dataset).
    per_class : int
        Images per class.
    seed : int
        Seed of the whole set; the same seed gives byte-identical files.
    size : int
        Image width and height.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        seeds = np.random.SeedSequence(seed).spawn(len(CLASSES))
        for label, class_seed in zip(CLASSES, seeds, strict=True):
            rng = np.random.default_rng(class_seed)
            (tmp / label).mkdir()
            for i in range(per_class):
                Image.fromarray(synthetic_xray(label, rng, size), mode="L").save(
                    tmp / label / f"synthetic-{label.lower()}-{i:03d}.png", optimize=False)
        (tmp / MARKER).write_text(MARKER_TEXT)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def is_synthetic(data_dir: str | os.PathLike) -> bool:
    """True when ``data_dir`` is (a copy of) the synthetic demo data."""
    return (Path(data_dir) / MARKER).is_file()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--seed", type=int, default=20240501)
    args = parser.parse_args(argv)
    out = write_demo_dataset(args.out_dir, per_class=args.per_class, seed=args.seed)
    print(f"wrote {args.per_class * len(CLASSES)} synthetic images to {out}")


if __name__ == "__main__":
    main()
