"""Every notebook, 00 to 10, executed headlessly through papermill on tiny inputs, as a researcher's run would."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrcluster import demo
from cxrcluster.paths import PROJECT_ROOT

papermill = pytest.importorskip("papermill")
NOTEBOOKS = PROJECT_ROOT / "notebooks"
KERNEL = "cxrcluster"


def execute(name: str, out: Path, **parameters) -> None:
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out / f"{name}.ipynb"),
                               parameters=parameters, kernel_name=KERNEL, progress_bar=False)


def test_notebooks_have_one_parameters_cell_of_literals_and_no_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = json.loads(path.read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, path.name
        for line in "".join(tagged[0]["source"]).splitlines():
            assert line.startswith("#") or " = " in line and "(" not in line, f"{path.name}: {line}"
        assert all(not c.get("outputs") and not c.get("execution_count")
                   for c in nb["cells"] if c["cell_type"] == "code"), path.name


@pytest.mark.notebook
def test_notebooks_in_sequence_write_what_they_promise(tmp_path):
    data_dir = demo.write_demo_dataset(tmp_path / "demo", per_class=6, size=96)
    out = tmp_path / "out"
    out.mkdir()
    labels_csv, dataset_json = out / "original_labels.csv", out / "reports" / "dataset.json"

    execute("00-prepare-data", out, data_dir=str(data_dir), original_labels_csv=str(labels_csv),
            dataset_json=str(dataset_json))
    labels = pd.read_csv(labels_csv)
    assert list(labels.columns) == ["image_name", "label", "path"] and len(labels) == 18
    assert json.loads(dataset_json.read_text())["synthetic"] is True

    execute("01-audit-data", out, data_dir=str(data_dir), original_labels_csv=str(labels_csv),
            dataset_json=str(dataset_json), audit_dir=str(out / "audit"),
            duplicates_csv=str(out / "duplicates.csv"), figures_dir=str(out / "figures"))
    assert len(pd.read_csv(out / "audit" / "metadata.csv")) == 18
    assert set(json.loads((out / "audit" / "confound.json").read_text())) >= {"confounded", "message"}
    assert list(pd.read_csv(out / "duplicates.csv").columns)[:2] == ["image_a", "image_b"]
    assert (out / "figures" / "audit.png").stat().st_size > 1000

    execute("02-extract-features", out, model="MobileNetV2-0.35", weights="none", data_dir=str(data_dir),
            original_labels_csv=str(labels_csv), features_dir=str(out / "features"), batch_size=8)
    X = np.load(out / "features" / "MobileNetV2-0.35.npy", allow_pickle=False)
    assert X.shape == (18, 1280) and X.dtype == np.float32
    assert json.loads((out / "features" / "MobileNetV2-0.35.json").read_text())["trained"] is False

    config = yaml.safe_load((PROJECT_ROOT / "config" / "clustering.yaml").read_text())
    keep = ["KMeans", "AgglomerativeWard", "DBSCAN"]
    config["algorithms"] = {k: v for k, v in config["algorithms"].items() if k in keep}
    config["seeds"] = 2
    (out / "clustering.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    stale = out / "clustering_labels" / "MobileNetV2-0.35_Removed.csv"
    stale.parent.mkdir()
    stale.write_text("image_name,label,cluster,matched_label,changed\n")
    execute("03-cluster", out, model="MobileNetV2-0.35", original_labels_csv=str(labels_csv),
            features_dir=str(out / "features"), config=str(out / "clustering.yaml"),
            clustering_labels_dir=str(out / "clustering_labels"), results_dir=str(out / "results"))
    results = pd.read_csv(out / "results" / "MobileNetV2-0.35.csv")
    assert results["clustering"].tolist() == keep
    assert list(results.columns[:3]) == ["model", "clustering", "label_percentage_change"]
    assert results["label_percentage_change"].between(0, 100).all()
    assert not stale.exists()
    for algo in results.loc[results["status"] == "ok", "clustering"]:
        table = pd.read_csv(out / "clustering_labels" / f"MobileNetV2-0.35_{algo}.csv")
        assert list(table.columns) == ["image_name", "label", "cluster", "matched_label", "changed"]
        assert table["image_name"].tolist() == labels["image_name"].tolist()

    execute("04-report", out, models="MobileNetV2-0.35", data_dir=str(data_dir), original_labels_csv=str(labels_csv),
            results_dir=str(out / "results"), clustering_labels_dir=str(out / "clustering_labels"),
            features_dir=str(out / "features"), dataset_json=str(dataset_json),
            confound_json=str(out / "audit" / "confound.json"), results_csv=str(out / "clustering_results.csv"),
            drift_csv=str(out / "label_drift.csv"), figures_dir=str(out / "figures"), embedding="pca")
    gathered = pd.read_csv(out / "clustering_results.csv")
    pd.testing.assert_frame_equal(gathered, results)
    drifted = pd.read_csv(out / "label_drift.csv")
    assert sorted(drifted["image_name"]) == sorted(labels["image_name"])
    assert drifted["drift_share"].between(0, 1).all()
    for name in ["label_change_heatmap", "ari_heatmap", "walltime", "confusion_MobileNetV2-0.35",
                 "embedding_MobileNetV2-0.35", "drift_gallery"]:
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, name

    # 05: the linear probe on the same features, beside the clustering
    execute("05-supervised", out, models="MobileNetV2-0.35", data_dir=str(data_dir),
            original_labels_csv=str(labels_csv), features_dir=str(out / "features"),
            results_csv=str(out / "clustering_results.csv"), dataset_json=str(dataset_json),
            classification_csv=str(out / "classification_results.csv"), figures_dir=str(out / "figures"),
            n_splits=3)
    probe = pd.read_csv(out / "classification_results.csv")
    assert probe["model"].tolist() == ["MobileNetV2-0.35"]
    assert probe.loc[0, "n_images"] == 18 and probe.loc[0, "n_splits"] == 3
    assert 0 <= probe.loc[0, "accuracy_mean"] <= 1 and not probe.loc[0, "grouped_by_patient"]
    for name in ["probe_confusion_MobileNetV2-0.35", "supervised_vs_clustering"]:
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, name

    # 10: label issues per image and the planted-noise check (0.2 of 6 images per class flips 1 each)
    execute("10-label-issues", out, models="MobileNetV2-0.35", data_dir=str(data_dir),
            original_labels_csv=str(labels_csv), features_dir=str(out / "features"),
            results_csv=str(out / "clustering_results.csv"), clustering_labels_dir=str(out / "clustering_labels"),
            duplicates_csv=str(out / "duplicates.csv"), dataset_json=str(dataset_json),
            label_issues_csv=str(out / "label_issues.csv"), noise_check_csv=str(out / "label_noise_check.csv"),
            figures_dir=str(out / "figures"), fractions="0.05 0.2", n_splits=3, per_class=2)
    issues = pd.read_csv(out / "label_issues.csv")
    assert sorted(issues["image_name"]) == sorted(labels["image_name"]) and issues["rank"].tolist() == list(range(1, 19))
    assert {"cleanlab_quality_MobileNetV2-0.35", "drift_share", "combined_score"} <= set(issues.columns)
    check = pd.read_csv(out / "label_noise_check.csv")
    assert check["n_flipped"].tolist() == [0] * 4 + [3] * 4 and check.loc[4:, "roc_auc"].between(0, 1).all()
    for name in ["label_noise_check", "label_issues_gallery"]:
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, name

    # 11: each source holding two classes clustered on its own (here NORMAL and PNEUMONIA share one)
    with_sources = labels.assign(source=labels["label"].map({"COVID": "h1"}).fillna("h2"))
    with_sources.to_csv(out / "labels_with_sources.csv", index=False)
    within_config = {**config, "algorithms": {k: v for k, v in config["algorithms"].items() if k != "DBSCAN"}}
    (out / "within.yaml").write_text(yaml.safe_dump(within_config, sort_keys=False))
    execute("11-within-source", out, models="MobileNetV2-0.35", original_labels_csv=str(out / "labels_with_sources.csv"),
            features_dir=str(out / "features"), audit_metadata_csv=str(out / "audit" / "metadata.csv"),
            dataset_json=str(dataset_json), config=str(out / "within.yaml"),
            within_source_csv=str(out / "within_source_results.csv"),
            within_source_labels_dir=str(out / "clustering_labels" / "within_source"), min_images=3)
    within = pd.read_csv(out / "within_source_results.csv")
    assert within.columns.tolist()[:5] == ["source", "model", "clustering", "n_images", "classes"]
    assert within["clustering"].tolist() == ["KMeans", "AgglomerativeWard"] and set(within["source"]) == {"h2"}
    assert (within["n_images"] == 12).all() and (within["classes"] == "NORMAL, PNEUMONIA").all()
    for algo in within["clustering"]:
        table = pd.read_csv(out / "clustering_labels" / "within_source" / "h2" / f"MobileNetV2-0.35_{algo}.csv")
        assert sorted(table["label"].unique()) == ["NORMAL", "PNEUMONIA"] and len(table) == 12

    # 06: Grad-CAM and saliency through the probe, and the KMeans cluster's Grad-CAM for drifted images
    execute("06-interpretability", out, model="MobileNetV2-0.35", weights="none", data_dir=str(data_dir),
            original_labels_csv=str(labels_csv), features_dir=str(out / "features"),
            clustering_labels_dir=str(out / "clustering_labels"), drift_csv=str(out / "label_drift.csv"),
            config=str(out / "clustering.yaml"), dataset_json=str(dataset_json),
            summary_json=str(out / "interpretability.json"), figures_dir=str(out / "figures"),
            per_class=1, n_drifted=2, smoothgrad_n=2)
    summary = json.loads((out / "interpretability.json").read_text())
    assert summary["trained"] is False and summary["cluster_algorithm"] == "KMeans"
    assert len(summary["examples"]) == 3 and set(summary["examples"]) <= set(labels["image_name"])
    assert summary["drifted"] == drifted["image_name"].head(2).tolist()
    assert 0 <= summary["cluster_model_agrees"] <= 2
    for name in summary["figures"]:
        assert (out / "figures" / name).stat().st_size > 1000, name

    # 07: the lung-masked copy of the data, same names, with its mask report
    masked_data = out / "masked" / "data"
    execute("07-mask-lungs", out, data_dir=str(data_dir), masked_dir=str(masked_data),
            masks_csv=str(out / "masked" / "masks.csv"), figures_dir=str(out / "masked" / "figures"))
    masks = pd.read_csv(out / "masked" / "masks.csv")
    assert sorted(masks["image_name"]) == sorted(labels["image_name"])
    assert masks["lung_fraction"].between(0, 1).all()
    assert sorted(p.relative_to(masked_data).as_posix() for p in masked_data.rglob("*.png")) == \
        sorted(labels["path"])
    assert (out / "masked" / "figures" / "mask_qa.png").stat().st_size > 1000

    # 08: full versus masked, here with a masked variant whose results are written by hand
    masked_root = out / "masked"
    (masked_root / "reports").mkdir(exist_ok=True)
    gathered.assign(label_percentage_change=gathered["label_percentage_change"] + 5.0).to_csv(
        masked_root / "clustering_results.csv", index=False)
    probe.assign(accuracy_mean=0.5).to_csv(masked_root / "classification_results.csv", index=False)
    execute("08-compare-variants", out, full_dir=str(out), masked_dir=str(masked_root),
            comparison_csv=str(out / "comparison.csv"), figures_dir=str(out / "figures"))
    comparison = pd.read_csv(out / "comparison.csv").set_index("model").loc["MobileNetV2-0.35"]
    ok = gathered[gathered["status"] == "ok"]
    assert comparison["best_label_change_full"] == pytest.approx(ok["label_percentage_change"].min())
    assert comparison["best_label_change_masked"] == pytest.approx(ok["label_percentage_change"].min() + 5.0)
    assert comparison["probe_accuracy_full"] == pytest.approx(probe.loc[0, "accuracy_mean"])
    assert comparison["probe_accuracy_masked"] == 0.5
    assert (out / "figures" / "variants_comparison.png").stat().st_size > 1000

    # 09: every configured algorithm on each candidate preparation
    small = {**config, "algorithms": {k: v for k, v in config["algorithms"].items() if k in ("KMeans", "DBSCAN")}}
    (out / "small.yaml").write_text(yaml.safe_dump(small, sort_keys=False))
    execute("09-compare-preparations", out, model="MobileNetV2-0.35", original_labels_csv=str(labels_csv),
            features_dir=str(out / "features"), config=str(out / "small.yaml"), dataset_json=str(dataset_json),
            preparations_csv=str(out / "preparations.csv"), figures_dir=str(out / "figures"))
    compared = pd.read_csv(out / "preparations.csv")
    assert len(compared) == 2 * 5 and compared["preparation_name"].nunique() == 5
    assert set(compared.loc[compared["preparation_name"] == "pca50+umap10", "preparation"]) == {
        "pca(18)+umap(10,15,0)"}
    assert (out / "figures" / "preparations_label_change.png").stat().st_size > 1000
