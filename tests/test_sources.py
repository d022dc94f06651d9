"""Disease or hospital: the source figures on hand-made partitions, and a planted shortcut the suite falls for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import entropy
from sklearn.metrics import mutual_info_score

from cxrcluster import clustering, products, sources

CONFIG = Path(__file__).resolve().parents[1] / "config" / "clustering.yaml"

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def crossed(n: int = 240):
    """Two labels crossed with two sources, balanced: neither says anything about the other."""
    labels = np.array(["NORMAL", "PNEUMONIA"] * (n // 2))
    partition = sources.SourcePartition(np.repeat(["north", "south"], n // 2), "source", "hand-made")
    return labels, partition


def test_a_clustering_that_is_the_source_follows_the_source():
    labels, partition = crossed()
    scores = sources.score_sources(labels, (partition.values == "south").astype(int), partition)
    assert scores["source_ari"] == 1.0 and scores["source_given_label"] == pytest.approx(1.0)
    assert scores["label_given_source"] == pytest.approx(0.0) and scores["label_given_source_p"] == 1.0
    assert scores["source_given_label_p"] == pytest.approx(1 / 201)  # no shuffle within a label does as well
    assert scores["follows"] == "source"


def test_a_clustering_that_is_the_label_within_each_source_follows_the_label():
    labels, partition = crossed()
    clusters = (labels == "PNEUMONIA").astype(int)
    scores = sources.score_sources(labels, clusters, partition)
    assert scores["label_given_source"] == pytest.approx(1.0) and scores["source_given_label"] == pytest.approx(0.0)
    assert scores["source_ari"] == pytest.approx(0.0, abs=0.01)
    assert scores["follows"] == "label"
    # both at once: four clusters, one per source and label
    both = sources.score_sources(labels, 2 * (partition.values == "south") + clusters, partition)
    assert both["follows"] == "both"


def test_a_random_clustering_follows_neither_and_its_figures_sit_at_their_chance_level():
    labels, partition = crossed()
    clusters = np.random.default_rng(7).integers(0, 3, labels.size)
    scores = sources.score_sources(labels, clusters, partition, n_permutations=200, seed=0)
    assert scores["follows"] == "neither"
    assert scores["label_given_source_p"] > 0.05 and scores["source_given_label_p"] > 0.05
    assert scores["label_given_source"] < 0.05 and scores["label_given_source_chance"] < 0.05
    # the same seed gives the same shuffles
    assert sources.score_sources(labels, clusters, partition, seed=0) == scores


def test_when_every_class_comes_from_one_source_source_given_label_is_zero_by_construction():
    # the real sample's design: COVID from one hospital, NORMAL and PNEUMONIA from another
    labels = np.repeat(["COVID", "NORMAL", "PNEUMONIA"], 40)
    partition = sources.SourcePartition(np.where(labels == "COVID", "hannover", "guangzhou"), "source", "hand-made")
    assert sources.classes_from_one_source(labels, partition)
    for clusters in (np.repeat([0, 1, 1], 40), np.repeat([0, 1, 2], 40),
                     np.random.default_rng(0).integers(0, 3, 120)):
        scores = sources.score_sources(labels, clusters, partition)
        assert scores["source_given_label"] == 0.0 and scores["source_given_label_p"] == 1.0
        assert scores["follows"] in ("label", "neither")
    # a clustering that is the source scores nothing within the one mixed source; the labels do
    assert sources.score_sources(labels, np.repeat([0, 1, 1], 40), partition)["label_given_source"] == 0.0
    assert sources.score_sources(labels, np.repeat([0, 1, 2], 40), partition)["follows"] == "label"
    assert not sources.classes_from_one_source(*crossed())


def test_conditional_information_is_the_weighted_mutual_information_within_groups_over_the_entropy_left():
    rng = np.random.default_rng(1)
    clusters, target, given = rng.integers(0, 4, 500), rng.integers(0, 3, 500), rng.integers(0, 2, 500)
    clusters[:200] = target[:200]
    weights = [(given == g).mean() for g in (0, 1)]
    information = sum(w * mutual_info_score(clusters[given == g], target[given == g]) for g, w in enumerate(weights))
    left = sum(w * entropy(np.bincount(target[given == g])) for g, w in enumerate(weights))
    assert sources.conditional_information(clusters, target, given) == pytest.approx(information / left)
    # nothing left to explain: 0, not a division by zero
    assert sources.conditional_information(clusters, given, given) == 0.0


def test_noise_is_one_more_group():
    labels, partition = crossed(120)
    clusters = (labels == "PNEUMONIA").astype(int)
    clusters[:10] = -1  # noise takes images of both labels: less information than a clean split
    assert 0.5 < sources.score_sources(labels, clusters, partition)["label_given_source"] < 1.0
    all_noise = sources.score_sources(labels, np.full(labels.size, -1), partition)
    assert all_noise["label_given_source"] == 0.0 and all_noise["follows"] == "neither"


# ---------------------------------------------------------------- the partition


def metadata(names, fmt="PNG", depth=8, size=(640, 520), error=""):
    return pd.DataFrame({"image_name": names, "label": "x", "path": names, "format": fmt, "mode": "L",
                         "bit_depth": depth, "width": size[0], "height": size[1], "file_size": 1000,
                         "manufacturer": "", "view_position": "", "error": error})


@pytest.mark.parametrize(("width", "height", "group"), [
    (224, 224, "≤256 px"), (256, 256, "≤256 px"), (257, 100, "≤512 px"), (640, 520, "≤1024 px"),
    (640, 713, "≤1024 px"), (2048, 2500, "≤4096 px"), (None, 10, "size ?")])
def test_size_groups_are_powers_of_two_of_the_longer_side(width, height, group):
    assert sources.size_group(width, height) == group


def test_the_partition_is_the_source_column_else_a_proxy_from_the_audit_else_none(tmp_path):
    labels = pd.DataFrame({"image_name": ["a.png", "b.png", "c.jpg", "d.jpg"], "label": ["C", "C", "N", "N"]})
    meta = pd.concat([metadata(["a.png", "b.png"]), metadata(["c.jpg"], "JPEG", 24, (224, 224)),
                      metadata(["d.jpg"], "", None, (None, None), error="OSError: truncated")])
    named = sources.source_partition(labels.assign(source=["h", "h", "g", "g"]), meta, origin="metadata.csv")
    assert named.kind == "source" and named.values.tolist() == ["h", "h", "g", "g"] and named.origin == "metadata.csv"
    assert not named.is_proxy and named.describe() == "sources from metadata.csv: g (2), h (2)"

    proxy = sources.source_partition(labels, meta.iloc[::-1])  # matched by name, not by position
    assert proxy.kind == "proxy" and proxy.is_proxy and "PROXY" in proxy.describe()
    assert proxy.values.tolist() == ["PNG 8-bit ≤1024 px"] * 2 + ["JPEG 24-bit ≤256 px", "unreadable"]
    assert proxy.subset([True, False, True, False]).values.tolist() == ["PNG 8-bit ≤1024 px", "JPEG 24-bit ≤256 px"]

    path = tmp_path / "metadata.csv"
    meta.to_csv(path, index=False)
    from_file = sources.source_partition(labels, path)
    assert from_file.values.tolist() == proxy.values.tolist()
    assert sources.read_audit_metadata(path)["bit_depth"].dtype == np.float64  # one image has none

    assert sources.source_partition(labels) is None
    with pytest.raises(ValueError, match="lacks 1 of 4 images .*d.jpg.*rerun 01-audit-data"):
        sources.source_partition(labels, meta.iloc[:3])


def test_columns_are_appended_to_every_row_and_nothing_else_changes():
    labels, partition = crossed(60)
    table = pd.DataFrame({"model": "M", "clustering": ["KMeans", "OPTICS", "DBSCAN"], "ari": [0.5, np.nan, 0.1],
                          "status": ["ok", "failed: boom", "degenerate: 1 cluster"]})
    ids = {"KMeans": (labels == "PNEUMONIA").astype(int), "DBSCAN": np.zeros(labels.size, dtype=int)}
    out = sources.add_source_columns(table, ids, labels, partition, n_permutations=20)
    assert out.columns.tolist() == table.columns.tolist() + sources.SOURCE_COLUMNS
    pd.testing.assert_frame_equal(out[table.columns], table)
    assert out["source_kind"].tolist() == ["source"] * 3
    assert out["follows"].tolist() == ["label", "", "neither"]
    assert out.loc[1, sources.SOURCE_COLUMNS[1:-1]].isna().all()
    unknown = sources.add_source_columns(table, ids, labels, None)
    assert unknown["source_kind"].tolist() == ["none"] * 3 and unknown["label_given_source"].isna().all()


def test_only_known_sources_with_two_classes_of_enough_images_are_eligible():
    labels = np.array(["C"] * 30 + ["N"] * 25 + ["P"] * 19 + ["N"] * 40)
    values = np.array(["a"] * 74 + ["b"] * 40)
    assert sources.eligible_sources(labels, sources.SourcePartition(values, "source", "x")) == {"a": ["C", "N"]}
    assert sources.eligible_sources(labels, sources.SourcePartition(values, "source", "x"), min_images=30) == {}
    assert sources.eligible_sources(labels, sources.SourcePartition(values, "proxy", "x")) == {}
    assert sources.eligible_sources(labels, None) == {}
    assert "proxy" in sources.why_no_source_test(sources.SourcePartition(values, "proxy", "x"))
    assert sources.source_folder_name("Guangzhou Women's / Children") == "Guangzhou-Women-s-Children"


# ---------------------------------------------------------------- a planted shortcut


def planted(seed: int = 0, d: int = 20):
    """Each class mostly from its own source, whose images carry a large marker; the class is a smaller signal."""
    rng = np.random.default_rng(seed)
    design = {("north", "COVID"): 60, ("north", "NORMAL"): 20, ("south", "NORMAL"): 60,
              ("south", "PNEUMONIA"): 20, ("east", "PNEUMONIA"): 60, ("east", "COVID"): 20}
    marker = {"north": 0, "south": 1, "east": 2}
    signal = {"COVID": 3, "NORMAL": 4, "PNEUMONIA": 5}
    X, rows = [], []
    for (source, label), n in design.items():
        centre = np.zeros(d)
        centre[marker[source]], centre[signal[label]] = 25.0, 6.0
        X.append(centre + rng.normal(size=(n, d)))
        rows += [(f"{source}-{label}-{i}.png", label, source) for i in range(n)]
    return np.vstack(X), pd.DataFrame(rows, columns=["image_name", "label", "source"])


@pytest.fixture(scope="module")
def small_config():
    shipped = clustering.load_config(CONFIG)
    cfg = {k: v for k, v in shipped.items() if k != "algorithms"}
    cfg["seeds"] = 2
    cfg["algorithms"] = {name: shipped["algorithms"][name] for name in ("KMeans", "AgglomerativeWard")}
    return cfg


def test_a_planted_source_marker_is_followed_pooled_and_the_classes_are_found_within_each_source(small_config, tmp_path):
    X, labels = planted()
    partition = sources.source_partition(labels)
    table, ids = clustering.run_suite(X, labels["label"].to_numpy(), small_config, model="M", progress=False,
                                      background=False)
    scored = sources.add_source_columns(table, ids, labels["label"].to_numpy(), partition,
                                        n_permutations=small_config["chance_permutations"], seed=small_config["seed"])
    kmeans = scored.set_index("clustering").loc["KMeans"]
    # KMeans splits on the marker: the sources, a quarter of every class away from its label
    assert kmeans["follows"] == "source" and kmeans["source_ari"] > 0.95
    assert kmeans["label_percentage_change"] == pytest.approx(25.0, abs=2)

    within, runs = sources.run_within_source(X, labels, partition, small_config, model="M", progress=False,
                                             background=False)
    assert within.columns.tolist() == sources.WITHIN_COLUMNS
    assert sorted(set(within["source"])) == ["east", "north", "south"] and len(within) == 6
    assert (within["n_images"] == 80).all() and (within["status"] == "ok").all()
    assert within.loc[within["source"] == "north", "classes"].tolist() == ["COVID, NORMAL"] * 2
    assert (within["label_percentage_change"] < 5).all() and (within["chance_p"] < 0.05).all()
    subset, cluster_ids = runs["north"]
    assert set(subset["label"]) == {"COVID", "NORMAL"} and len(cluster_ids["KMeans"]) == 80

    path = products.WITHIN_SOURCE_RESULTS.write(within, root=tmp_path)
    pd.testing.assert_frame_equal(products.WITHIN_SOURCE_RESULTS.read(path), within, check_dtype=False)
    side = sources.pooled_and_within(scored, within)
    assert side.loc[0, "pooled change %"] == pytest.approx(kmeans["label_percentage_change"], abs=0.05)
    sentence = sources.headline(scored, within)
    assert sentence.startswith("KMeans on M features: 25.0 %") and "within the source north alone" in sentence


def test_no_eligible_source_gives_the_header_alone(small_config, tmp_path):
    X, labels = planted()
    proxy = sources.SourcePartition(labels["source"].to_numpy(), "proxy", "x")
    within, runs = sources.run_within_source(X, labels, proxy, small_config, progress=False, background=False)
    assert within.empty and runs == {} and within.columns.tolist() == sources.WITHIN_COLUMNS
    path = products.WITHIN_SOURCE_RESULTS.write(within, root=tmp_path)
    assert path.read_text().strip() == ",".join(sources.WITHIN_COLUMNS)
    assert products.WITHIN_SOURCE_RESULTS.read(path).empty


def test_the_headline_names_the_pooled_figure_alone_without_a_within_source_run():
    pooled = pd.DataFrame({"model": "M", "clustering": ["Ward", "KMeans"], "label_percentage_change": [30.0, 21.9],
                           "chance_label_change": [60.0, 62.9], "status": ["ok", "ok"]})
    sentence = sources.headline(pooled, sources.empty_within_results())
    assert sentence.startswith("KMeans on M features: 21.9 %") and "No within-source figure" in sentence
    assert sources.headline(pooled.assign(status="failed: x")) == ""
    assert sources.pooled_and_within(pooled, sources.empty_within_results()).empty


def test_the_source_heatmaps_draw_three_grids_and_the_side_by_side_bars_each_run():
    import matplotlib

    matplotlib.use("Agg")
    from cxrcluster import comparison_figures

    pooled = pd.DataFrame({"model": "M", "clustering": ["KMeans", "Ward", "OPTICS"],
                           "label_percentage_change": [21.9, 25.0, 60.0], "chance_label_change": [62.9, 63.0, 64.0],
                           "chance_p": 0.005, "status": ["ok", "ok", "degenerate: 1 cluster"],
                           "label_given_source": [0.4, 0.3, 0.0], "label_given_source_p": [0.005, 0.01, 1.0],
                           "source_given_label": 0.0, "source_given_label_p": 1.0})
    fig = comparison_figures.source_heatmaps(pooled, data_note="note", notes=["the sources are a PROXY"])
    assert len(fig.subfigs) == 3 and "PROXY" in fig.get_suptitle()
    texts = [t.get_text() for sub in fig.subfigs for ax in sub.axes for t in ax.texts]
    assert "21.9  (chance 63)" in texts and "0.40  (p 0.005)" in texts and "0.00  (p 1.000)" in texts
    assert len(fig.legends) == 1  # one legend for the three grids
    within = pooled[["model", "clustering", "label_percentage_change", "chance_label_change", "chance_p",
                     "status"]].assign(source="g", classes="N, P", label_percentage_change=[27.1, 30.0, 50.0],
                                       chance_label_change=47.4)
    side = sources.pooled_and_within(pooled, within)
    assert side["within status"].tolist() == ["ok", "ok", "degenerate"]
    fig = comparison_figures.within_source_figure(side)
    ax = fig.axes[0]
    assert sorted(round(p.get_width(), 1) for p in ax.patches) == [21.9, 25.0, 27.1, 30.0]
    assert "degenerate" in [t.get_text() for t in ax.texts]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["pooled: every class and source", "within g"]
