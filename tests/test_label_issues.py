"""Label issues: the signals, the combined rank, the planted flips and the noise check."""

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs

from cxrcluster import label_issues, metrics, results

CLASSES = np.array(["COVID", "NORMAL", "PNEUMONIA"])


def blobs(n=90, d=6, std=1.0, seed=5):
    X, y = make_blobs(n_samples=n, n_features=d, centers=3, cluster_std=std, random_state=seed)
    names = np.array([f"img{i:03d}.png" for i in range(n)])
    return X, CLASSES[y], names


def frame(names, labels, clusters):
    return metrics.label_table(names, labels, clusters)


# ---------------------------------------------------------------- planted flips


def test_flips_are_seeded_and_stratified():
    labels = np.repeat(CLASSES, [40, 60, 100])
    flipped, truth = label_issues.plant_flips(labels, 0.10, seed=3)
    again, truth_again = label_issues.plant_flips(labels, 0.10, seed=3)
    other, truth_other = label_issues.plant_flips(labels, 0.10, seed=4)
    np.testing.assert_array_equal(flipped, again)
    np.testing.assert_array_equal(truth, truth_again)
    assert not np.array_equal(truth, truth_other)
    # round(10 %) of every class, each to another class, nothing else touched
    assert [int(truth[labels == c].sum()) for c in CLASSES] == [4, 6, 10]
    assert (flipped[truth] != labels[truth]).all()
    np.testing.assert_array_equal(flipped[~truth], labels[~truth])
    assert set(flipped) <= set(CLASSES)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_flip_fraction_must_be_a_share(fraction):
    with pytest.raises(ValueError, match="fraction"):
        label_issues.plant_flips(CLASSES.repeat(5), fraction)


def test_flipping_needs_two_classes():
    with pytest.raises(ValueError, match="two classes"):
        label_issues.plant_flips(["COVID"] * 10, 0.1)


# ---------------------------------------------------------------- cleanlab's signal


def test_cleanlab_ranks_planted_flips_first():
    X, labels, _ = blobs()
    flipped = labels.copy()
    planted = np.array([3, 17, 42, 66])
    for i in planted:  # each to the next class
        flipped[i] = CLASSES[(list(CLASSES).index(labels[i]) + 1) % 3]
    probabilities, classes = label_issues.out_of_fold_probabilities({"M": X}, flipped, seed=0)
    assert classes == list(CLASSES) and probabilities["M"].shape == (90, 3)
    evidence = label_issues.cleanlab_evidence(flipped, probabilities["M"], classes)
    lowest = np.argsort(evidence["quality"].to_numpy(), kind="stable")[:4]
    assert set(lowest) == set(planted)
    assert set(np.flatnonzero(evidence["issue"].to_numpy(dtype=bool))) == set(planted)
    # the class it suggests is the true one
    assert (evidence["suggested"].to_numpy()[planted] == labels[planted]).all()


def test_cleanlab_evidence_leaves_unreadable_images_without_a_verdict():
    X, labels, _ = blobs()
    P = np.eye(3)[[list(CLASSES).index(c) for c in labels]] * 0.9 + 0.1 / 3
    P[5] = np.nan
    evidence = label_issues.cleanlab_evidence(labels, P, list(CLASSES))
    assert pd.isna(evidence.loc[5, "issue"]) and np.isnan(evidence.loc[5, "quality"])
    assert evidence.loc[5, "suggested"] == ""
    assert evidence["quality"].drop(5).gt(0.9).all()


def test_cleanlab_evidence_refuses_mismatched_input():
    with pytest.raises(ValueError, match="not among the classes"):
        label_issues.cleanlab_evidence(["COVID", "OTHER"], np.full((2, 3), 1 / 3), list(CLASSES))
    with pytest.raises(ValueError, match="shape"):
        label_issues.cleanlab_evidence(["COVID", "NORMAL"], np.full((2, 2), 0.5), list(CLASSES))


# ---------------------------------------------------------------- drift, duplicates, the combined score


