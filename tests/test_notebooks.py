"""Every notebook executed headlessly through papermill on tiny inputs, as a researcher's run would."""

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


@pytest.mark.slow
def test_notebooks_in_sequence_write_what_they_promise(tmp_path):
    data_dir = demo.write_demo_dataset(tmp_path / "demo", per_class=6, size=96)
    out = tmp_path / "out"
    out.mkdir()
    labels_csv, dataset_json = out / "original_labels.csv", out / "reports" / "dataset.json"

    execute("00-prepare-data", out, data_dir=str(data_dir), labels_csv=str(labels_csv),
            dataset_json=str(dataset_json))
    labels = pd.read_csv(labels_csv)
    assert list(labels.columns) == ["image_name", "label", "path"] and len(labels) == 18
    assert json.loads(dataset_json.read_text())["synthetic"] is True

    execute("01-audit-data", out, data_dir=str(data_dir), labels_csv=str(labels_csv),
            dataset_json=str(dataset_json), audit_dir=str(out / "audit"),
            duplicates_csv=str(out / "duplicates.csv"), figures_dir=str(out / "figures"))
    assert len(pd.read_csv(out / "audit" / "metadata.csv")) == 18
    assert set(json.loads((out / "audit" / "confound.json").read_text())) >= {"confounded", "message"}
    assert list(pd.read_csv(out / "duplicates.csv").columns)[:2] == ["image_a", "image_b"]
    assert (out / "figures" / "audit.png").stat().st_size > 1000

    execute("02-extract-features", out, model="MobileNetV2-0.35", weights="none", data_dir=str(data_dir),
            labels_csv=str(labels_csv), features_dir=str(out / "features"), batch_size=8)
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
    execute("03-cluster", out, model="MobileNetV2-0.35", labels_csv=str(labels_csv),
            features_dir=str(out / "features"), config=str(out / "clustering.yaml"),
            labels_dir=str(out / "clustering_labels"), results_dir=str(out / "results"))
    results = pd.read_csv(out / "results" / "MobileNetV2-0.35.csv")
    assert results["clustering"].tolist() == keep
    assert list(results.columns[:3]) == ["model", "clustering", "label_percentage_change"]
    assert results["label_percentage_change"].between(0, 100).all()
    assert not stale.exists()
    for algo in results.loc[results["status"] == "ok", "clustering"]:
        table = pd.read_csv(out / "clustering_labels" / f"MobileNetV2-0.35_{algo}.csv")
        assert list(table.columns) == ["image_name", "label", "cluster", "matched_label", "changed"]
        assert table["image_name"].tolist() == labels["image_name"].tolist()

    execute("04-report", out, models="MobileNetV2-0.35", data_dir=str(data_dir), labels_csv=str(labels_csv),
            results_dir=str(out / "results"), labels_dir=str(out / "clustering_labels"),
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
