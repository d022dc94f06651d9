"""Supervised baselines on frozen features: how much label structure a feature space holds.

The clustering study never shows the labels to a model. This module asks the
complementary question with the same frozen features: how well can a *linear*
classifier (a "linear probe") separate the classes? Done without the leaks of
the companion study, which oversampled the minority classes with SMOTE before
splitting (synthetic test images made from training images) and re-scored one
set as its "validation":

- Every fitted step (standardisation and logistic regression, in one
  :class:`~sklearn.pipeline.Pipeline`) is fitted inside each training fold
  only; the test fold is only ever predicted.
- Class imbalance is handled by ``class_weight="balanced"`` inside the fold,
  never by resampling.
- When the data has a patient column, folds are grouped by patient
  (:class:`~sklearn.model_selection.StratifiedGroupKFold`), so that no patient
  has images on both sides of a split; otherwise they are stratified
  (:class:`~sklearn.model_selection.StratifiedKFold`).

The fitted probe is linear after standardisation, so it folds into one dense
layer (:func:`probe_as_dense`): placed on top of its backbone it makes a
differentiable classifier for Grad-CAM and saliency maps
(:mod:`cxrcluster.saliency`) without any fine-tuning.

:func:`finetune_backbone` (optional, off by default in the pipeline) trains a
Keras backbone with a new head on a held-out split that nothing else touches.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

#: Metrics computed per fold; precision, recall and F1 are macro averages over classes.
METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")

#: Column names recognised as a patient identifier, in order of preference.
PATIENT_COLUMNS = ("patient", "patient_id", "patientid", "subject", "subject_id")

#: Column names recognised as an image reference in a metadata file, in order of preference.
IMAGE_COLUMNS = ("path", "image", "image_name", "file", "filename", "image_path")

#: Name of the metadata file looked for in a data folder.
METADATA_FILE = "metadata.csv"

#: Iteration cap of the logistic regression; lbfgs converges on standardised CNN features well before it.
MAX_ITER = 5000


class ProbeCV(NamedTuple):
    """What :func:`linear_probe_cv` returns (unpacks as a 4-tuple).

    Attributes
    ----------
    per_fold : pandas.DataFrame
        One row per fold: ``fold, n_train, n_test, n_test_groups`` and
        :data:`METRICS`.
    summary : dict
        ``<metric>_mean`` and ``<metric>_std`` (sample standard deviation over
        folds, ``ddof=1``) for every metric of :data:`METRICS`, and the
        set-up: ``cv``, ``n_splits``, ``seed``, ``C``, ``grouped``,
        ``n_groups``, ``n_images`` (used), ``n_dropped`` (non-finite rows),
        ``classes``, ``n_not_converged`` (folds whose solver stopped at
        :data:`MAX_ITER` iterations, with a warning); and ``recall_<class>``, the share of each class's images
        predicted as that class, pooled over the out-of-fold predictions.
    confusion : pandas.DataFrame
        Counts of out-of-fold predictions, true class (index) x predicted class
        (columns); every used image is counted exactly once.
    predictions : pandas.DataFrame
        Aligned with the rows of ``X``: ``label``, ``predicted`` (None for a
        dropped row), ``fold`` (-1 for a dropped row) and ``proba_<class>``
        (out-of-fold class probabilities).
    """

    per_fold: pd.DataFrame
    summary: dict
    confusion: pd.DataFrame
    predictions: pd.DataFrame


def make_probe(C: float = 1.0, seed: int = 0) -> Pipeline:
    """An unfitted probe: standardisation, then balanced multinomial logistic regression.

    Parameters
    ----------
    C : float, default 1.0
        Inverse L2 regularisation strength of the logistic regression.
    seed : int, default 0
        ``random_state`` of the logistic regression (lbfgs is deterministic;
        recorded for completeness).

    Returns
    -------
    sklearn.pipeline.Pipeline
        Steps ``scale`` (:class:`~sklearn.preprocessing.StandardScaler`) and
        ``logreg`` (:class:`~sklearn.linear_model.LogisticRegression`,
        ``class_weight="balanced"``).
    """
    return Pipeline([
        ("scale", StandardScaler()),
        ("logreg", LogisticRegression(C=C, class_weight="balanced", max_iter=MAX_ITER, random_state=seed)),
    ])


def _finite(X, labels, groups=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels).astype(str)
    if X.ndim != 2 or X.shape[0] != labels.shape[0]:
        raise ValueError(f"features of shape {X.shape} for {labels.shape[0]} labels")
    keep = np.isfinite(X).all(axis=1)
    if groups is not None:
        groups = np.asarray(groups).astype(str)
        if groups.shape[0] != X.shape[0]:
            raise ValueError(f"{groups.shape[0]} groups for {X.shape[0]} feature rows")
        groups = groups[keep]
    return X[keep], labels[keep], groups, keep


def _fit(probe: Pipeline, X: np.ndarray, y: np.ndarray) -> bool:
    """Fit ``probe``; False (and one warning naming the cause) if the solver did not converge."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        probe.fit(X, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        warnings.warn(f"the logistic regression did not converge in {MAX_ITER} iterations: its scores "
                      "understate the features; try a smaller C", ConvergenceWarning, stacklevel=3)
        return False
    return True