def test_drift_is_matched_again_under_other_labels():
    names = np.array(["a", "b", "c", "d", "e", "f"])
    labels = np.array(["COVID", "COVID", "NORMAL", "NORMAL", "PNEUMONIA", "PNEUMONIA"])
    clusters = np.array([0, 0, 1, 1, 2, 1])  # f sits with the NORMAL images
    frames = {"M_A": frame(names, labels, clusters), "M_B": frame(names, labels, clusters)}
    drift = label_issues.drift_evidence(frames, names, labels)
    assert drift.loc["f", "drift_share"] == 1.0 and drift.loc["f", "drift_target"] == "NORMAL"
    assert drift["drift_share"].drop("f").eq(0).all() and drift["n_runs"].eq(2).all()
    # flip f to NORMAL: the same clusters now agree with it
    relabelled = labels.copy()
    relabelled[5] = "NORMAL"
    again = label_issues.drift_evidence(frames, names, relabelled)
    assert again.loc["f", "drift_share"] == 0.0


def test_a_degenerate_run_does_not_change_the_evidence(tmp_path):
    names = np.array([f"i{k}" for k in range(9)])
    labels = np.repeat(CLASSES, 3)
    good = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    one_cluster = np.zeros(9, dtype=int)
    results.write_cluster_labels(tmp_path, "M", {"KMeans": good, "DBSCAN": one_cluster}, names, labels)
    table = pd.DataFrame({"model": ["M", "M"], "clustering": ["KMeans", "DBSCAN"],
                          "status": ["ok", "degenerate: 1 cluster (fewer than 2)"]})
    counted = results.load_label_frames(table, tmp_path)
    assert list(counted) == ["M_KMeans"]
    with_it = label_issues.drift_evidence(counted, names, labels)
    without = label_issues.drift_evidence({"M_KMeans": frame(names, labels, good)}, names, labels)
    pd.testing.assert_frame_equal(with_it, without)
    everything = label_issues.drift_evidence(
        {"M_KMeans": frame(names, labels, good), "M_DBSCAN": frame(names, labels, one_cluster)}, names, labels)
    assert not everything.equals(without)  # it would have changed them, had it counted


def test_duplicate_conflicts_follow_the_labels_given():
    duplicates = pd.DataFrame({"image_a": ["a", "c"], "image_b": ["b", "d"], "kind": ["exact", "near"]})
    names, labels = ["a", "b", "c", "d"], ["COVID", "COVID", "NORMAL", "PNEUMONIA"]
    found = label_issues.duplicate_conflicts(duplicates, names, labels)
    assert found.to_dict() == {"a": "", "b": "", "c": "d (PNEUMONIA, near)", "d": "c (NORMAL, near)"}
    assert label_issues.duplicate_conflicts(None, names, labels).eq("").all()


def test_combined_score_averages_rank_percentiles():
    drift = np.array([0.0, 0.5, 1.0, np.nan])
    quality = np.array([0.9, 0.1, 0.5, 0.2])
    score = label_issues.combined_score(drift, quality)
    # drift percentiles 1/3, 2/3, 1 (none for the last); quality (low = suspect) 1/4, 1, 1/2, 3/4
    np.testing.assert_allclose(score, [(1 / 3 + 1 / 4) / 2, (2 / 3 + 1) / 2, (1 + 1 / 2) / 2, 3 / 4])
    assert np.isnan(label_issues.combined_score(np.array([np.nan]), np.array([np.nan]))[0])


def test_ranking_scores():
    truth = np.array([True, False, True, False, False])
    assert label_issues.ranking_scores(truth, [0.9, 0.1, 0.8, 0.2, 0.3]) == {
        "roc_auc": 1.0, "average_precision": 1.0, "precision_at_k": 1.0}
    worst = label_issues.ranking_scores(truth, [0.0, 0.9, 0.1, 0.8, 0.7])
    assert worst["roc_auc"] == 0.0 and worst["precision_at_k"] == 0.0
    # a missing score is the least suspect
    assert label_issues.ranking_scores(truth, [0.9, np.nan, 0.8, 0.2, 0.3])["roc_auc"] == 1.0


# ---------------------------------------------------------------- the table and the noise check


