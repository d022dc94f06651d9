"""The linear probe on frozen features: leak-free cross-validation, and its folding into a dense layer.

:func:`linear_probe_cv` fits a fresh :func:`make_probe` pipeline
(standardisation + logistic regression with ``class_weight="balanced"``)
inside each training fold only, with folds grouped by patient when patient ids
are given; :func:`fit_probe` fits the same probe on every image for
interpretation, and :func:`probe_as_dense` folds it into one dense layer
(``W``, ``b``) for :mod:`cxrcluster.saliency`.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

#: Metrics computed per fold; precision, recall and F1 are macro averages over classes.
METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro")

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
        Patient id of each row (:func:`cxrcluster.probe.patients.patient_groups`).
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
