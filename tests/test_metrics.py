"""Label-change metrics against hand-computed cases."""

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from cxrcluster import metrics

C, N, P = "COVID", "NORMAL", "PNEUMONIA"

# (labels, clusters, matched change %, raw change %), worked out by hand
CASES = {
    "perfect, ids in class order": ([C, C, N, N, P, P], [0, 0, 1, 1, 2, 2], 0.0, 0.0),
    "perfect, ids permuted": ([C, C, N, N, P, P], [2, 2, 0, 0, 1, 1], 0.0, 100.0),
    "one image misplaced": ([C, C, N, N, P, P], [1, 1, 2, 2, 0, 2], 100 / 6, 100 * 5 / 6),
    "all noise": ([C, N, P, C], [-1, -1, -1, -1], 100.0, 100.0),
    "noise counts as changed": ([C, C, C, N, N, N], [0, 0, -1, 1, 1, 1], 100 / 6, 100 / 6),
    # cluster 1 is surplus: 2 -> NORMAL (3), 0 -> COVID (2), 1 left unmatched
    "more clusters than classes": ([C, C, C, N, N, N], [0, 0, 1, 2, 2, 2], 100 / 6, 100 * 4 / 6),
    # one cluster for NORMAL and PNEUMONIA: one of the two classes loses
    "fewer clusters than classes": ([C, C, N, N, P, P], [0, 0, 1, 1, 1, 1], 100 / 3, 100 / 3),
    # both clusters are mostly COVID; one-to-one matching gives cluster 1 to NORMAL
    "shared majority class": ([C, C, C, N], [0, 0, 1, 1], 25.0, 25.0),
    # largest cell first (0 -> COVID, 5) would total 5; the optimum 0 -> NORMAL, 1 -> COVID totals 8
    "greedy is not optimal": ([C] * 5 + [N] * 4 + [C] * 4, [0] * 9 + [1] * 4, 100 * 5 / 13, 100 * 8 / 13),
}


@pytest.mark.parametrize("labels, clusters, matched, raw", CASES.values(), ids=CASES.keys())
def test_label_change_by_hand(labels, clusters, matched, raw):
    assert metrics.matched_label_change(labels, clusters) == pytest.approx(matched)
    assert metrics.raw_label_change(labels, clusters) == pytest.approx(raw)


def test_encode_labels_sorts_classes():
    codes, classes = metrics.encode_labels([P, C, N, C])
    assert classes == [C, N, P]
    np.testing.assert_array_equal(codes, [2, 0, 1, 0])


@pytest.mark.parametrize(
    "labels, clusters, expected",
    [
        ([C, C, N, N, P, P], [2, 2, 0, 0, 1, 1], {2: C, 0: N, 1: P}),
        ([C, C, C, N, N, N], [0, 0, 1, 2, 2, 2], {0: C, 2: N}),
        ([C, C, N, N], [-1, 0, 0, 0], {0: N}),
        ([C, N], [-1, -1], {}),
    ],
)
def test_match_clusters(labels, clusters, expected):
    assert metrics.match_clusters(labels, clusters) == expected


def test_label_table_five_rows():
    table = metrics.label_table(
        ["a.png", "b.png", "c.png", "d.png", "e.png"],
        [C, C, N, N, P],
        [1, 1, 0, 1, -1],
    )
    assert list(table.columns) == ["image_name", "label", "cluster", "matched_label", "changed"]
    assert table["image_name"].tolist() == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    assert table["cluster"].tolist() == [1, 1, 0, 1, -1]
    # cluster 1 -> COVID (2 of 3), cluster 0 -> NORMAL, noise unmatched
    assert table["matched_label"].iloc[:4].tolist() == [C, C, N, C]
    assert pd.isna(table["matched_label"].iloc[4])
    assert table["changed"].dtype == bool
    assert table["changed"].tolist() == [False, False, False, True, True]
    assert 100 * table["changed"].mean() == pytest.approx(
        metrics.matched_label_change(table["label"], table["cluster"])
    )


def test_label_table_csv_leaves_unmatched_empty(tmp_path):
    table = metrics.label_table(["a", "b", "c", "d"], [C, N, N, N], [0, 1, 1, 2])
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    assert path.read_text().splitlines() == [
        "image_name,label,cluster,matched_label,changed",
        "a,COVID,0,COVID,False",
        "b,NORMAL,1,NORMAL,False",
        "c,NORMAL,1,NORMAL,False",
        "d,NORMAL,2,,True",
    ]


def test_ari_nmi_equal_sklearn_with_noise_as_its_own_group():
    rng = np.random.default_rng(3)
    labels = rng.choice([C, N, P], size=200)
    clusters = rng.integers(-1, 4, size=200)
    scores = metrics.score_clustering(labels, clusters)
    assert scores["ari"] == pytest.approx(adjusted_rand_score(labels, clusters))
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters))