def _fold_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    return {"accuracy": accuracy_score(y_true, y_pred), "precision_macro": precision,
            "recall_macro": recall, "f1_macro": f1}


def linear_probe_cv(
    X: np.ndarray,
    labels,
    groups=None,
    n_splits: int = 5,
    seed: int = 0,
    C: float = 1.0,
) -> ProbeCV:
    """Cross-validate a linear probe on frozen features, without leakage.

    In every fold, a fresh :func:`make_probe` pipeline (standardisation +
    logistic regression with ``class_weight="balanced"``) is fitted on the
    training images only and predicts the test images. Folds are stratified by
    class (:class:`~sklearn.model_selection.StratifiedKFold`, shuffled with
    ``seed``) or, when ``groups`` are given, stratified *and* grouped
    (:class:`~sklearn.model_selection.StratifiedGroupKFold`), so that all
    images of one patient fall in the same fold.

    Precision, recall and F1 are macro averages over the classes present in the
    fold (scikit-learn's default), with 0 for an undefined precision (a class
    never predicted).

    Parameters
    ----------
    X : numpy.ndarray, shape (n, d)
        Features; rows with a non-finite value (unreadable images) are dropped
        and counted in ``summary["n_dropped"]``.
    labels : array-like of str, shape (n,)
        Class of each row.
    groups : array-like, shape (n,), optional
        Patient id of each row (:func:`patient_groups`).
    n_splits : int, default 5
        Number of folds.
    seed : int, default 0
        Seeds the fold assignment (and the logistic regression).
    C : float, default 1.0
        Inverse regularisation strength.

    Returns
    -------
    ProbeCV
        ``(per_fold, summary, confusion, predictions)``; see :class:`ProbeCV`.

    Raises
    ------
    ValueError
        When a class has fewer images (or, grouped, fewer patients) than
        ``n_splits``, or there are fewer than two classes.
    """
    Xf, y, g, keep = _finite(X, labels, groups)
    classes = sorted(np.unique(y).tolist())
    if len(classes) < 2:
        raise ValueError(f"a probe needs at least two classes; found {classes}")
    for c in classes:
        units = np.unique(g[y == c]).size if g is not None else int((y == c).sum())
        if units < n_splits:
            what = "patients" if g is not None else "images"
            raise ValueError(f"class {c!r} has {units} {what}, fewer than n_splits={n_splits}: "
                             "lower n_splits or add data")
    if g is not None:
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = cv.split(Xf, y, g)
    else:
        cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        splits = cv.split(Xf, y)

    predicted = np.empty(len(y), dtype=object)
    not_converged = 0
    fold_of = np.full(len(y), -1)
    proba = np.full((len(y), len(classes)), np.nan)
    rows = []
    for fold, (train, test) in enumerate(splits):
        probe = make_probe(C=C, seed=seed)
        not_converged += not _fit(probe, Xf[train], y[train])
        predicted[test] = probe.predict(Xf[test])
        fold_of[test] = fold
        # a class absent from a training fold gets no column: its probability stays 0
        proba[np.ix_(test, [classes.index(c) for c in probe.classes_])] = probe.predict_proba(Xf[test])
        proba[test] = np.nan_to_num(proba[test], nan=0.0)
        rows.append({"fold": fold, "n_train": len(train), "n_test": len(test),
                     "n_test_groups": np.unique(g[test]).size if g is not None else len(test),
                     **_fold_metrics(y[test], predicted[test].astype(str))})
    per_fold = pd.DataFrame(rows)

    summary: dict = {
        "cv": type(cv).__name__, "n_splits": n_splits, "seed": seed, "C": C,
        "grouped": g is not None, "n_groups": int(np.unique(g).size) if g is not None else None,
        "n_images": len(y), "n_dropped": int((~keep).sum()), "classes": classes,
        "n_not_converged": int(not_converged),
    }
    for m in METRICS:
        summary[f"{m}_mean"] = float(per_fold[m].mean())
        summary[f"{m}_std"] = float(per_fold[m].std(ddof=1))
    confusion = pd.DataFrame(confusion_matrix(y, predicted.astype(str), labels=classes),
                             index=pd.Index(classes, name="true class"),
                             columns=pd.Index(classes, name="predicted class"))
    for c in classes:  # pooled over folds: which class the probe finds easy says where the structure is
        summary[f"recall_{c}"] = float(confusion.loc[c, c] / confusion.loc[c].sum())

    n = len(keep)
    predictions = pd.DataFrame({"label": np.asarray(labels).astype(str), "predicted": None, "fold": -1})
    predictions.loc[keep, "predicted"] = predicted
    predictions.loc[keep, "fold"] = fold_of
    for k, c in enumerate(classes):
        column = np.full(n, np.nan)
        column[keep] = proba[:, k]
        predictions[f"proba_{c}"] = column
    return ProbeCV(per_fold, summary, confusion, predictions)


