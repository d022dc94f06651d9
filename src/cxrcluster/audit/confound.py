"""The source-confound check: does file metadata alone predict the class?

If the sources a collection was compiled from line up with its classes, a
clustering of CNN features can recover the *source* of an image rather than
its *disease*. :func:`metadata_confound` cross-validates a shallow decision
tree that learns the class from the metadata of
:func:`cxrcluster.audit.metadata.image_metadata` and says loudly when it beats
the majority class by the margin of the rule.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.dummy import DummyClassifier
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.tree import DecisionTreeClassifier

from cxrcluster.audit.metadata import METADATA_COLUMNS, _require_columns, _with_dicom_columns

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
