"""Unit tests of the study's figures on small hand-written results."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from conftest import HAND_MADE_RESULTS as RESULTS
from matplotlib.patches import Rectangle
from sklearn.datasets import make_blobs

from cxrcluster import comparison_figures, figures

NOTE = "synthetic demo data - not evidence"



def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_heatmap_annotates_ok_cells_and_hatches_the_rest():
    fig = figures.heatmap(RESULTS, data_note=NOTE)
    ax, colourbar = fig.axes
    assert "Matched label change" in ax.get_title() and NOTE in ax.get_title()
    assert "%" in colourbar.get_ylabel()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["ResNet50", "VGG16"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["KMeans", "DBSCAN", "Spectral"]
    texts = _texts(ax)
    assert {"30.0", "12.5", "41.2", "skipped", "failed"} <= set(texts)
    assert "1.0" not in texts  # the failed run's value
    hatched = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()]
    assert sorted((p.get_x(), p.get_y()) for p in hatched) == [(0.5, 0.5), (1.5, 0.5)]
    assert len(fig.legends) == 1 and "failed" in fig.legends[0].get_texts()[0].get_text()


def test_heatmap_of_ari_without_blank_cells():
    fig = figures.heatmap(RESULTS[RESULTS["model"] == "ResNet50"], value="ari")
    ax, colourbar = fig.axes
    assert "Rand" in colourbar.get_ylabel()
    assert sorted(_texts(ax)) == ["0.20", "0.31", "0.45"]
    assert not [p for p in ax.patches if p.get_hatch()] and not fig.legends


def test_heatmap_marks_absent_runs_as_missing():
    fig = figures.heatmap(RESULTS[RESULTS["status"] == "ok"], value="ari")
    ax = fig.axes[0]
    assert sorted(_texts(ax)) == ["0.10", "0.20", "0.31", "0.45", "missing", "missing"]


def test_heatmap_rejects_an_unknown_metric():
    with pytest.raises(KeyError, match="accuracy"):
        figures.heatmap(RESULTS, value="accuracy")


def test_confusion_figure_counts_class_by_matched_cluster():
    frame = pd.DataFrame({
        "image_name": [f"i{k}" for k in range(9)],
        "label": ["A", "A", "A", "B", "B", "B", "C", "C", "C"],
        "cluster": [4, 4, 1, 1, 1, -1, 9, 7, 7],
        "matched_label": ["A", "A", "B", "B", "B", "", "", "C", "C"],
        "changed": [False, False, True, False, False, True, True, False, False],
    })
    fig = figures.confusion_figure(frame, "ResNet50", "KMeans", data_note=NOTE)
    ax, colourbar = fig.axes
    columns = [t.get_text() for t in ax.get_xticklabels()]
    assert columns == ["cluster 4\n\u2192 A", "cluster 1\n\u2192 B", "cluster 7\n\u2192 C",
                       "unmatched\n(1 cluster)", "noise"]
    expected = [[2, 1, 0, 0, 0],
                [0, 2, 0, 0, 1],
                [0, 0, 2, 1, 0]]
    assert [int(t) for t in _texts(ax)] == [n for row in expected for n in row]
    assert "ResNet50 + KMeans" in ax.get_title() and "33.3%" in ax.get_title() and NOTE in ax.get_title()
    assert "%" in colourbar.get_ylabel()


def test_embedding_figure_drops_nan_rows_and_draws_both_colourings():
    features, classes = make_blobs(n_samples=40, n_features=6, centers=3, random_state=0)
    features[[3, 17]] = np.nan
    labels = np.array(["COVID", "NORMAL", "PNEUMONIA"])[classes]
    clusters = classes.copy()
    clusters[:4] = -1
    fig = figures.embedding_figure(features, labels, clusters, method="pca", model="ResNet50",
                                   algorithm="KMeans", data_note=NOTE)
    by_label, by_cluster = fig.axes[:2]
    for ax in (by_label, by_cluster):
        assert sum(len(c.get_offsets()) for c in ax.collections) == 38
        assert NOTE in ax.get_title()
        assert ax.get_xlabel().startswith("PC 1")
    assert "by label" in by_label.get_title() and "by KMeans cluster (3 clusters)" in by_cluster.get_title()
    legend = [t.get_text() for t in by_cluster.get_legend().get_texts()]
    assert legend[0] == "noise (n=3)"  # rows 0-3 are noise, row 3 is NaN


def test_embedding_figure_accepts_columns_aligned_with_finite_rows_and_tsne():
    features, classes = make_blobs(n_samples=30, n_features=5, centers=2, random_state=1)
    features[0] = np.nan
    fig = figures.embedding_figure(features, classes[1:].astype(str), None, method="tsne", seed=0)
    assert len(fig.axes) == 1
    assert fig.axes[0].get_xlabel() == "t-SNE 1"
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 29
    with pytest.raises(ValueError, match="length 5"):
        figures.embedding_figure(features, classes[:5], None)
    with pytest.raises(ValueError, match="method"):
        figures.embedding_figure(features, classes, None, method="umap")


def test_walltime_figure_uses_a_log_scale_and_ok_runs_only():
    fig = figures.walltime_figure(RESULTS, data_note=NOTE)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert "(s, log scale)" in ax.get_ylabel()
    assert NOTE in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["KMeans", "DBSCAN", "Spectral"]  # by median time
    heights = sorted(p.get_height() for p in ax.patches if p.get_height() > 0)
    # Four ok runs (the 0 s run drawn at the 1 ms floor); NaN bars of absent runs are not drawn.
    assert heights == [1e-3, 0.5, 2.0, 40.0]


def test_save_figure_writes_a_png_atomically(tmp_path: Path):
    target = tmp_path / "figures" / "heatmap.png"
    figures.save_figure(figures.heatmap(RESULTS), target)
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert [p.name for p in target.parent.iterdir()] == ["heatmap.png"]


def test_save_figure_leaves_nothing_behind_on_failure(tmp_path: Path, monkeypatch):
    fig = figures.heatmap(RESULTS)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError):
        figures.save_figure(fig, tmp_path / "heatmap.png")
    assert list(tmp_path.iterdir()) == []


def test_with_data_note():
    assert figures.with_data_note("Title") == "Title"
    assert figures.with_data_note("Title", "demo") == "Title\n[demo]"


def test_matrix_figure_counts_and_axes():
    m = pd.DataFrame([[5, 1], [0, 4]], index=pd.Index(["A", "B"], name="true class"),
                     columns=pd.Index(["A", "B"], name="predicted class"))
    fig = figures.matrix_figure(m, "Probe confusion", data_note="demo")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert sorted(t.get_text() for t in ax.texts) == ["0", "1", "4", "5"]
    assert "[demo]" in ax.get_title()


def test_supervised_vs_clustering_draws_both_bests_and_each_ones_chance():
    classification = pd.DataFrame({"model": ["M1", "M2"], "accuracy_mean": [0.9, 0.8], "accuracy_std": [0.02, 0.05]})
    results = pd.DataFrame({"model": ["M1", "M1", "M1", "M2"], "clustering": ["KMeans", "DBSCAN", "Ward", "KMeans"],
                            "label_percentage_change": [20.0, 10.0, 5.0, 40.0], "ari": [0.5, 0.6, 0.9, 0.2],
                            "comparable_silhouette": [0.4, 0.1, 0.9, 0.3], "stability": [1.0, np.nan, np.nan, 1.0],
                            "chance_label_change": [60.0, 55.0, 66.0, 61.0],
                            "status": ["ok", "ok", "degenerate: 1 cluster", "failed: x"]})
    fig = comparison_figures.supervised_vs_clustering_figure(classification, results)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights[:2] == pytest.approx([90.0, 80.0])  # probe bars
    assert heights[2] == pytest.approx(90.0)  # M1 with labels: DBSCAN (10 %); the degenerate Ward never
    assert np.isnan(heights[3])  # M2: no ok run
    assert heights[4] == pytest.approx(80.0)  # M1 without labels: KMeans has the best silhouette
    chance = [seg[0][1] for lines in ax.collections for seg in lines.get_segments()
              if len(seg) and seg[0][1] == seg[-1][1]]  # horizontal ticks; error bars are vertical
    assert chance == pytest.approx([45.0, 40.0])  # 100 - chance change of DBSCAN, then of KMeans
    assert {t.get_text() for t in ax.texts} >= {"DBSCAN", "KMeans", "no ok run"}
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "with the labels" in legend and "without the labels" in legend and "chance" in legend


def test_variants_figure_has_three_panels_with_both_variants():
    comparison = pd.DataFrame({"model": ["M"], "best_label_change_full": [10.0], "best_label_change_masked": [20.0],
                               "kmeans_ari_full": [0.6], "kmeans_ari_masked": [0.4],
                               "probe_accuracy_full": [0.9], "probe_accuracy_masked": [0.85]})
    fig = comparison_figures.variants_figure(comparison)
    assert len(fig.axes) == 3
    assert [p.get_height() for p in fig.axes[1].patches] == pytest.approx([0.6, 0.4])


def test_heatmap_writes_each_change_beside_its_chance_and_hatches_degenerate_runs():
    results = RESULTS.assign(chance_label_change=[63.0, 62.0, 61.0, 64.0, np.nan, np.nan],
                             status=["ok", "degenerate: 1 cluster (fewer than 2)", "ok", "ok", "skipped: x", "failed: y"])
    ax = figures.heatmap(results).axes[0]
    texts = _texts(ax)
    assert "30.0  (chance 63)" in texts and "degenerate\n12.5" in texts
    assert "12.5  (chance 61)" in texts  # Spectral, a result
    assert "12.5  (chance 62)" not in texts  # DBSCAN is degenerate: not coloured as a result
    hatches = {p.get_hatch() for p in ax.patches if isinstance(p, Rectangle) and p.get_hatch()}
    assert hatches == {"xx", "///"}
    legend = " ".join(t.get_text() for t in ax.figure.legends[0].get_texts())
    assert "degenerate" in legend


def test_heatmap_of_one_model_and_many_algorithms_runs_down_the_rows():
    many = pd.DataFrame({"model": "M", "clustering": [f"A{i}" for i in range(12)], "ari": np.linspace(0, 1, 12),
                         "status": "ok"})
    ax = figures.heatmap(many, value="ari").axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"A{i}" for i in range(12)]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["M"]