def fit_probe(X: np.ndarray, labels, C: float = 1.0, seed: int = 0) -> Pipeline:
    """Fit the probe of :func:`make_probe` on every finite row.

    Use it for interpretation (:func:`probe_as_dense`), not for scoring: its
    training images are all the images. Scores come from
    :func:`linear_probe_cv`.

    Parameters
    ----------
    X : numpy.ndarray, shape (n, d)
        Features; non-finite rows are dropped.
    labels : array-like of str, shape (n,)
        Class of each row.
    C : float, default 1.0
        Inverse regularisation strength.
    seed : int, default 0
        ``random_state`` of the logistic regression.

    Returns
    -------
    sklearn.pipeline.Pipeline
        Fitted; ``classes_`` in sorted order.
    """
    Xf, y, _, _ = _finite(X, labels)
    probe = make_probe(C=C, seed=seed)
    _fit(probe, Xf, y)
    return probe


def probe_as_dense(pipeline: Pipeline) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fold a fitted probe's standardisation and logistic regression into one dense layer.

    The probe computes ``softmax(((x - mean) / scale) @ coef.T + intercept)``,
    which equals ``softmax(x @ W + b)`` with ``W = coef.T / scale[:, None]`` and
    ``b = intercept - (mean / scale) @ coef.T``. A two-class probe (one
    coefficient row, a sigmoid) becomes the equivalent two-column softmax
    ``[0, z]``.

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        From :func:`fit_probe`: an optional
        :class:`~sklearn.preprocessing.StandardScaler` followed by a fitted
        :class:`~sklearn.linear_model.LogisticRegression`.

    Returns
    -------
    W : numpy.ndarray of float64, shape (d, n_classes)
    b : numpy.ndarray of float64, shape (n_classes,)
    classes : list of str
        Class of each output column.
    """
    steps = [step for _, step in pipeline.steps]
    logreg = steps[-1]
    if not isinstance(logreg, LogisticRegression) or not hasattr(logreg, "coef_"):
        raise TypeError("the last step must be a fitted LogisticRegression")
    coef = np.asarray(logreg.coef_, dtype=np.float64)
    intercept = np.asarray(logreg.intercept_, dtype=np.float64)
    if coef.shape[0] == 1:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    d = coef.shape[1]
    mean, scale = np.zeros(d), np.ones(d)
    for step in steps[:-1]:
        if not isinstance(step, StandardScaler):
            raise TypeError(f"cannot fold a {type(step).__name__} into a dense layer; only StandardScaler")
        m = step.mean_ if step.mean_ is not None else np.zeros(d)
        s = step.scale_ if step.scale_ is not None else np.ones(d)
        mean, scale = mean + m * scale, scale * s  # composition of two affine standardisations
    W = coef.T / scale[:, None]
    b = intercept - (mean / scale) @ coef.T
    return W, b, [str(c) for c in logreg.classes_]


# ---------------------------------------------------------------- patients


def _pick(columns, candidates) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[c] for c in candidates if c in lower), None)


def patient_groups(labels_df: pd.DataFrame, metadata_csv: str | os.PathLike | None = None,
                   data_dir: str | os.PathLike | None = None) -> np.ndarray | None:
    """Patient id of every image, when the data says which patient an image is of.

    Looked for, in order: a patient column in ``labels_df`` itself; the file
    ``metadata_csv``; ``<data_dir>/metadata.csv``. A metadata file needs a
    patient column (one of :data:`PATIENT_COLUMNS`) and an image column (one of
    :data:`IMAGE_COLUMNS`) holding either the path relative to the data folder
    (``COVID/x.png``) or the file name; images are matched on the relative path
    first, then on the file name.

    Parameters
    ----------
    labels_df : pandas.DataFrame
        ``original_labels.csv`` (``image_name``, ``path``).
    metadata_csv : path-like, optional
        A metadata file; an error if it does not exist.
    data_dir : path-like, optional
        The data folder, searched for :data:`METADATA_FILE` when
        ``metadata_csv`` is not given.

    Returns
    -------
    numpy.ndarray of str, shape (len(labels_df),), or None
        None when no patient information is found (the caller then uses
        ungrouped folds and should say so).

    Raises
    ------
    FileNotFoundError
        If ``metadata_csv`` is given and does not exist.
    ValueError
        If the metadata has no usable columns, or does not name the patient of
        every image (grouping part of the data would leak the rest).
    """
    column = _pick(labels_df.columns, PATIENT_COLUMNS)
    if column is not None:
        ids = labels_df[column].astype(str)
        if (ids.str.strip() == "").any() or labels_df[column].isna().any():
            raise ValueError(f"labels column {column!r} is empty for some images")
        return ids.to_numpy()
    if metadata_csv is None and data_dir is not None and (Path(data_dir) / METADATA_FILE).is_file():
        metadata_csv = Path(data_dir) / METADATA_FILE
    if metadata_csv is None:
        return None
    metadata_csv = Path(metadata_csv)
    if not metadata_csv.is_file():
        raise FileNotFoundError(f"metadata file {str(metadata_csv)!r} does not exist")
    meta = pd.read_csv(metadata_csv, dtype=str, keep_default_na=False)
    patient_col, image_col = _pick(meta.columns, PATIENT_COLUMNS), _pick(meta.columns, IMAGE_COLUMNS)
    if patient_col is None or image_col is None:
        raise ValueError(f"{metadata_csv}: needs a patient column (one of {PATIENT_COLUMNS}) and an image "
                         f"column (one of {IMAGE_COLUMNS}); found {list(meta.columns)}")
    refs = meta[image_col].str.replace("\\", "/", regex=False)
    by_path = dict(zip(refs, meta[patient_col], strict=True))
    names = refs.map(lambda p: PurePosixPath(p).name)
    by_name = dict(zip(names, meta[patient_col], strict=True)) if names.is_unique else {}
    paths = labels_df["path"] if "path" in labels_df else labels_df["image_name"]
    ids, missing = [], []
    for name, rel in zip(labels_df["image_name"], paths, strict=True):
        pid = by_path.get(str(rel)) or by_name.get(PurePosixPath(str(rel)).name) or by_name.get(str(name))
        if not pid:
            missing.append(str(name))
        ids.append(pid)
    if missing:
        raise ValueError(f"{metadata_csv}: no patient for {len(missing)} of {len(labels_df)} images "
                         f"(e.g. {', '.join(missing[:5])})")
    return np.asarray(ids, dtype=str)


# ---------------------------------------------------------------- fine-tuning


class FinetuneResult(NamedTuple):
    """What :func:`finetune_backbone` returns.

    Attributes
    ----------
    metrics : dict
        On the held-out test split: :data:`METRICS`, ``n_train``, ``n_test``,
        ``n_test_groups``, ``grouped``, ``classes``, and the settings used.
    predictions : pandas.DataFrame
        One row per test image: ``image_name``, ``label``, ``predicted`` and
        ``proba_<class>``.
    confusion : pandas.DataFrame
        True class x predicted class counts on the test split.
    history : dict
        Training loss and accuracy per epoch, ``head`` and ``finetune`` phases.
    model : keras.Model
        The trained classifier (0-255 image in, class probabilities out).
    """

    metrics: dict
    predictions: pd.DataFrame
    confusion: pd.DataFrame
    history: dict
    model: object


def held_out_split(labels, groups=None, test_size: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into train and test, stratified, and grouped by patient when possible.

    Parameters
    ----------
    labels : array-like of str
        Class of each image.
    groups : array-like, optional
        Patient id of each image; when given, no patient is on both sides.
    test_size : float, default 0.2
        Share of the images in the test split (approximate when grouped: the
        first fold of ``round(1 / test_size)`` stratified group folds).
    seed : int, default 0
        Seeds the split.

    Returns
    -------
    train, test : numpy.ndarray of int
        Sorted row indices.
    """
    y = np.asarray(labels).astype(str)
    index = np.arange(len(y))
    if groups is None:
        train, test = train_test_split(index, test_size=test_size, stratify=y, random_state=seed)
    else:
        n_splits = max(2, round(1 / test_size))
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        train, test = next(cv.split(index, y, np.asarray(groups).astype(str)))
    return np.sort(train), np.sort(test)


