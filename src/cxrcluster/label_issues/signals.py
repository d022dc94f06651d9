"""The evidence, per image, that its label is wrong, and the table that gathers it.

Three kinds of evidence, each on its own scale:

- **drift** (:func:`drift_evidence`): the share of the non-degenerate model x
  algorithm runs in which the image left its class after matching clusters
  to classes, and where it went most often. It needs no labels to cluster,
  only to match, so the same cluster assignments serve any labelling.
- **confident learning** (:func:`cleanlab_evidence`): the ``cleanlab``
  library's verdict (``cleanlab.filter.find_label_issues``) and label-quality
  score (``cleanlab.rank.get_label_quality_scores``, 0 = surely wrong, 1 =
  surely right) from a linear probe's out-of-fold class probabilities
  (:func:`out_of_fold_probabilities`), per model and from the models' mean
  probabilities, with the class the probe prefers.
- **duplicates** (:func:`duplicate_conflicts`): an exact or near duplicate in
  the audit's list that carries another label. Shown, not ranked: with a
  handful of duplicate pairs it would only reorder a few images.

When the source (hospital) of the images is known, a flag may be the
hospital speaking: :func:`source_explained` marks the images whose suggested
class is not their label but is the most frequent class of their own source.

:func:`combined_score` ranks images on drift and confident learning together
(:data:`COMBINE_RULE`); :func:`label_issues_table` gathers it all, one row per
image (:data:`ISSUE_COLUMNS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from cxrcluster import metrics, products
from cxrcluster.drift import label_drift
from cxrcluster.probe import linear_probe_cv

COMBINE_RULE = ("mean of the two signals' rank percentiles: drift share (higher is more suspect) and "
                "cleanlab's label quality of the models together (lower is more suspect)")
"""How :func:`combined_score` combines the signals, in words for the reports."""

ISSUE_COLUMNS = products.LABEL_ISSUES.column_names
"""Leading columns of ``label_issues.csv``; per-model cleanlab columns follow
(``cleanlab_issue_<model>``, ``cleanlab_quality_<model>``, ``cleanlab_suggested_<model>``)."""


# ---------------------------------------------------------------- the signals


def out_of_fold_probabilities(
    features: Mapping[str, np.ndarray],
    labels: Sequence[str],
    groups=None,
    *,
    n_splits: int = 5,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Each model's linear-probe class probabilities for every image, from folds that did not train on it.

    Parameters
    ----------
    features : mapping of str to numpy.ndarray
        Features of each model, rows aligned with ``labels``; rows with a
        non-finite value (unreadable images) get NaN probabilities.
    labels : sequence of str
        Class of each image.
    groups : array-like, optional
        Patient of each image: the folds keep a patient's images together
        (:func:`cxrcluster.probe.linear_probe_cv`).
    n_splits, seed : int
        Folds, and the seed of the folds and of the probe.

    Returns
    -------
    probabilities : dict of str to numpy.ndarray, shape (n, k)
        Columns in the order of ``classes``.
    classes : list of str
        The classes, sorted.
    """
    classes = sorted(np.unique(np.asarray(labels).astype(str)).tolist())
    out = {}
    for model, X in features.items():
        predictions = linear_probe_cv(X, labels, groups=groups, n_splits=n_splits, seed=seed).predictions
        out[model] = predictions[[f"proba_{c}" for c in classes]].to_numpy(dtype=float)
    return out, classes


def mean_probabilities(probabilities: Mapping[str, np.ndarray]) -> np.ndarray:
    """The models' mean class probabilities (NaN for an image unreadable by any model)."""
    return np.mean(np.stack(list(probabilities.values())), axis=0)