def test_label_issues_table_ranks_the_disputed_image_first():
    X, labels, names = blobs()
    given = labels.copy()
    given[10] = CLASSES[(list(CLASSES).index(labels[10]) + 1) % 3]
    clusters = np.array([list(CLASSES).index(c) for c in labels])  # the clustering recovers the true classes
    frames = {"M_KMeans": frame(names, given, clusters)}
    probabilities, classes = label_issues.out_of_fold_probabilities({"M": X, "N": 2 * X}, given, seed=0)
    duplicates = pd.DataFrame({"image_a": [names[10]], "image_b": [names[11]], "kind": ["exact"]})
    table = label_issues.label_issues_table(names, given, frames, probabilities, classes, duplicates)
    assert table.columns[: len(label_issues.ISSUE_COLUMNS)].tolist() == label_issues.ISSUE_COLUMNS
    assert {"cleanlab_quality_M", "cleanlab_quality_N", "cleanlab_issue_N"} <= set(table.columns)
    assert table["rank"].tolist() == list(range(1, 91))
    top = table.iloc[0]
    assert top["image_name"] == names[10] and top["drift_share"] == 1.0
    assert top["drift_target"] == labels[10] and top["cleanlab_suggested"] == labels[10]
    assert bool(top["cleanlab_issue"]) and names[11] in top["duplicate_conflict"]
    assert table["combined_score"].is_monotonic_decreasing


def test_noise_check_reuses_the_cluster_assignments(monkeypatch):
    X, labels, names = blobs(n=150, std=3.0, seed=2)
    clusters = np.array([list(CLASSES).index(c) for c in labels])
    frames = {"M_KMeans": frame(names, labels, clusters), "M_Ward": frame(names, labels, (clusters + 1) % 3)}

    def no_clustering(*args, **kwargs):
        raise AssertionError("the noise check must not cluster")

    from cxrcluster import clustering

    monkeypatch.setattr(clustering, "run_suite", no_clustering)
    monkeypatch.setattr(clustering.suite, "_run_algorithm", no_clustering)
    check, curves = label_issues.noise_check(names, labels, frames, {"M": X}, fractions=(0.05, 0.10), seed=1)
    assert check.columns.tolist() == label_issues.CHECK_COLUMNS
    assert check["signal"].tolist() == list(label_issues.SIGNALS) * 2
    assert check["n_flipped"].tolist() == [9] * 4 + [15] * 4  # 2.5 and 5 of each class of 50
    # the drift row is the drift of the same frames under the flipped labels
    flipped, truth = label_issues.plant_flips(labels, 0.05, seed=1)
    drift = label_issues.drift_evidence(frames, names, flipped)["drift_share"].to_numpy()
    row = check[(check["fraction"] == 0.05) & (check["signal"] == "drift")].iloc[0]
    assert row["roc_auc"] == label_issues.ranking_scores(truth, drift)["roc_auc"]
    assert row["roc_auc"] > 0.9  # the clustering recovered the true classes: every flip drifts
    assert set(curves[0.05]) == set(label_issues.SIGNALS) and curves["prevalence"][0.05] == pytest.approx(9 / 150)


def test_headline_signal_says_when_a_single_signal_wins():
    check = pd.DataFrame({"fraction": [0.05] * 4, "signal": list(label_issues.SIGNALS),
                          "roc_auc": [0.7, 0.9, 0.85, 0.5]})
    signal, why = label_issues.headline_signal(check, 0.05)
    assert signal == "cleanlab" and "beats the combined" in why
    check.loc[2, "roc_auc"] = 0.95
    assert label_issues.headline_signal(check, 0.05)[0] == "combined"


def test_a_share_too_small_to_flip_anything_is_reported_not_scored():
    X, labels, names = blobs(n=18, seed=1)
    frames = {"M_KMeans": frame(names, labels, np.array([list(CLASSES).index(c) for c in labels]))}
    check, curves = label_issues.noise_check(names, labels, frames, {"M": X}, fractions=(0.05, 0.4), n_splits=2)
    small = check[check["fraction"] == 0.05]
    assert (small["n_flipped"] == 0).all() and small["roc_auc"].isna().all()
    assert 0.05 not in curves and (check.loc[check["fraction"] == 0.4, "n_flipped"] == 6).all()
    assert "too few images" in label_issues.headline_signal(check, 0.05)[1]


# ---------------------------------------------------------------- the hospital speaking


def test_a_flag_toward_the_sources_most_frequent_class_is_source_explained():
    labels = ["COVID", "COVID", "NORMAL", "NORMAL", "COVID", "COVID", "NORMAL"]
    suggested = ["COVID", "NORMAL", "COVID", "PNEUMONIA", "", "NORMAL", "COVID"]
    sources = ["A", "A", "A", "A", "A", "T", "T"]  # A: mostly COVID; T: a tie, no most frequent class
    assert label_issues.source_majority(labels, sources) == {"A": "COVID", "T": None}
    flags = label_issues.source_explained(suggested, labels, sources)
    assert flags.tolist() == [False, False, True, False, pd.NA, False, False]
    assert label_issues.source_explained(suggested, labels).isna().all()  # no source: not known
    # the make-up of a source counted from other labels (the given ones, in the noise check): T is mostly NORMAL
    given = [*labels[:5], "NORMAL", "NORMAL"]
    assert label_issues.source_explained(suggested, labels, sources, majority_labels=given).tolist() == [
        False, False, True, False, pd.NA, True, False]