def test_score_clustering_by_hand():
    labels = [C, C, C, N, N, P]
    clusters = [0, 0, 1, 1, 1, -1]
    X = np.array([[0.0], [0.1], [5.0], [5.1], [5.2], [9.0]])
    scores = metrics.score_clustering(labels, clusters, X)
    assert set(scores) == {
        "label_percentage_change",
        "raw_label_change",
        "ari",
        "nmi",
        "purity",
        "silhouette",
        "n_clusters",
        "noise_fraction",
    }
    # cluster 0: 2 of 2 COVID; cluster 1: 2 of 3 NORMAL; noise impure
    assert scores["purity"] == pytest.approx(4 / 6)
    assert scores["n_clusters"] == 2
    assert scores["noise_fraction"] == pytest.approx(1 / 6)
    assert scores["label_percentage_change"] == pytest.approx(200 / 6)
    # silhouette on the clustered points only
    assert scores["silhouette"] == pytest.approx(silhouette_score(X[:5], clusters[:5]))


def test_all_noise_scores():
    scores = metrics.score_clustering([C, N, P], [-1, -1, -1], np.eye(3))
    assert scores["label_percentage_change"] == 100.0
    assert scores["purity"] == 0.0
    assert scores["n_clusters"] == 0
    assert scores["noise_fraction"] == 1.0
    assert math.isnan(scores["silhouette"])


def test_silhouette_nan_with_one_cluster_or_no_features():
    assert math.isnan(metrics.score_clustering([C, N, P], [0, 0, 0], np.eye(3))["silhouette"])
    assert math.isnan(metrics.score_clustering([C, N, P], [0, 1, 1])["silhouette"])


def test_silhouette_is_sampled_above_the_limit_and_seeded():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    clusters = (X[:, 0] > 0).astype(int)
    labels = np.where(clusters == 1, C, N)
    full = metrics.score_clustering(labels, clusters, X, silhouette_max_n=300)["silhouette"]
    assert full == pytest.approx(silhouette_score(X, clusters))
    a = metrics.score_clustering(labels, clusters, X, silhouette_max_n=50, seed=1)["silhouette"]
    b = metrics.score_clustering(labels, clusters, X, silhouette_max_n=50, seed=1)["silhouette"]
    c = metrics.score_clustering(labels, clusters, X, silhouette_max_n=50, seed=2)["silhouette"]
    assert a == b
    assert a != full and a != c


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="labels"):
        metrics.matched_label_change([C, N], [0, 1, 2])
    with pytest.raises(ValueError, match="image names"):
        metrics.label_table(["a"], [C, N], [0, 1])


def test_chance_of_one_cluster_is_exactly_one_minus_the_largest_class():
    labels = ["A"] * 5 + ["B"] * 3 + ["C"] * 2
    # every shuffle of one cluster is the same clustering: chance equals the observed change
    assert metrics.chance_label_change(labels, [0] * 10, n_permutations=7) == (50.0, 1.0)
    assert metrics.matched_label_change(labels, [0] * 10) == 50.0


def test_chance_of_two_pairs_matches_the_enumeration():
    # 6 ways to place two cluster-0 ids among AABB; 2 keep every label, 4 change half: 4/6 x 50 %
    chance, p = metrics.chance_label_change(["A", "A", "B", "B"], [0, 0, 1, 1], n_permutations=4000, seed=3)
    assert chance == pytest.approx(100 / 3, abs=1.0)
    assert p == pytest.approx(1 / 3, abs=0.02)  # shuffles as good as the perfect split: 2 of 6


def test_chance_of_a_perfect_clustering_of_balanced_classes():
    labels = np.repeat(["A", "B", "C"], 50)
    chance, p = metrics.chance_label_change(labels, np.repeat([2, 0, 1], 50), n_permutations=200, seed=0)
    assert chance == pytest.approx(61.5, abs=1.5)  # random 3-way splits of 150 images, after matching
    assert p == pytest.approx(1 / 201)  # no shuffle is as good
    again = metrics.chance_label_change(labels, np.repeat([2, 0, 1], 50), n_permutations=200, seed=0)
    assert again == (chance, p)  # seeded
    with pytest.raises(ValueError, match="n_permutations"):
        metrics.chance_label_change(labels, np.repeat([2, 0, 1], 50), n_permutations=0)


def test_comparable_silhouette_counts_noise_as_zero():
    X = np.array([[0.0], [0.1], [5.0], [5.1], [9.0], [20.0]])
    clusters = np.array([0, 0, 1, 1, -1, -1])
    kept = silhouette_score(X[:4], clusters[:4])
    assert metrics.comparable_silhouette(X, clusters) == pytest.approx(kept * 4 / 6)
    assert metrics.comparable_silhouette(X[:4], clusters[:4]) == pytest.approx(kept)
    assert math.isnan(metrics.comparable_silhouette(X, [0, 0, 0, 0, -1, -1]))