def cleanlab_evidence(labels: Sequence[str], pred_probs: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """cleanlab's verdict on each label, from out-of-sample class probabilities.

    Parameters
    ----------
    labels : sequence of str
        Given class of each image.
    pred_probs : numpy.ndarray, shape (n, k)
        Out-of-sample probabilities, columns in the order of ``classes``.
        Rows with NaN (unreadable images) get no verdict.
    classes : sequence of str
        The classes, in column order.

    Returns
    -------
    pandas.DataFrame
        ``issue`` (bool, or NA: ``cleanlab.filter.find_label_issues`` with
        its default rule), ``quality`` (``cleanlab.rank.get_label_quality_scores``,
        its default self-confidence: the probability of the given label; NaN
        without probabilities) and ``suggested`` (the most probable class).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    classes = list(classes)
    labels = np.asarray(labels).astype(str)
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {classes}")
    P = np.asarray(pred_probs, dtype=float)
    if P.shape != (labels.size, len(classes)):
        raise ValueError(f"probabilities of shape {P.shape} for {labels.size} images and {len(classes)} classes")
    ok = np.isfinite(P).all(axis=1)
    issue = pd.array([pd.NA] * labels.size, dtype="boolean")
    quality = np.full(labels.size, np.nan)
    suggested = np.full(labels.size, "", dtype=object)
    if ok.any():
        y = np.array([classes.index(c) for c in labels[ok]])
        Pk = P[ok] / P[ok].sum(axis=1, keepdims=True)  # rows sum to 1, as cleanlab requires
        issue[np.flatnonzero(ok)] = find_label_issues(y, Pk)
        quality[ok] = get_label_quality_scores(y, Pk)
        suggested[ok] = np.asarray(classes, dtype=object)[Pk.argmax(axis=1)]
    return pd.DataFrame({"issue": issue, "quality": quality, "suggested": suggested})


def drift_evidence(cluster_frames: Mapping[str, pd.DataFrame], image_names: Sequence[str],
                   labels: Sequence[str]) -> pd.DataFrame:
    """Consensus drift of each image under ``labels``, from the runs' cluster assignments.

    Every run's clusters are matched to the classes of ``labels`` again
    (:func:`cxrcluster.metrics.label_table`), so other labels (planted flips)
    need no clustering; then :func:`cxrcluster.drift.label_drift`.

    Parameters
    ----------
    cluster_frames : mapping of str to pandas.DataFrame
        The runs that count (non-degenerate: :func:`cxrcluster.results.load_label_frames`),
        each with ``image_name`` and ``cluster``.
    image_names, labels : sequence of str
        The images and the labels to match against.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``image_name`` in the order given: ``drift_share``
        (NaN for an image in no run), ``n_runs`` and ``drift_target``.
    """
    names = pd.Index(np.asarray(image_names).astype(str), name="image_name")
    if names.has_duplicates:
        raise ValueError("an image is listed more than once")
    by_name = pd.Series(np.asarray(labels).astype(str), index=names)
    rematched = {}
    for key, frame in cluster_frames.items():
        frame = frame[frame["image_name"].astype(str).isin(by_name.index)]
        image = frame["image_name"].astype(str).to_numpy()
        rematched[key] = metrics.label_table(image, by_name.loc[image].to_numpy(),
                                             frame["cluster"].to_numpy(dtype=np.int64))
    drift = label_drift(rematched).set_index("image_name").reindex(names)
    return pd.DataFrame({
        "drift_share": drift["drift_share"].astype(float),
        "n_runs": drift["n_combinations"].fillna(0).astype("int64"),
        "drift_target": drift["most_common_target"].fillna("").astype(str),
    }, index=names)


def duplicate_conflicts(duplicates: pd.DataFrame | None, image_names: Sequence[str],
                        labels: Sequence[str]) -> pd.Series:
    """For each image, its duplicates that carry another label, as ``"<image> (<label>, <kind>)"``.

    Parameters
    ----------
    duplicates : pandas.DataFrame or None
        The audit's ``duplicates.csv`` (``image_a``, ``image_b``, ``kind``);
        labels are taken from ``labels``, so that flipped labels count.
    image_names, labels : sequence of str

    Returns
    -------
    pandas.Series of str
        Indexed by image name; ``""`` where no duplicate disagrees.
    """
    names = np.asarray(image_names).astype(str)
    label_of = dict(zip(names, np.asarray(labels).astype(str), strict=True))
    found: dict[str, list[str]] = {name: [] for name in names}
    if duplicates is not None:
        for a, b, kind in duplicates[["image_a", "image_b", "kind"]].astype(str).itertuples(index=False):
            if a in label_of and b in label_of and label_of[a] != label_of[b]:
                found[a].append(f"{b} ({label_of[b]}, {kind})")
                found[b].append(f"{a} ({label_of[a]}, {kind})")
    return pd.Series({name: "; ".join(others) for name, others in found.items()}, name="duplicate_conflict")


def combined_score(drift_share: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Drift and confident learning on one scale (:data:`COMBINE_RULE`); higher is more suspect.

    Each signal becomes its rank percentile among the images (ties share
    their mean rank), and the two are averaged: neither signal's scale
    matters, only its order. An image missing one signal takes the other's.

    Parameters
    ----------
    drift_share : numpy.ndarray
        Consensus drift, 0 to 1 (NaN: no run).
    quality : numpy.ndarray
        cleanlab's label quality, 0 to 1 (NaN: no probabilities).

    Returns
    -------
    numpy.ndarray
        In (0, 1]; NaN only when both are missing.
    """
    stacked = np.stack([_percentile(np.asarray(drift_share, dtype=float)),
                        _percentile(-np.asarray(quality, dtype=float))])
    count = np.isfinite(stacked).sum(axis=0)
    return np.where(count > 0, np.nansum(stacked, axis=0) / np.maximum(count, 1), np.nan)


def _percentile(values: np.ndarray) -> np.ndarray:
    out = np.full(values.shape, np.nan)
    ok = np.isfinite(values)
    if ok.any():
        out[ok] = rankdata(values[ok]) / ok.sum()
    return out


def source_majority(labels: Sequence[str], sources: Sequence[str]) -> dict[str, str | None]:
    """The most frequent class of each source's images (None for a source where two classes tie)."""
    frame = pd.DataFrame({"label": np.asarray(labels).astype(str), "source": np.asarray(sources).astype(str)})
    out: dict[str, str | None] = {}
    for source, counts in frame.groupby("source")["label"].value_counts().groupby(level=0):
        top = counts.droplevel(0).sort_values(ascending=False)
        out[str(source)] = str(top.index[0]) if len(top) == 1 or top.iloc[0] > top.iloc[1] else None
    return out


def source_explained(suggested: Sequence[str], labels: Sequence[str], sources=None,
                     majority_labels: Sequence[str] | None = None) -> pd.api.extensions.ExtensionArray:
    """Whether each image's flag may be its hospital speaking.

    True when the class suggested for an image is not its label and is the
    most frequent class of the image's own source (:func:`source_majority`):
    a probe that learned the hospital suggests that class for every image of
    it. False otherwise.

    Parameters
    ----------
    suggested : sequence of str
        The suggested class of each image (``cleanlab_suggested``; ``""``
        for an image without probabilities).
    labels : sequence of str
        The labels the suggestion is compared with.
    sources : sequence of str, optional
        The source of each image (:func:`cxrcluster.data.image_sources`).
    majority_labels : sequence of str, optional
        The labels each source's most frequent class is counted from; by
        default ``labels``. The noise check passes the given labels: planted
        flips must not decide a source's make-up (two classes tied in a
        source would be untied at random).

    Returns
    -------
    pandas.arrays.BooleanArray
        NA for every image when ``sources`` is None, and for an image without
        a suggestion.
    """
    suggested = np.asarray(suggested).astype(str)
    out = pd.array([pd.NA] * suggested.size, dtype="boolean")
    if sources is None:
        return out
    labels, sources = np.asarray(labels).astype(str), np.asarray(sources).astype(str)
    majority = source_majority(labels if majority_labels is None else majority_labels, sources)
    judged = suggested != ""
    flag = judged & (suggested != labels) & (suggested == np.array([majority[s] or "" for s in sources]))
    out[judged] = flag[judged]
    return out


# ---------------------------------------------------------------- the table


def label_issues_table(
    image_names: Sequence[str],
    labels: Sequence[str],
    cluster_frames: Mapping[str, pd.DataFrame],
    probabilities: Mapping[str, np.ndarray],
    classes: Sequence[str],
    duplicates: pd.DataFrame | None = None,
    sources=None,
) -> pd.DataFrame:
    """One row per image with every piece of evidence, ranked by :func:`combined_score`.

    Parameters
    ----------
    image_names, labels : sequence of str
        The images and their given labels.
    cluster_frames : mapping of str to pandas.DataFrame
        Label frames of the non-degenerate runs (:func:`cxrcluster.results.load_label_frames`).
    probabilities : mapping of str to numpy.ndarray
        Out-of-fold probabilities per model (:func:`out_of_fold_probabilities`).
    classes : sequence of str
        Column order of the probabilities.
    duplicates : pandas.DataFrame, optional
        The audit's ``duplicates.csv``.
    sources : sequence of str, optional
        The source of each image: ``source_explained`` (:func:`source_explained`
        of the models' suggestion together) is NA without it.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`ISSUE_COLUMNS`, then per-model cleanlab columns;
        sorted by rank (1 = most suspect; ties by image name).
    """
    names = np.asarray(image_names).astype(str)
    labels = np.asarray(labels).astype(str)
    drift = drift_evidence(cluster_frames, names, labels)
    table = pd.DataFrame({"image_name": names, "label": labels})
    table = table.join(drift, on="image_name")
    together = cleanlab_evidence(labels, mean_probabilities(probabilities), classes)
    table["cleanlab_issue"] = together["issue"].to_numpy()
    table["cleanlab_quality"] = together["quality"].to_numpy()
    table["cleanlab_suggested"] = together["suggested"].to_numpy()
    table["duplicate_conflict"] = duplicate_conflicts(duplicates, names, labels).reindex(names).to_numpy()
    table["source_explained"] = source_explained(table["cleanlab_suggested"], labels, sources)
    table["combined_score"] = combined_score(table["drift_share"].to_numpy(), table["cleanlab_quality"].to_numpy())
    per_model = []
    for model, P in probabilities.items():
        own = cleanlab_evidence(labels, P, classes)
        per_model.append(pd.DataFrame({f"cleanlab_issue_{model}": own["issue"].to_numpy(),
                                       f"cleanlab_quality_{model}": own["quality"].to_numpy(),
                                       f"cleanlab_suggested_{model}": own["suggested"].to_numpy()}))
    table = table.sort_values(["combined_score", "image_name"], ascending=[False, True], na_position="last",
                              kind="stable").reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    extra = pd.concat(per_model, axis=1) if per_model else pd.DataFrame(index=range(len(names)))
    extra.index = names
    return pd.concat([table[ISSUE_COLUMNS], extra.loc[table["image_name"]].reset_index(drop=True)], axis=1)