def hospital_blobs(seed=0):
    """Two sources of 60 images whose features carry only the source: A holds 50 COVID and 10 NORMAL, B the reverse."""
    X, side = make_blobs(n_samples=120, centers=2, n_features=4, cluster_std=0.8, random_state=seed)
    sources = np.array(["A", "B"])[side]
    labels = np.empty(120, dtype=object)
    for source, (major, minor) in {"A": ("COVID", "NORMAL"), "B": ("NORMAL", "COVID")}.items():
        mine = np.flatnonzero(sources == source)
        labels[mine] = major
        labels[mine[:10]] = minor
    names = np.array([f"img{i:03d}.png" for i in range(120)])
    return X, labels.astype(str), sources, names, frame(names, labels.astype(str), side)


def test_label_issues_table_marks_the_flags_that_the_source_explains():
    X, labels, sources, names, runs = hospital_blobs()
    probabilities, classes = label_issues.out_of_fold_probabilities({"M": X}, labels, seed=0)
    table = label_issues.label_issues_table(names, labels, {"M_KMeans": runs}, probabilities, classes,
                                            sources=sources)
    assert table.columns[: len(label_issues.ISSUE_COLUMNS)].tolist() == label_issues.ISSUE_COLUMNS
    by_name = table.set_index("image_name")
    minority = pd.Series((sources == "A") & (labels == "NORMAL") | (sources == "B") & (labels == "COVID"), index=names)
    # the probe learned the hospital: every minority image is suggested its source's class, and only those
    assert by_name["source_explained"].astype(bool).reindex(names).tolist() == minority.tolist()
    assert minority.sum() == 20
    plain = label_issues.label_issues_table(names, labels, {"M_KMeans": runs}, probabilities, classes)
    assert plain["source_explained"].isna().all()
    pd.testing.assert_frame_equal(plain.drop(columns="source_explained"), table.drop(columns="source_explained"))


def test_noise_check_without_the_source_explained_flags_keeps_every_row_of_all_images():
    X, labels, sources, names, runs = hospital_blobs(seed=3)
    kwargs = dict(fractions=(0.1, 0.005), n_splits=3, seed=2)
    plain, _ = label_issues.noise_check(names, labels, {"M_KMeans": runs}, {"M": X}, **kwargs)
    check, _ = label_issues.noise_check(names, labels, {"M_KMeans": runs}, {"M": X}, sources=sources, **kwargs)
    assert check.columns.tolist() == label_issues.CHECK_COLUMNS and check.columns[-1] == "subset"
    assert plain["subset"].eq("all").all() and len(plain) == 8
    pd.testing.assert_frame_equal(check.iloc[:8], plain)  # the rows of all images, unchanged and first
    rest = check.iloc[8:]  # 0.5 % of 60 flips nothing: no subset rows for it
    assert rest["subset"].eq("not_source_explained").all() and rest["fraction"].eq(0.1).all()
    assert rest["signal"].tolist() == list(label_issues.SIGNALS)
    # a flipped majority image is suggested its source's class again: explained, and left out
    flipped, truth = label_issues.plant_flips(labels, 0.1, seed=2)
    n_flipped_majority = int((truth & (labels == np.where(sources == "A", "COVID", "NORMAL"))).sum())
    row = rest.iloc[0]
    assert n_flipped_majority > 0 and row["n_flipped"] <= int(truth.sum()) - n_flipped_majority
    assert row["n_images"] < 120 and row["prevalence"] == pytest.approx(row["n_flipped"] / row["n_images"])
    assert label_issues.on_all_images(check).equals(check.iloc[:8])


def test_the_headline_is_judged_on_all_images():
    check = pd.DataFrame({"fraction": [0.05] * 8, "signal": list(label_issues.SIGNALS) * 2,
                          "roc_auc": [0.7, 0.9, 0.95, 0.5, 0.99, 0.6, 0.7, 0.5],
                          "subset": ["all"] * 4 + ["not_source_explained"] * 4})
    assert label_issues.headline_signal(check, 0.05)[0] == "combined"
