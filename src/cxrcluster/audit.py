"""Dataset audit: what the image files are, before their features are trusted.

A public chest X-ray collection is usually a compilation of sources (hospitals,
scanners, earlier redistributions), and each source tends to bring its own file
format, resolution and bit depth. If those properties line up with the classes,
a clustering of CNN features can recover the *source* of an image rather than
its *disease*. This module measures that risk and lists duplicated images:

- :func:`image_metadata` reads every file's header (format, mode, bit depth,
  size) and records a reason instead of crashing when a file is unreadable;
- :func:`audit_summary` and :func:`plot_audit` describe the classes;
- :func:`metadata_confound` asks whether a simple classifier predicts the class
  from file metadata alone, and says so loudly when it does;
- :func:`find_duplicates` finds exact (same bytes) and near (perceptual hash)
  duplicates and flags pairs whose labels disagree.

Paths in the label table are relative to the data folder, so the same table
works wherever the data folder is mounted.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image, ImageMode
from sklearn.dummy import DummyClassifier
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.tree import DecisionTreeClassifier

from cxrcluster.data import is_dicom
from cxrcluster.figures import class_colours, with_data_note
from cxrcluster.images import read_luminance

#: Columns of the frame returned by :func:`image_metadata`.
METADATA_COLUMNS = [
    "image_name",
    "label",
    "path",
    "format",
    "mode",
    "bit_depth",
    "width",
    "height",
    "file_size",
    "manufacturer",
    "view_position",
    "error",
]

#: Columns of the frame returned by :func:`find_duplicates`.
DUPLICATE_COLUMNS = ["image_a", "image_b", "label_a", "label_b", "kind", "distance", "label_conflict"]

#: Metadata the confound check learns from; the first three are numeric, the rest one-hot encoded.
CONFOUND_NUMERIC = ["width", "height", "file_size"]
CONFOUND_CATEGORICAL = ["format", "mode", "bit_depth", "manufacturer", "view_position"]

#: The confound rule: cross-validated accuracy at least this far above the majority-class
#: baseline (or balanced accuracy this far above 1 / number of classes) ...
CONFOUND_MARGIN = 0.20
#: ... and at least this high in absolute terms.
CONFOUND_MIN_SCORE = 0.60
#: A class whose cross-validated F1 from metadata alone reaches this is named in the message.
SEPARABLE_F1 = 0.90

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Samples per pixel of each PNG colour type (PNG specification, IHDR chunk).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png_bit_depth(path: Path) -> int | None:
    """Bits per pixel from a PNG's IHDR chunk (PIL reports 1-, 2- and 4-bit grey as mode L)."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    channels = _PNG_CHANNELS.get(head[25])
    return None if channels is None else head[24] * channels


def _mode_bit_depth(image: Image.Image) -> int:
    """Bits per pixel implied by a PIL mode (and a JPEG's sample precision)."""
    if image.mode == "1":
        return 1
    bands = len(image.getbands())
    jpeg_bits = getattr(image, "bits", None) if image.format in ("JPEG", "MPO") else None
    if jpeg_bits:
        return int(jpeg_bits) * bands
    typestr = ImageMode.getmode(image.mode).typestr
    return int(typestr[-1]) * 8 * bands


DICOM_COLUMNS = ("manufacturer", "view_position")
"""Metadata columns only DICOM fills; a metadata frame written before they existed gets them empty."""


def _with_dicom_columns(meta: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in DICOM_COLUMNS if c not in meta.columns]
    return meta.assign(**dict.fromkeys(missing, "")) if missing else meta