def _image_dataset(paths, y, size, batch_size, shuffle, seed):
    import keras

    from cxrcluster.images import load_image

    class Images(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.order = np.arange(len(paths))
            self.rng = np.random.default_rng(seed)
            if shuffle:
                self.rng.shuffle(self.order)

        def __len__(self):
            return int(np.ceil(len(paths) / batch_size))

        def __getitem__(self, i):
            rows = self.order[i * batch_size:(i + 1) * batch_size]
            batch = np.stack([load_image(paths[r], size) for r in rows])
            return (batch, y[rows]) if y is not None else (batch,)

        def on_epoch_end(self):
            if shuffle:
                self.rng.shuffle(self.order)

    return Images()


def finetune_backbone(
    labels_df: pd.DataFrame,
    data_dir: str | os.PathLike,
    model_name: str,
    weights: str = "imagenet",
    groups=None,
    test_size: float = 0.2,
    seed: int = 0,
    epochs: int = 3,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    unfreeze_layers: int = 0,
    finetune_epochs: int = 2,
    finetune_learning_rate: float = 1e-5,
    progress: bool = True,
) -> FinetuneResult:
    """Train a backbone with a new classifier head, scored on a held-out test split.

    1. The images are split once (:func:`held_out_split`: stratified, grouped by
       patient when ``groups`` are given, seeded). The test images are read
       only for the final evaluation: no early stopping, model selection or
       normalisation statistic sees them.
    2. Head phase: the backbone (ImageNet weights, its own
       ``preprocess_input`` inside the model) is frozen and a softmax dense
       head is trained for ``epochs`` epochs (Adam, ``learning_rate``, class
       weights balanced on the training split).
    3. Optional fine-tuning phase (``unfreeze_layers > 0``): the top
       ``unfreeze_layers`` layers of the backbone are unfrozen (batch
       normalisation layers stay frozen, in inference mode, as small batches
       would corrupt their statistics) and everything trainable is trained for
       ``finetune_epochs`` more epochs at ``finetune_learning_rate``.

    Runs on the CPU with small defaults; images are read batch by batch
    (:func:`cxrcluster.images.load_image`), so memory does not grow with the
    dataset.

    Parameters
    ----------
    labels_df : pandas.DataFrame
        ``original_labels.csv`` (``image_name``, ``label``, ``path``).
    data_dir : path-like
        The data folder.
    model_name : str
        A backbone of :data:`cxrcluster.models.BACKBONES`.
    weights : str, default "imagenet"
        As for :func:`cxrcluster.models.build_backbone`.
    groups : array-like, optional
        Patient id of each row of ``labels_df`` (:func:`patient_groups`).
    test_size : float, default 0.2
        Share of the images held out.
    seed : int, default 0
        Seeds the split, the head's initialisation and the batch order.
    epochs, batch_size, learning_rate : int, int, float
        Head phase.
    unfreeze_layers : int, default 0
        Backbone layers (counted from the top) trained in the fine-tuning
        phase; 0 skips it.
    finetune_epochs, finetune_learning_rate : int, float
        Fine-tuning phase.
    progress : bool, default True
        Keras' per-epoch progress output.

    Returns
    -------
    FinetuneResult
    """
    import keras

    from cxrcluster import data, models

    backbone_spec = models.get_backbone(model_name)
    paths = np.asarray([str(p) for p in data.resolve_image_paths(labels_df, data_dir)])
    y_text = labels_df["label"].astype(str).to_numpy()
    classes = sorted(np.unique(y_text).tolist())
    y = np.asarray([classes.index(c) for c in y_text])
    train, test = held_out_split(y_text, groups, test_size=test_size, seed=seed)

    backbone, provenance = models.build_backbone(model_name, weights, seed=seed)
    keras.utils.set_random_seed(seed)
    size = backbone_spec.input_size
    preprocess = backbone_spec.preprocess_input()
    inputs = keras.Input((size, size, 3), name="image_0_255")
    x = keras.layers.Lambda(preprocess, name="preprocess_input")(inputs)
    backbone.trainable = False
    x = backbone(x, training=False)
    outputs = keras.layers.Dense(len(classes), activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs, name=f"{model_name}-finetuned")

    counts = np.bincount(y[train], minlength=len(classes))
    class_weight = {k: len(train) / (len(classes) * counts[k]) for k in range(len(classes)) if counts[k]}
    verbose = 2 if progress else 0
    history: dict = {}
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    fit = model.fit(_image_dataset(paths[train], y[train], size, batch_size, True, seed), epochs=epochs,
                    class_weight=class_weight, verbose=verbose)
    history["head"] = {k: [float(v) for v in vals] for k, vals in fit.history.items()}

    if unfreeze_layers > 0 and finetune_epochs > 0:
        backbone.trainable = True
        for layer in backbone.layers[:-unfreeze_layers]:
            layer.trainable = False
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        model.compile(optimizer=keras.optimizers.Adam(finetune_learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        fit = model.fit(_image_dataset(paths[train], y[train], size, batch_size, True, seed + 1),
                        epochs=finetune_epochs, class_weight=class_weight, verbose=verbose)
        history["finetune"] = {k: [float(v) for v in vals] for k, vals in fit.history.items()}

    proba = model.predict(_image_dataset(paths[test], None, size, batch_size, False, seed), verbose=0)
    predicted = np.asarray(classes)[proba.argmax(axis=1)]
    truth = y_text[test]
    predictions = pd.DataFrame({"image_name": labels_df["image_name"].to_numpy()[test], "label": truth,
                                "predicted": predicted})
    for k, c in enumerate(classes):
        predictions[f"proba_{c}"] = proba[:, k]
    metrics = {
        **_fold_metrics(truth, predicted),
        "n_train": len(train), "n_test": len(test),
        "n_test_groups": int(np.unique(np.asarray(groups)[test]).size) if groups is not None else len(test),
        "grouped": groups is not None, "classes": classes, "model": model_name,
        "weights": provenance["weights"], "seed": seed, "epochs": epochs, "batch_size": batch_size,
        "learning_rate": learning_rate, "unfreeze_layers": unfreeze_layers,
        "finetune_epochs": finetune_epochs if unfreeze_layers > 0 else 0,
        "finetune_learning_rate": finetune_learning_rate, "test_size": test_size,
    }
    confusion = pd.DataFrame(confusion_matrix(truth, predicted, labels=classes),
                             index=pd.Index(classes, name="true class"),
                             columns=pd.Index(classes, name="predicted class"))
    return FinetuneResult(metrics, predictions, confusion, history, model)
