"""Unit tests of the clustering products' one owner: names, statuses, label CSVs, results tables, the best run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import HAND_MADE_RESULTS as RESULTS

from cxrcluster import data, features, results


@pytest.mark.parametrize(("status", "kind"), [
    ("ok", "ok"),
    (" ok ", "ok"),
    ("failed: MemoryError: needs 9 GiB", "failed"),
    ("skipped: needs ~3 GiB for 5000 images: over budget", "skipped"),
    (np.nan, "missing"),
    (None, "missing"),
])
def test_status_kind_reads_the_word_before_the_colon(status, kind):
    assert results.status_kind(status) == kind
    assert results.is_ok(status) is (kind == "ok")


def test_best_algorithm_ignores_runs_that_are_not_ok_and_breaks_ties_by_ari():
    assert results.best_algorithm(RESULTS, "ResNet50") == "Spectral"  # 12.5 %, ARI 0.45 beats 0.31
    assert results.best_algorithm(RESULTS, "VGG16") == "KMeans"  # not the failed Spectral run
    with pytest.raises(ValueError, match="DenseNet121"):
        results.best_algorithm(RESULTS, "DenseNet121")


def test_variant_summary_names_the_same_best_as_best_algorithm_on_a_tie():
    # DBSCAN and Spectral tie at 12.5 %; a sort on the change alone would pick DBSCAN (first row).
    probes = pd.DataFrame({"model": ["ResNet50", "VGG16"], "accuracy_mean": [0.9, 0.8]})
    summary = results.summarise_variant(RESULTS, probes)
    assert summary.loc["ResNet50", "best_algorithm"] == "Spectral"
    assert summary.loc["ResNet50", "best_label_change"] == 12.5
    assert summary.loc["VGG16", "best_algorithm"] == "KMeans"
    assert summary.loc["VGG16", "kmeans_ari"] == pytest.approx(0.1)
    assert summary.loc["VGG16", "probe_accuracy"] == pytest.approx(0.8)
    assert summary[["source_probe_accuracy", "within_source_change"]].isna().all().all()  # no source: no figures


def test_variant_summary_carries_the_source_probe_and_the_within_source_change():
    probes = pd.DataFrame({"model": ["ResNet50", "VGG16"], "accuracy_mean": [0.9, 0.8],
                           "source_balanced_accuracy": [0.99, np.nan], "within_source_balanced_accuracy": [0.7, 0.6]})
    within = pd.DataFrame({  # KMeans in two sources, weighted by their images; the failed run does not count
        "source": ["a", "b", "a", "a"], "model": ["ResNet50", "ResNet50", "ResNet50", "VGG16"],
        "clustering": ["KMeans", "KMeans", "Ward", "KMeans"], "n_images": [100, 300, 100, 100],
        "label_percentage_change": [10.0, 30.0, 1.0, np.nan], "chance_label_change": [40.0, 48.0, 40.0, np.nan],
        "status": ["ok", "ok", "ok", "failed: boom"]})
    summary = results.summarise_variant(RESULTS, probes, within_source=within)
    assert summary.loc["ResNet50", "source_probe_accuracy"] == pytest.approx(0.99)
    assert summary.loc["ResNet50", "within_source_probe_accuracy"] == pytest.approx(0.7)
    assert summary.loc["ResNet50", "within_source_change"] == pytest.approx((10 * 100 + 30 * 300) / 400)
    assert summary.loc["ResNet50", "within_source_chance"] == pytest.approx((40 * 100 + 48 * 300) / 400)
    assert np.isnan(summary.loc["VGG16", "within_source_change"]) and np.isnan(summary.loc["VGG16",
                                                                                         "source_probe_accuracy"])


def test_label_csv_name_and_round_trip(tmp_path: Path):
    assert results.label_csv_path(tmp_path, "ResNet50", "KMeans") == tmp_path / "ResNet50_KMeans.csv"
    other_model = tmp_path / "ResNet50_V2_KMeans.csv"  # not ResNet50's: an underscore follows the prefix
    other_model.write_text("x\n")
    stale = tmp_path / "ResNet50_Removed.csv"
    stale.write_text("x\n")
    written = results.write_cluster_labels(tmp_path, "ResNet50", {"KMeans": np.array([0, 0, 1, -1])},
                                           ["a.png", "b.png", "c.png", "d.png"], ["A", "A", "B", "B"])
    assert written == [tmp_path / "ResNet50_KMeans.csv"]
    assert not stale.exists() and other_model.exists()
    frame = results.read_cluster_labels(tmp_path, "ResNet50", "KMeans")
    assert list(frame.columns) == results.LABEL_FRAME_COLUMNS
    assert frame["changed"].dtype == bool
    assert frame["changed"].tolist() == [False, False, False, True]
    assert frame["matched_label"].tolist() == ["A", "A", "B", ""]  # noise is matched to no class
    np.testing.assert_array_equal(results.clusters_in_order(frame, ["d.png", "a.png", "zz.png"])[:2], [-1, 0])
    assert np.isnan(results.clusters_in_order(frame, ["zz.png"])[0])


def test_gather_results_keeps_the_models_order_and_names_the_missing(tmp_path: Path):
    for model, rows in RESULTS.groupby("model"):
        results.write_model_results(rows, tmp_path, model)
    gathered = results.gather_results(tmp_path, ["VGG16", "ResNet50"])
    assert gathered["model"].tolist() == ["VGG16"] * 3 + ["ResNet50"] * 3
    assert pd.api.types.is_string_dtype(gathered["status"]) and gathered["ari"].dtype == float
    with pytest.raises(FileNotFoundError, match="DenseNet121"):
        results.gather_results(tmp_path, ["VGG16", "DenseNet121"])


def test_label_manifest_lists_the_files_written(tmp_path: Path):
    labels_dir, results_dir = tmp_path / "clustering_labels", tmp_path / "results"
    ids = {"KMeans": np.array([0, 1]), "Ward": np.array([1, 0])}
    results.write_cluster_labels(labels_dir, "M", ids, ["a", "b"], ["A", "B"], results_dir=results_dir)
    assert results.read_label_manifest(results_dir, "M") == ["M_KMeans.csv", "M_Ward.csv"]
    assert results.label_manifest_path(results_dir, "M").read_text() == "M_KMeans.csv\nM_Ward.csv\n"
    results.write_cluster_labels(labels_dir, "M", {"Ward": ids["Ward"]}, ["a", "b"], ["A", "B"],
                                 results_dir=results_dir)
    assert results.read_label_manifest(results_dir, "M") == ["M_Ward.csv"]
    assert sorted(p.name for p in labels_dir.iterdir()) == ["M_Ward.csv"]
    assert results.read_label_manifest(results_dir, "absent") == []


def test_data_note_says_synthetic_or_how_many_images_from_where(tmp_path: Path):
    labels = pd.DataFrame({"image_name": ["a.png", "b.png", "c.png"], "label": ["B", "A", "B"],
                           "path": ["B/a.png", "A/b.png", "B/c.png"]})
    description = data.describe_dataset(labels, tmp_path)
    assert description["classes"] == {"A": 1, "B": 2} and description["n_images"] == 3
    assert description["synthetic"] is False
    assert data.data_note(description) == f"3 images from {tmp_path}"
    data.write_dataset_description(description, tmp_path / "dataset.json")
    assert data.read_dataset_description(tmp_path / "dataset.json") == description
    (tmp_path / "SYNTHETIC.md").write_text("demo")
    assert data.data_note(data.describe_dataset(labels, tmp_path)) == data.SYNTHETIC_NOTE
    (tmp_path / "bad.json").write_text('{"synthetic": true}')
    with pytest.raises(KeyError, match="n_images"):
        data.read_dataset_description(tmp_path / "bad.json")


def test_drop_unreadable_keeps_rows_without_nan_in_order():
    X = np.array([[1.0, 2.0], [np.nan, np.nan], [3.0, 4.0]])
    labels = pd.DataFrame({"image_name": ["a", "b", "c"], "label": ["A", "B", "A"]})
    X_ok, labels_ok, ok = features.drop_unreadable(X, labels)
    np.testing.assert_array_equal(X_ok, [[1.0, 2.0], [3.0, 4.0]])
    assert labels_ok["image_name"].tolist() == ["a", "c"] and labels_ok.index.tolist() == [0, 1]
    assert ok.tolist() == [True, False, True] == features.readable_rows(X).tolist()
    with pytest.raises(ValueError, match="2 labels rows"):
        features.drop_unreadable(X, labels.head(2))