def _read_dicom_header(path: Path, info: dict, decode: bool) -> dict:
    """DICOM: photometric interpretation as the mode, bits stored as the depth, and the source's tags."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not decode)
        info["format"] = "DICOM"
        info["mode"] = str(ds.get("PhotometricInterpretation", ""))
        bits, samples = ds.get("BitsStored"), int(ds.get("SamplesPerPixel", 1) or 1)
        info["bit_depth"] = int(bits) * samples if bits is not None else pd.NA
        info["width"], info["height"] = ds.get("Columns", pd.NA), ds.get("Rows", pd.NA)
        info["manufacturer"] = str(ds.get("Manufacturer", "")).strip()
        info["view_position"] = str(ds.get("ViewPosition", "")).strip()
        if decode:
            read_luminance(path)
    except Exception as exc:  # noqa: BLE001 - an audit records every failure
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info


def _read_header(path: Path, decode: bool) -> dict:
    info = {"format": "", "mode": "", "bit_depth": pd.NA, "width": pd.NA, "height": pd.NA, "manufacturer": "",
            "view_position": "", "error": ""}
    try:
        info["file_size"] = path.stat().st_size
    except FileNotFoundError:
        info["file_size"] = pd.NA
        info["error"] = "file not found"
        return info
    except OSError as exc:
        info["file_size"] = pd.NA
        info["error"] = f"cannot stat file: {exc}"
        return info
    if is_dicom(path):
        return _read_dicom_header(path, info, decode)
    # PIL signals a bad file with many exception types (UnidentifiedImageError, OSError,
    # SyntaxError, ValueError, DecompressionBombError, ...): an audit records them all.
    try:
        with Image.open(path) as image:
            info["format"] = image.format or ""
            info["mode"] = image.mode
            info["width"], info["height"] = image.size
            depth = _png_bit_depth(path) if image.format == "PNG" else None
            info["bit_depth"] = depth if depth is not None else _mode_bit_depth(image)
            if decode:
                image.load()
    except Exception as exc:  # noqa: BLE001
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info


def image_metadata(labels_df: pd.DataFrame, data_dir: str | os.PathLike, decode: bool = False) -> pd.DataFrame:
    """Read format, mode, bit depth, size and file size of every image.

    Only headers are read by default (PIL opens images lazily), so the audit of
    thousands of images takes seconds. An unreadable image never raises: its
    ``error`` column says why, and its image fields are left missing.

    Parameters
    ----------
    labels_df : pandas.DataFrame
        The label table, with columns ``image_name``, ``label`` and ``path``
        (relative to ``data_dir``, posix separators).
    data_dir : path-like
        The data folder the paths are relative to.
    decode : bool, default False
        Also decode the pixel data, which catches truncated files whose header
        is intact, at the cost of reading every image in full.

    Returns
    -------
    pandas.DataFrame
        One row per image, in the order of ``labels_df``, with columns
        ``image_name, label, path, format, mode, bit_depth, width, height,
        file_size, manufacturer, view_position, error``. For DICOM, ``format``
        is ``DICOM``, ``mode`` the photometric interpretation, ``bit_depth``
        the bits stored, and ``manufacturer`` and ``view_position`` come from
        the header (empty for other formats): they reveal a source as the file
        metadata does. ``bit_depth`` is bits per *pixel* (bits per sample
        times samples per pixel: 8 for 8-bit greyscale, 24 for 8-bit RGB), so
        a greyscale and a colour source differ in it. ``file_size`` is in
        bytes. ``error`` is the empty string for a readable image.
    """
    _require_columns(labels_df, ["image_name", "label", "path"], "labels_df")
    data_dir = Path(data_dir)
    rows = []
    for image_name, label, rel_path in labels_df[["image_name", "label", "path"]].itertuples(index=False):
        info = _read_header(data_dir / str(rel_path), decode)
        rows.append({"image_name": image_name, "label": label, "path": rel_path, **info})
    meta = pd.DataFrame(rows, columns=METADATA_COLUMNS)
    for column in ("bit_depth", "width", "height", "file_size"):
        meta[column] = meta[column].astype("Int64")
    return meta


def _composition(values: pd.Series) -> str:
    """'PNG: 97, JPEG: 3' - most frequent first, then alphabetical."""
    counts = values.astype(str).value_counts()
    counts = counts.sort_index().sort_values(ascending=False, kind="stable")
    return ", ".join(f"{value}: {count}" for value, count in counts.items())


def audit_summary(meta: pd.DataFrame) -> pd.DataFrame:
    """Describe each class: count, formats, bit depths, modes and size distribution.

    Parameters
    ----------
    meta : pandas.DataFrame
        Output of :func:`image_metadata`.

    Returns
    -------
    pandas.DataFrame
        One row per class (sorted by label) with columns ``label, count,
        n_unreadable, formats, bit_depths, modes, manufacturers,
        view_positions`` (each a ``value: count``
        list, most frequent first) and ``width_*``, ``height_*`` (pixels) and
        ``file_size_*`` (bytes), each with suffixes ``median, min, max``,
        computed over the readable images.
    """
    meta = _with_dicom_columns(meta)
    _require_columns(meta, METADATA_COLUMNS, "meta")
    rows = []
    for label, group in meta.groupby("label", sort=True):
        ok = group[group["error"].fillna("") == ""]
        row = {
            "label": label,
            "count": len(group),
            "n_unreadable": len(group) - len(ok),
            "formats": _composition(ok["format"]),
            "bit_depths": _composition(ok["bit_depth"]),
            "modes": _composition(ok["mode"]),
            "manufacturers": _composition(ok["manufacturer"].replace("", "(none)")),
            "view_positions": _composition(ok["view_position"].replace("", "(none)")),
        }
        for column in ("width", "height", "file_size"):
            values = ok[column].astype("float64")
            row[f"{column}_median"] = values.median()
            row[f"{column}_min"] = values.min()
            row[f"{column}_max"] = values.max()
        rows.append(row)
    return pd.DataFrame(rows)


def _metadata_design(meta: pd.DataFrame) -> pd.DataFrame:
    numeric = meta[CONFOUND_NUMERIC].astype("float64")
    categorical = meta[CONFOUND_CATEGORICAL].astype(str)
    dummies = pd.get_dummies(categorical, prefix_sep="=", dtype="float64")
    return pd.concat([numeric, dummies], axis=1)


def metadata_confound(meta: pd.DataFrame, seed: int = 0, n_splits: int = 5, max_depth: int = 3) -> dict:
    """Check whether file metadata alone predicts the class (a source confound).

    A depth-limited decision tree learns the class from width, height, file
    size, and one-hot format, mode and bit depth; its accuracy is estimated by
    stratified, shuffled k-fold cross-validation and compared, on the same
    folds, with always predicting the training folds' majority class. A tree
    needs no feature scaling and its splits ("width > 432") read as the source
    difference they detect.

    The rule: the data are **confounded** when the cross-validated accuracy is
    at least ``max(baseline + 0.20, 0.60)``, or the balanced accuracy is at
    least ``max(1 / n_classes + 0.20, 0.60)``. The balanced form catches a
    small class that is perfectly separable in a dataset dominated by one
    large class, where plain accuracy moves little above its high baseline.

    Parameters
    ----------
    meta : pandas.DataFrame
        Output of :func:`image_metadata`; unreadable images are left out.
    seed : int, default 0
        Seeds the fold shuffle and the tree.
    n_splits : int, default 5
        Number of folds, lowered to the size of the smallest class if needed.
    max_depth : int, default 3
        Depth of the tree: shallow, so a flag means a plain difference.

    Returns
    -------
    dict
        JSON-serialisable: ``accuracy``, ``accuracy_std`` (across folds),
        ``baseline`` (majority class), ``balanced_accuracy``, ``chance``
        (1 / n_classes), ``n_images``, ``n_classes``, ``n_splits``,
        ``classifier``, ``features`` (columns used), ``per_class_f1``,
        ``separable_classes`` (F1 >= 0.9 from metadata alone),
        ``top_features`` (importances of the tree fitted on all images),
        ``accuracy_without_file_size`` and
        ``balanced_accuracy_without_file_size`` (the same check on width,
        height, format, mode and bit depth only: file size also reflects
        image content, so a flag that survives without it is a difference of
        the files themselves), ``rule``, ``confounded`` (bool) and a human-readable ``message``. When
        there are too few images to cross-validate, the scores are ``None``,
        ``confounded`` is False and the message says so.
    """
    meta = _with_dicom_columns(meta)
    _require_columns(meta, METADATA_COLUMNS, "meta")
    ok = meta[meta["error"].fillna("") == ""].reset_index(drop=True)
    y = ok["label"].astype(str).to_numpy()
    classes, class_counts = np.unique(y, return_counts=True)
    rule = (
        f"confounded if cross-validated accuracy >= max(majority baseline + {CONFOUND_MARGIN:.2f}, "
        f"{CONFOUND_MIN_SCORE:.2f}) or balanced accuracy >= max(1/n_classes + {CONFOUND_MARGIN:.2f}, "
        f"{CONFOUND_MIN_SCORE:.2f})"
    )
    classifier = f"decision tree (max_depth={max_depth}) on file metadata"
    result = {
        "n_images": int(len(ok)),
        "n_classes": int(len(classes)),
        "classifier": classifier,
        "features": CONFOUND_NUMERIC + CONFOUND_CATEGORICAL,
        "rule": rule,
        "seed": int(seed),
    }
    n_splits = int(min(n_splits, class_counts.min())) if len(classes) else 0
    if len(classes) < 2 or n_splits < 2:
        result.update(
            accuracy=None, accuracy_std=None, baseline=None, balanced_accuracy=None, chance=None,
            accuracy_without_file_size=None, balanced_accuracy_without_file_size=None, n_splits=n_splits, per_class_f1={}, separable_classes=[], top_features={}, confounded=False,
            message=(
                "Metadata confound check not run: it needs at least two classes with at least two "
                f"readable images each ({len(ok)} readable images in {len(classes)} classes)."
            ),
        )
        return result

    X = _metadata_design(ok)
    folds = list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(X, y))
    predicted, fold_accuracy, fold_baseline = _cross_validate(X, y, folds, max_depth, seed)
    # File size also reflects content (a JPEG of a hazy lung compresses better), so the
    # check is repeated on the container properties alone; on the same folds.
    structural, _, _ = _cross_validate(X.drop(columns="file_size"), y, folds, max_depth, seed)

    accuracy = float(np.mean(fold_accuracy))
    baseline = float(np.mean(fold_baseline))
    balanced = float(balanced_accuracy_score(y, predicted))
    chance = 1.0 / len(classes)
    f1 = f1_score(y, predicted, labels=classes, average=None, zero_division=0)
    per_class_f1 = {str(c): round(float(v), 4) for c, v in zip(classes, f1, strict=True)}
    separable = [c for c, v in per_class_f1.items() if v >= SEPARABLE_F1]
    full_tree = DecisionTreeClassifier(max_depth=max_depth, random_state=seed).fit(X, y)
    importances = pd.Series(full_tree.feature_importances_, index=X.columns)
    importances = importances[importances > 0].sort_values(ascending=False)
    top_features = {str(k): round(float(v), 4) for k, v in importances.items()}
    confounded = bool(
        accuracy >= max(baseline + CONFOUND_MARGIN, CONFOUND_MIN_SCORE)
        or balanced >= max(chance + CONFOUND_MARGIN, CONFOUND_MIN_SCORE)
    )
    result.update(
        accuracy=round(accuracy, 4),
        accuracy_std=round(float(np.std(fold_accuracy)), 4),
        baseline=round(baseline, 4),
        balanced_accuracy=round(balanced, 4),
        chance=round(chance, 4),
        n_splits=n_splits,
        per_class_f1=per_class_f1,
        separable_classes=separable,
        top_features=top_features,
        accuracy_without_file_size=round(float(np.mean(structural == y)), 4),
        balanced_accuracy_without_file_size=round(float(balanced_accuracy_score(y, structural)), 4),
        confounded=confounded,
    )
    result["message"] = _confound_message(result)
    return result


def _cross_validate(X: pd.DataFrame, y: np.ndarray, folds, max_depth: int, seed: int):
    """Out-of-fold predictions of the tree, and per-fold accuracy of the tree and of the majority class."""
    predicted = np.empty_like(y)
    fold_accuracy, fold_baseline = [], []
    for train, test in folds:
        tree = DecisionTreeClassifier(max_depth=max_depth, random_state=seed).fit(X.iloc[train], y[train])
        predicted[test] = tree.predict(X.iloc[test])
        fold_accuracy.append(np.mean(predicted[test] == y[test]))
        dummy = DummyClassifier(strategy="most_frequent").fit(X.iloc[train], y[train])
        fold_baseline.append(np.mean(dummy.predict(X.iloc[test]) == y[test]))
    return predicted, fold_accuracy, fold_baseline


def _confound_message(r: dict) -> str:
    scores = (
        f"{r['n_splits']}-fold accuracy {r['accuracy']:.2f} (majority-class baseline {r['baseline']:.2f}), "
        f"balanced accuracy {r['balanced_accuracy']:.2f} (chance {r['chance']:.2f}), "
        f"{r['n_images']} images"
    )
    if not r["confounded"]:
        return (
            f"No metadata confound detected: a {r['classifier']} predicts the class no better than the rule "
            f"allows ({scores}). This check sees file properties only; sources can still differ in content "
            "(patient age, device, burnt-in text)."
        )
    used = ", ".join(f"{name} ({weight:.2f})" for name, weight in list(r["top_features"].items())[:4])
    separable = ", ".join(r["separable_classes"]) or "none on its own"
    return (
        "WARNING - SOURCE CONFOUND: the class can be predicted from file metadata alone. "
        f"A {r['classifier']} reaches {scores}. "
        f"Classes identified by metadata alone (F1 >= {SEPARABLE_F1:.1f}): {separable}. "
        f"Most informative metadata: {used or 'none'}. "
        f"Without file size, which also reflects image content: accuracy {r['accuracy_without_file_size']:.2f}, "
        f"balanced accuracy {r['balanced_accuracy_without_file_size']:.2f}. "
        "The classes come from sources that differ in format, resolution or bit depth, so a clustering "
        "may separate image SOURCES rather than DISEASES: read a cluster that matches such a class as "
        "possibly a source, and compare classes that share a source for the fairer test."
    )


def _file_hashes(path: Path, hash_size: int) -> tuple[str, np.ndarray]:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if is_dicom(path):
        image = Image.fromarray(np.round(read_luminance(path)).astype(np.uint8))
        bits = imagehash.phash(image, hash_size=hash_size).hash.ravel()
        return digest, np.packbits(bits)
    with Image.open(io.BytesIO(data)) as image:
        bits = imagehash.phash(image, hash_size=hash_size).hash.ravel()
    return digest, np.packbits(bits)


def _near_pairs(packed: np.ndarray, max_distance: int, block_bytes: int = 1 << 24):
    """All pairs i < j of packed bit rows within ``max_distance`` Hamming distance, block by block."""
    n, n_bytes = packed.shape
    block = max(1, block_bytes // max(1, n * n_bytes))
    for start in range(0, n, block):
        stop = min(n, start + block)
        distances = np.bitwise_count(packed[start:stop, None, :] ^ packed[None, :, :]).sum(axis=-1)
        rows, cols = np.nonzero(distances <= max_distance)
        keep = cols > rows + start
        rows, cols = rows[keep], cols[keep]
        yield rows + start, cols, distances[rows, cols]


def find_duplicates(
    meta_or_labels: pd.DataFrame,
    data_dir: str | os.PathLike,
    max_distance: int = 24,
    hash_size: int = 16,
) -> pd.DataFrame:
    """Find exact and near-duplicate images, flagging pairs with different labels.

    Exact duplicates share the SHA-256 of their file bytes. Near duplicates
    (re-encoded, rescaled, brightened copies) have perceptual hashes
    (:func:`imagehash.phash`) within ``max_distance`` bits of each other; exact
    pairs are not listed again as near. The pairwise distances are computed
    with vectorised XOR and bit counts, block by block, so 5,000 images take
    seconds and bounded memory.

    The defaults suit chest X-rays, which look alike at low resolution: with
    a 256-bit hash (``hash_size=16``), distinct radiographs of the real sample
    lie 58 bits or more apart, while JPEG re-encoding, rescaling, brightness
    and contrast changes move an image by 0-20 bits (a crop can move it more).
    The common 64-bit hash puts distinct patients within 4 bits of each other.

    Parameters
    ----------
    meta_or_labels : pandas.DataFrame
        A frame with ``image_name``, ``label`` and ``path`` columns: the label
        table, or the output of :func:`image_metadata` (whose unreadable rows,
        those with a non-empty ``error``, are skipped).
    data_dir : path-like
        The data folder the paths are relative to.
    max_distance : int, default 24
        Largest Hamming distance, in bits, between perceptual hashes of a near
        duplicate pair.
    hash_size : int, default 16
        Side of the perceptual hash; the hash has ``hash_size ** 2`` bits.

    Returns
    -------
    pandas.DataFrame
        One row per pair, columns ``image_a, image_b, label_a, label_b, kind``
        (``exact`` or ``near``), ``distance`` (bits; 0 for exact) and
        ``label_conflict`` (the two labels differ); ``image_a`` comes first in
        the input. Sorted by kind (exact first), distance, then input order.
        Images that cannot be read or decoded are skipped with a warning.
    """
    _require_columns(meta_or_labels, ["image_name", "label", "path"], "meta_or_labels")
    frame = meta_or_labels
    if "error" in frame.columns:
        frame = frame[frame["error"].fillna("") == ""]
    frame = frame.reset_index(drop=True)
    data_dir = Path(data_dir)

    names, labels, digests, hashes, skipped = [], [], [], [], []
    for image_name, label, rel_path in frame[["image_name", "label", "path"]].itertuples(index=False):
        try:
            digest, bits = _file_hashes(data_dir / str(rel_path), hash_size)
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for a bad file
            skipped.append(f"{image_name} ({type(exc).__name__}: {exc})")
            continue
        names.append(image_name)
        labels.append(label)
        digests.append(digest)
        hashes.append(bits)
    if skipped:
        warnings.warn(
            f"find_duplicates skipped {len(skipped)} unreadable image(s): " + "; ".join(skipped[:10]),
            stacklevel=2,
        )
    if not names:
        return _pairs_frame([], [], [], [], names, labels)

    digests = np.asarray(digests)
    index = np.arange(len(names))
    exact_a, exact_b = [], []
    for members in pd.Series(index).groupby(digests, sort=False).agg(list):
        for pos, a in enumerate(members):
            exact_a.extend([a] * (len(members) - pos - 1))
            exact_b.extend(members[pos + 1 :])

    near_a, near_b, near_d = [], [], []
    for a, b, d in _near_pairs(np.vstack(hashes), max_distance):
        different_bytes = digests[a] != digests[b]
        near_a.append(a[different_bytes])
        near_b.append(b[different_bytes])
        near_d.append(d[different_bytes])

    a = np.concatenate([np.asarray(exact_a, dtype=np.int64), *near_a])
    b = np.concatenate([np.asarray(exact_b, dtype=np.int64), *near_b])
    d = np.concatenate([np.zeros(len(exact_a), dtype=np.int64), *near_d])
    kind = ["exact"] * len(exact_a) + ["near"] * (len(a) - len(exact_a))
    return _pairs_frame(a, b, d, kind, names, labels)


def _pairs_frame(a, b, d, kind, names, labels) -> pd.DataFrame:
    names = np.asarray(names, dtype=object)
    labels = np.asarray(labels, dtype=object)
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    pairs = pd.DataFrame(
        {
            "image_a": names[a],
            "image_b": names[b],
            "label_a": labels[a],
            "label_b": labels[b],
            "kind": pd.Series(kind, dtype=object),
            "distance": np.asarray(d, dtype=np.int64),
            "label_conflict": labels[a] != labels[b],
        },
        columns=DUPLICATE_COLUMNS,
    )
    order = np.lexsort((b, a, pairs["distance"].to_numpy(), (pairs["kind"] != "exact").to_numpy()))
    return pairs.iloc[order].reset_index(drop=True)


def plot_audit(meta: pd.DataFrame, data_note: str = "") -> Figure:
    """Draw per-class image sizes, file sizes and format / bit-depth composition.

    Parameters
    ----------
    meta : pandas.DataFrame
        Output of :func:`image_metadata`; unreadable images are left out.
    data_note : str, default ""
        Appended to every title, e.g. ``"synthetic demo data - not evidence"``.

    Returns
    -------
    matplotlib.figure.Figure
        Three panels: width x height per image coloured by class; file size
        per class (box plot, log scale); share of each format / bit depth per
        class (stacked bars).
    """
    meta = _with_dicom_columns(meta)
    _require_columns(meta, METADATA_COLUMNS, "meta")
    ok = meta[meta["error"].fillna("") == ""]
    classes = sorted(ok["label"].astype(str).unique())
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    ax_size, ax_file, ax_comp = fig.subplots(1, 3)
    colours = class_colours(classes)

    # Sources often share one exact size, so points of different classes coincide: draw one
    # hollow marker per class and size (area growing with its image count), a different shape
    # per class, so coinciding classes stay visible.
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    for k, label in enumerate(classes):
        group = ok[ok["label"].astype(str) == label]
        sizes = group.groupby(["width", "height"]).size().reset_index(name="n")
        ax_size.scatter(
            sizes["width"].astype(float), sizes["height"].astype(float), s=20 + 180 * np.sqrt(sizes["n"] / len(group)),
            marker=markers[k % len(markers)], facecolors="none", edgecolors=colours[label], linewidths=1.4,
            label=f"{label} (n={len(group)}, {len(sizes)} distinct size{'s' if len(sizes) != 1 else ''})",
        )
    ax_size.set_xlabel("width (pixels)")
    ax_size.set_ylabel("height (pixels)")
    ax_size.set_title(with_data_note("Image size per class", data_note))
    if classes:
        ax_size.legend(fontsize="small")

    sizes = [ok.loc[ok["label"].astype(str) == c, "file_size"].astype(float).to_numpy() / 1024 for c in classes]
    if classes:
        ax_file.boxplot(sizes, tick_labels=classes)
        ax_file.set_yscale("log")
    ax_file.set_xlabel("class")
    ax_file.set_ylabel("file size (KiB, log scale)")
    ax_file.set_title(with_data_note("File size per class", data_note))

    kinds = ok["format"].astype(str) + ", " + ok["bit_depth"].astype(str) + "-bit"
    shares = pd.crosstab(ok["label"].astype(str), kinds, normalize="index") * 100
    bottom = np.zeros(len(shares))
    # A palette distinct from the class colours: these colours are formats, not classes.
    palette = colormaps["Set2"]
    for k, column in enumerate(shares.columns):
        values = shares[column].to_numpy()
        ax_comp.bar(shares.index, values, bottom=bottom, label=column, color=palette(k % palette.N))
        bottom += values
    ax_comp.set_xlabel("class")
    ax_comp.set_ylabel("share of the class's images (%)")
    ax_comp.set_ylim(0, 100)
    ax_comp.set_title(with_data_note("Format and bits per pixel per class", data_note))
    if len(shares.columns):
        ax_comp.legend(fontsize="small", title="format, bits per pixel", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _require_columns(df: pd.DataFrame, columns: list[str], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{name} lacks column(s) {missing}; it has {list(df.columns)}")
