"""Label issues: the evidence, per image, that its label is wrong, and a check of that evidence.

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

:func:`combined_score` ranks images on drift and confident learning together
(:data:`COMBINE_RULE`); :func:`label_issues_table` gathers it all, one row per
image. :func:`noise_check` measures how well each signal finds labels known to
be wrong: it flips a seeded, stratified share of labels (:func:`plant_flips`),
recomputes every signal from the flipped labels (the cluster assignments are
reused, the probe refitted) and scores each ranking of the flipped images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from cxrcluster import metrics, products
from cxrcluster.drift import label_drift, thumbnail_gallery
from cxrcluster.figures import with_data_note
from cxrcluster.probe import linear_probe_cv

SIGNALS = ("drift", "cleanlab", "combined", "random")
"""The rankings the noise check scores: each signal alone, the two combined, and a seeded random order."""

COMBINE_RULE = ("mean of the two signals' rank percentiles: drift share (higher is more suspect) and "
                "cleanlab's label quality of the models together (lower is more suspect)")
"""How :func:`combined_score` combines the signals, in words for the reports."""

ISSUE_COLUMNS = products.LABEL_ISSUES.column_names
"""Leading columns of ``label_issues.csv``; per-model cleanlab columns follow
(``cleanlab_issue_<model>``, ``cleanlab_quality_<model>``, ``cleanlab_suggested_<model>``)."""

CHECK_COLUMNS = products.LABEL_NOISE_CHECK.column_names
"""Columns of ``reports/label_noise_check.csv``: one row per planted share and signal."""


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


# ---------------------------------------------------------------- the table


def label_issues_table(
    image_names: Sequence[str],
    labels: Sequence[str],
    cluster_frames: Mapping[str, pd.DataFrame],
    probabilities: Mapping[str, np.ndarray],
    classes: Sequence[str],
    duplicates: pd.DataFrame | None = None,
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



# ---------------------------------------------------------------- the planted-noise check


def plant_flips(labels: Sequence[str], fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flip a seeded, class-stratified share of labels to another class.

    In each class (sorted), ``fraction * n_class`` images (halves rounded up) are drawn
    without replacement and each gets one of the other classes, drawn
    uniformly.

    Parameters
    ----------
    labels : sequence of str
    fraction : float
        Share of each class to flip, in (0, 1).
    seed : int, default 0

    Returns
    -------
    flipped_labels : numpy.ndarray of str
    is_flipped : numpy.ndarray of bool
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), not {fraction}")
    labels = np.asarray(labels).astype(str)
    classes = sorted(np.unique(labels).tolist())
    if len(classes) < 2:
        raise ValueError(f"flipping labels needs two classes or more; found {classes}")
    rng = np.random.default_rng(seed)
    flipped, is_flipped = labels.copy(), np.zeros(labels.size, dtype=bool)
    for c in classes:
        members = np.flatnonzero(labels == c)
        chosen = rng.choice(members, size=int(np.floor(fraction * members.size + 0.5)), replace=False)
        others = [o for o in classes if o != c]
        flipped[chosen] = np.asarray(others)[rng.integers(len(others), size=chosen.size)]
        is_flipped[chosen] = True
    return flipped, is_flipped


def ranking_scores(is_flipped: np.ndarray, score: np.ndarray) -> dict:
    """How well ``score`` (higher = more suspect) ranks the flipped images first.

    Returns ``roc_auc``, ``average_precision`` and ``precision_at_k``: the
    share of flipped images among the ``k`` highest scores, ``k`` the number
    flipped (ties broken by position, which is seeded upstream). An image
    without a score counts as the least suspect.
    """
    truth = np.asarray(is_flipped, dtype=bool)
    s = _least_suspect_when_missing(score)
    k = int(truth.sum())
    top = np.argsort(-s, kind="stable")[:k]
    return {"roc_auc": float(roc_auc_score(truth, s)), "average_precision": float(average_precision_score(truth, s)),
            "precision_at_k": float(truth[top].mean()) if k else float("nan")}


def _least_suspect_when_missing(score) -> np.ndarray:
    s = np.asarray(score, dtype=float)
    finite = np.isfinite(s)
    return np.where(finite, s, (s[finite].min() - 1) if finite.any() else 0.0)


def signal_scores(drift: pd.DataFrame, clean: pd.DataFrame, seed: int) -> dict[str, np.ndarray]:
    """Each ranking of :data:`SIGNALS` as a score, higher = more suspect."""
    drift_share = drift["drift_share"].to_numpy(dtype=float)
    quality = clean["quality"].to_numpy(dtype=float)
    return {"drift": drift_share, "cleanlab": -quality, "combined": combined_score(drift_share, quality),
            "random": np.random.default_rng(seed).random(drift_share.size)}


def noise_check(
    image_names: Sequence[str],
    labels: Sequence[str],
    cluster_frames: Mapping[str, pd.DataFrame],
    features: Mapping[str, np.ndarray],
    groups=None,
    *,
    fractions: Sequence[float] = (0.05, 0.10),
    n_splits: int = 5,
    seed: int = 0,
    progress=None,
) -> tuple[pd.DataFrame, dict]:
    """Plant label errors, recompute every signal, and score how well each finds them.

    For each share in ``fractions``: :func:`plant_flips` with ``seed``; the
    drift of every image under the flipped labels (the same cluster
    assignments, matched again: no clustering is refitted); the probe's
    out-of-fold probabilities refitted on the flipped labels and cleanlab's
    quality from their mean over models; the combined score; and a seeded
    random order as the floor. Each is scored by :func:`ranking_scores`.

    Parameters
    ----------
    image_names, labels : sequence of str
        The images and their given labels (taken as correct).
    cluster_frames : mapping of str to pandas.DataFrame
        The non-degenerate runs' label frames.
    features : mapping of str to numpy.ndarray
        Each model's features, rows aligned with ``image_names``.
    groups : array-like, optional
        Patients, for the probe's folds.
    fractions : sequence of float
    n_splits, seed : int
    progress : callable, optional
        Called with a line of text as each share finishes.

    Returns
    -------
    table : pandas.DataFrame
        Columns :data:`CHECK_COLUMNS`.
    curves : dict
        ``{fraction: {signal: (precision, recall)}}`` for the figure, and
        ``{fraction: prevalence}`` under key ``"prevalence"``.
    """
    names = np.asarray(image_names).astype(str)
    rows, curves = [], {"prevalence": {}}
    for fraction in fractions:
        flipped, truth = plant_flips(labels, fraction, seed=seed)
        if not truth.any():  # too few images per class for this share: nothing to find
            rows += [{"fraction": fraction, "n_flipped": 0, "n_images": int(truth.size), "signal": signal,
                      "roc_auc": np.nan, "average_precision": np.nan, "precision_at_k": np.nan,
                      "prevalence": 0.0, "seed": seed} for signal in SIGNALS]
            if progress is not None:
                progress(f"{fraction:.0%} flips no image: every class is too small for it")
            continue
        drift = drift_evidence(cluster_frames, names, flipped)
        probabilities, classes = out_of_fold_probabilities(features, flipped, groups, n_splits=n_splits, seed=seed)
        clean = cleanlab_evidence(flipped, mean_probabilities(probabilities), classes)
        curves[fraction] = {}
        curves["prevalence"][fraction] = float(truth.mean())
        for signal, score in signal_scores(drift, clean, seed).items():
            scored = ranking_scores(truth, score)
            rows.append({"fraction": fraction, "n_flipped": int(truth.sum()), "n_images": int(truth.size),
                         "signal": signal, **scored, "prevalence": float(truth.mean()), "seed": seed})
            precision, recall, _ = precision_recall_curve(truth, _least_suspect_when_missing(score))
            curves[fraction][signal] = (precision, recall)
        if progress is not None:
            best = max((r for r in rows if r["fraction"] == fraction), key=lambda r: r["roc_auc"])
            progress(f"{fraction:.0%} flipped ({int(truth.sum())} images): best ROC AUC {best['roc_auc']:.3f} "
                     f"({best['signal']})")
    return pd.DataFrame(rows, columns=CHECK_COLUMNS), curves


def headline_signal(check: pd.DataFrame, fraction: float) -> tuple[str, str]:
    """The ranking to headline at ``fraction``: the combined one unless a single signal beats its ROC AUC.

    Returns the signal and a sentence saying why (the combined rank, unjudged,
    when the check flipped no image at that share).
    """
    at = check[check["fraction"] == fraction].set_index("signal")["roc_auc"]
    if at.isna().all():
        return "combined", f"no image was flipped at {fraction:.0%} (too few images per class): the combined rank, unchecked"
    best_single = max(("drift", "cleanlab"), key=lambda s: at[s])
    if at["combined"] >= at[best_single]:
        return "combined", (f"the combined rank (ROC AUC {at['combined']:.3f}) is at least as good as either signal "
                            f"alone (drift {at['drift']:.3f}, cleanlab {at['cleanlab']:.3f})")
    return best_single, (f"{best_single} alone (ROC AUC {at[best_single]:.3f}) beats the combined rank "
                         f"({at['combined']:.3f}): the list should be read by {best_single}")



# ---------------------------------------------------------------- figures


SIGNAL_NAMES = {"drift": "drift alone", "cleanlab": "cleanlab alone", "combined": "combined rank",
                "random": "random order"}


def noise_check_figure(check: pd.DataFrame, curves: Mapping, data_note: str = "") -> Figure:
    """Precision against recall of the planted flips, one panel per planted share, one curve per signal.

    Parameters
    ----------
    check : pandas.DataFrame
        The table of :func:`noise_check` (each curve's legend gives its ROC AUC and average precision).
    curves : mapping
        The curves of :func:`noise_check`.
    data_note : str, default ""
        Appended to the title.

    Returns
    -------
    matplotlib.figure.Figure
        A dashed line marks the share of flipped images: what a random order scores.
    """
    fractions = [f for f in curves if f != "prevalence"]
    fig = Figure(figsize=(5.2 * max(1, len(fractions)), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(fractions))))
    colours = {"drift": "tab:blue", "cleanlab": "tab:orange", "combined": "black", "random": "0.6"}
    for ax, fraction in zip(axes, fractions, strict=False):
        rows = check[check["fraction"] == fraction].set_index("signal")
        for signal, (precision, recall) in curves[fraction].items():
            r = rows.loc[signal]
            ax.step(recall, precision, where="post", color=colours.get(signal), linewidth=2 if signal == "combined"
                    else 1.3, label=f"{SIGNAL_NAMES.get(signal, signal)}: AUC {r['roc_auc']:.2f}, "
                                    f"AP {r['average_precision']:.2f}")
        ax.axhline(curves["prevalence"][fraction], color="0.6", linestyle="--", linewidth=1)
        n = int(rows["n_flipped"].iloc[0])
        ax.set_title(f"{fraction:.0%} of labels flipped ({n} images)", fontsize="medium")
        ax.set_xlabel("recall: share of the flipped images found")
        ax.set_ylabel("precision: share of the flagged images that were flipped")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize="small", loc="lower left")
    fig.suptitle(with_data_note("Finding planted label errors: each signal's ranking of the flipped images "
                                "(dashed: chance, the share flipped)", data_note))
    return fig


def issues_gallery(table: pd.DataFrame, data_dir, labels_df: pd.DataFrame, per_class: int = 6,
                   data_note: str = "", rank_by: str = "combined_score") -> Figure:
    """The top candidates of each labelled class, with their evidence under each thumbnail.

    Parameters
    ----------
    table : pandas.DataFrame
        ``label_issues.csv`` (:func:`label_issues_table`).
    data_dir : path-like
        The data folder the label table's paths are relative to.
    labels_df : pandas.DataFrame
        ``original_labels.csv``.
    per_class : int, default 6
    data_note : str, default ""
    rank_by : str, default "combined_score"
        ``combined_score``, ``drift_share`` or ``cleanlab_quality`` (ascending for the last):
        the ranking the report headlines (:func:`headline_signal`).

    Returns
    -------
    matplotlib.figure.Figure
    """
    ascending = rank_by == "cleanlab_quality"
    cells = {}
    for label in sorted(labels_df["label"].astype(str).unique()):
        mine = table[table["label"].astype(str) == label]
        mine = mine.sort_values([rank_by, "image_name"], ascending=[ascending, True], na_position="last")
        cells[label] = [(r["image_name"], _evidence_caption(r)) for _, r in mine.head(per_class).iterrows()]
    return thumbnail_gallery(
        cells, data_dir, labels_df, per_class=per_class, empty_text="no image", cell_width=2.8, cell_height=3.1,
        title=with_data_note(f"Label-issue candidates per labelled class, by {rank_by.replace('_', ' ')}: "
                             "drift over the runs, cleanlab's label quality and suggestion, duplicates", data_note))


def _evidence_caption(row: pd.Series) -> str:
    lines = [f"#{int(row['rank'])} {row['image_name']}"]
    if pd.notna(row["drift_share"]):
        target = f" \u2192 {row['drift_target']}" if row["drift_target"] else ""
        lines.append(f"drift {row['drift_share']:.0%} of {int(row['n_runs'])}{target}")
    if pd.notna(row["cleanlab_quality"]):
        flag = "issue" if bool(row["cleanlab_issue"]) else "no issue"
        lines.append(f"cleanlab {row['cleanlab_quality']:.2f} ({flag}) \u2192 {row['cleanlab_suggested']}")
    if isinstance(row["duplicate_conflict"], str) and row["duplicate_conflict"]:
        lines.append("duplicate with another label")
    return "\n".join(lines)
