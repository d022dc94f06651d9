"""Linear probe: metrics equal scikit-learn's, folds fitted inside, patients never split, dense folding exact."""

import numpy as np
import pandas as pd
import pytest
from conftest import SAMPLE_DIR, needs_sample
from sklearn.datasets import make_blobs, make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
)
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cxrcluster import data, features, images, models, probe


@pytest.fixture
def fixture_data():
    """Three overlapping classes of unequal size: imperfect, so the metrics differ from each other."""
    X, y = make_classification(n_samples=120, n_features=12, n_informative=4, n_classes=3, n_clusters_per_class=1,
                               weights=[0.5, 0.3, 0.2], class_sep=0.8, random_state=3)
    return X * np.linspace(1, 50, 12), np.array(["COVID", "NORMAL", "PNEUMONIA"])[y]


def test_cv_metrics_equal_scikit_learn_computed_directly(fixture_data):
    X, y = fixture_data
    per_fold, summary, confusion, predictions = probe.linear_probe_cv(X, y, n_splits=4, seed=7, C=0.5)

    expected, oof = [], np.empty(len(y), dtype=object)
    for train, test in StratifiedKFold(4, shuffle=True, random_state=7).split(X, y):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, class_weight="balanced", max_iter=5000))
        pred = model.fit(X[train], y[train]).predict(X[test])
        oof[test] = pred
        expected.append([accuracy_score(y[test], pred), precision_score(y[test], pred, average="macro"),
                         recall_score(y[test], pred, average="macro"), f1_score(y[test], pred, average="macro")])
    expected = np.array(expected)
    got = per_fold[["accuracy", "precision_macro", "recall_macro", "f1_macro"]].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert len(set(map(tuple, expected.round(6)))) > 1 and len(set(expected[0].round(6))) > 1  # non-trivial
    for k, m in enumerate(probe.METRICS):
        assert summary[f"{m}_mean"] == pytest.approx(expected[:, k].mean())
        assert summary[f"{m}_std"] == pytest.approx(expected[:, k].std(ddof=1))
    assert (predictions["predicted"].to_numpy() == oof).all()
    np.testing.assert_array_equal(confusion.to_numpy(), confusion_matrix(y, oof.astype(str)))
    assert summary["cv"] == "StratifiedKFold" and not summary["grouped"] and summary["n_images"] == len(y)
    assert summary["recall_COVID"] == pytest.approx(recall_score(y, oof.astype(str), labels=["COVID"], average=None)[0])
    proba = predictions[[f"proba_{c}" for c in summary["classes"]]].to_numpy()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_nan_rows_are_dropped_counted_and_change_nothing_else(fixture_data):
    X, y = fixture_data
    X_bad = X.copy()
    X_bad[[3, 50, 99]] = np.nan
    clean = probe.linear_probe_cv(np.delete(X, [3, 50, 99], axis=0), np.delete(y, [3, 50, 99]), seed=1)
    result = probe.linear_probe_cv(X_bad, y, seed=1)
    assert result.summary["n_dropped"] == 3 and result.summary["n_images"] == len(y) - 3
    pd.testing.assert_frame_equal(result.per_fold, clean.per_fold)
    assert len(result.predictions) == len(y)
    assert result.predictions.loc[[3, 50, 99], "fold"].tolist() == [-1] * 3
    assert result.predictions.loc[[3, 50, 99], "predicted"].isna().all()


def patients(n_patients=60, per_patient=4, seed=0):
    """Images of one patient share a patient-specific feature vector; labels are random per patient."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_patients, 100)) * 3
    labels = np.array(["A", "B", "C"])[np.arange(n_patients) % 3]
    X = np.repeat(centres, per_patient, axis=0) + rng.normal(scale=0.1, size=(n_patients * per_patient, 100))
    return X, np.repeat(labels, per_patient), np.repeat([f"p{i:03d}" for i in range(n_patients)], per_patient)


def test_grouped_folds_never_split_a_patient():
    X, y, groups = patients()
    result = probe.linear_probe_cv(X, y, groups=groups, n_splits=5, seed=0)
    folds = pd.DataFrame({"patient": groups, "fold": result.predictions["fold"]})
    assert (folds.groupby("patient")["fold"].nunique() == 1).all()
    assert result.per_fold["n_test_groups"].sum() == 60
    assert result.summary["cv"] == "StratifiedGroupKFold" and result.summary["n_groups"] == 60
    # the same data, not grouped, does put one patient's images in several folds
    ungrouped = probe.linear_probe_cv(X, y, n_splits=5, seed=0)
    spread = pd.DataFrame({"patient": groups, "fold": ungrouped.predictions["fold"]})
    assert (spread.groupby("patient")["fold"].nunique() > 1).any()


def test_grouping_removes_the_leak_of_patient_identity():
    """Labels are random per patient: only memorising patients across folds scores above chance."""
    X, y, groups = patients()
    leaky = probe.linear_probe_cv(X, y, n_splits=5, seed=0).summary["accuracy_mean"]
    honest = probe.linear_probe_cv(X, y, groups=groups, n_splits=5, seed=0).summary["accuracy_mean"]
    assert leaky > 0.9
    assert honest < 0.6


def test_too_few_patients_per_class_is_refused():
    X, y, groups = patients(n_patients=9)
    with pytest.raises(ValueError, match="3 patients, fewer than n_splits=5"):
        probe.linear_probe_cv(X, y, groups=groups, n_splits=5)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_dense_folding_gives_the_pipeline_probabilities(n_classes):
    X, y = make_blobs(n_samples=90, centers=n_classes, n_features=6, cluster_std=4.0, random_state=2)
    X = X * np.array([1, 10, 100, 0.1, 5, 1])
    labels = np.array(["COVID", "NORMAL", "PNEUMONIA"])[y]
    pipeline = probe.fit_probe(X, labels, C=0.3, seed=0)
    W, b, classes = probe.probe_as_dense(pipeline)
    assert W.shape == (6, n_classes) and b.shape == (n_classes,) and classes == list(pipeline.classes_)
    logits = X @ W + b
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(proba, pipeline.predict_proba(X), atol=1e-10)
    assert 0.05 < pipeline.predict_proba(X).max(axis=1).min() < 0.99  # not saturated: the check has teeth


# ---------------------------------------------------------------- patients


@pytest.fixture
def labels_df():
    return pd.DataFrame({"image_name": ["a.png", "b.png", "c.jpeg", "d.jpeg"],
                         "label": ["COVID", "COVID", "NORMAL", "NORMAL"],
                         "path": ["COVID/a.png", "COVID/b.png", "NORMAL/c.jpeg", "NORMAL/d.jpeg"]})


@pytest.mark.parametrize("metadata, expected", [
    ("image,label,patient\nCOVID/a.png,COVID,p1\nCOVID/b.png,COVID,p1\nNORMAL/c.jpeg,NORMAL,p2\n"
     "NORMAL/d.jpeg,NORMAL,p3\n", ["p1", "p1", "p2", "p3"]),
    ("file,patient_id\nd.jpeg,x\nc.jpeg,y\nb.png,y\na.png,z\n", ["z", "y", "y", "x"]),
    ("Image_Name,Subject\na.png,s1\nb.png,s2\nc.jpeg,s3\nd.jpeg,s4\nextra.png,s5\n", ["s1", "s2", "s3", "s4"]),
])
def test_patient_groups_from_a_metadata_file(tmp_path, labels_df, metadata, expected):
    (tmp_path / "metadata.csv").write_text(metadata)
    assert probe.patient_groups(labels_df, data_dir=tmp_path).tolist() == expected
    assert probe.patient_groups(labels_df, metadata_csv=tmp_path / "metadata.csv").tolist() == expected


def test_patient_groups_absent_incomplete_or_from_the_labels(tmp_path, labels_df):
    assert probe.patient_groups(labels_df, data_dir=tmp_path) is None
    assert probe.patient_groups(labels_df) is None
    with pytest.raises(FileNotFoundError):
        probe.patient_groups(labels_df, metadata_csv=tmp_path / "nope.csv")
    (tmp_path / "metadata.csv").write_text("image,patient\nCOVID/a.png,p1\nCOVID/b.png,p1\n")
    with pytest.raises(ValueError, match="no patient for 2 of 4 images"):
        probe.patient_groups(labels_df, data_dir=tmp_path)
    (tmp_path / "metadata.csv").write_text("image,label\nCOVID/a.png,COVID\n")
    with pytest.raises(ValueError, match="needs a patient column"):
        probe.patient_groups(labels_df, data_dir=tmp_path)
    with_column = labels_df.assign(patient=["q", "q", "r", "s"])
    assert probe.patient_groups(with_column, data_dir=tmp_path).tolist() == ["q", "q", "r", "s"]


@pytest.mark.shared
@needs_sample
def test_patient_groups_of_the_real_sample():
    labels = data.scan_dataset(SAMPLE_DIR)
    groups = probe.patient_groups(labels, data_dir=SAMPLE_DIR)
    assert groups is not None and len(groups) == len(labels)
    frame = pd.DataFrame({"patient": groups, "label": labels["label"]})
    assert frame["patient"].nunique() < len(labels)  # some patients have several images
    assert (frame.groupby("patient")["label"].nunique() == 1).all()


# ---------------------------------------------------------------- held-out split and fine-tuning


def test_held_out_split_is_stratified_grouped_and_seeded():
    _, y, groups = patients(n_patients=30, per_patient=3)
    train, test = probe.held_out_split(y, groups, test_size=0.2, seed=4)
    assert not set(groups[train]) & set(groups[test])
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(y)))
    assert set(y[test]) == set(y)
    again = probe.held_out_split(y, groups, test_size=0.2, seed=4)
    assert (again[1] == test).all()
    plain_train, plain_test = probe.held_out_split(y, None, test_size=0.2, seed=4)
    assert len(plain_test) == 18 and np.bincount(np.unique(y[plain_test], return_inverse=True)[1]).tolist() == [6] * 3
    cv = StratifiedGroupKFold(5, shuffle=True, random_state=4)
    assert (next(cv.split(y, y, groups))[1] == test).all()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*RANDOM weights:UserWarning")
def test_finetune_scores_only_the_held_out_patients(tmp_path):
    from cxrcluster import demo

    root = demo.write_demo_dataset(tmp_path / "data", per_class=4, size=48)
    labels = data.scan_dataset(root)
    groups = np.array([f"{label}-{i // 2}" for label, i in zip(labels["label"], range(len(labels)), strict=True)])
    result = probe.finetune_backbone(labels, root, "MobileNetV2-0.35", weights="none", groups=groups,
                                     test_size=0.34, seed=0, epochs=1, batch_size=4, unfreeze_layers=4,
                                     finetune_epochs=1, progress=False)
    test_names = set(result.predictions["image_name"])
    train_groups = set(groups[~labels["image_name"].isin(test_names)])
    assert not train_groups & set(groups[labels["image_name"].isin(test_names)])
    assert result.metrics["n_test"] == len(result.predictions) and result.metrics["n_train"] + len(test_names) == 12
    truth, pred = result.predictions["label"], result.predictions["predicted"]
    assert result.metrics["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    assert result.metrics["f1_macro"] == pytest.approx(f1_score(truth, pred, average="macro", zero_division=0))
    assert set(result.history) == {"head", "finetune"} and len(result.history["head"]["loss"]) == 1
    assert int(result.confusion.to_numpy().sum()) == len(test_names)
    # the fine-tuned backbone, saved and fed back as a whole model, gives its own pooled features
    mode = result.save_backbone(tmp_path / "finetuned.keras")
    spec = models.get_backbone(str(tmp_path / "finetuned.keras"), preprocess=mode)
    assert mode == "tf" and spec.feature_dim == 1280 and "pooling" in spec.chosen
    paths = data.resolve_image_paths(labels, root)[:3]
    X, _ = features.extract_features(paths, spec, progress=False)
    import keras

    inner = next(layer for layer in result.model.layers if isinstance(layer, keras.Model))
    x = np.stack([images.load_image(p, 224) for p in paths]) / 127.5 - 1.0
    reference = np.asarray(inner(x))  # random weights: values near 1e-15, compared to their largest
    np.testing.assert_allclose(X, reference, rtol=1e-3, atol=1e-4 * np.abs(reference).max())


def test_a_probe_that_does_not_converge_is_counted_and_warned(fixture_data, monkeypatch):
    X, y = fixture_data
    monkeypatch.setattr(probe.linear, "MAX_ITER", 2)
    with pytest.warns(Warning, match="did not converge in 2 iterations"):
        result = probe.linear_probe_cv(X, y, n_splits=3)
    assert result.summary["n_not_converged"] == 3


# ---------------------------------------------------------------- disease or hospital


def hospital_data(carry="source", n=240, seed=0):
    """Two sources of 120 images; the features carry either the source or the label, never both.

    With ``carry="source"``, source A holds 3 COVID for 1 NORMAL and source B the reverse, labels drawn
    at random within each source: the label is predictable only through the source.
    With ``carry="label"``, each source holds the two classes half and half, sources drawn at random.
    """
    rng = np.random.default_rng(seed)
    X, carried = make_blobs(n_samples=n, centers=2, n_features=5, cluster_std=1.0, random_state=seed)
    names = np.array(["A", "B"]) if carry == "source" else np.array(["COVID", "NORMAL"])
    carried = names[carried]
    if carry == "source":
        sources = carried
        labels = np.where(rng.random(n) < np.where(sources == "A", 0.75, 0.25), "COVID", "NORMAL")
    else:
        labels, sources = carried, rng.choice(["A", "B"], size=n)
    return X, labels, sources


def test_features_that_carry_only_the_hospital_predict_it_and_not_the_label_within_it():
    X, labels, sources = hospital_data("source")
    label_probe = probe.linear_probe_cv(X, labels, n_splits=5, seed=0)
    overall = balanced_accuracy_score(labels, label_probe.predictions["predicted"].astype(str))
    out = probe.source_probe(X, labels, sources, n_splits=5, seed=0)
    assert list(out)[:len(probe.SOURCE_COLUMNS)] == list(probe.SOURCE_COLUMNS)
    assert out["n_sources"] == 2 and out["source_chance"] == 0.5 and out["source_majority"] == 0.5
    assert out["source_balanced_accuracy"] > 0.97  # the features know the hospital
    assert overall > 0.68  # ...and so the label probe looks good overall
    assert out["n_within_sources"] == 2 and out["within_source_chance"] == 0.5
    assert abs(out["within_source_balanced_accuracy"] - 0.5) < 0.12  # within a hospital: chance
    for source in ("A", "B"):
        assert abs(out[f"within_source_balanced_accuracy_{source}"] - 0.5) < 0.15
        assert out[f"within_source_chance_{source}"] == 0.5


def test_features_that_carry_the_label_predict_it_within_each_hospital_and_not_the_hospital():
    X, labels, sources = hospital_data("label", seed=1)
    out = probe.source_probe(X, labels, sources, n_splits=5, seed=0)
    assert abs(out["source_balanced_accuracy"] - 0.5) < 0.12
    assert out["within_source_balanced_accuracy"] > 0.95
    assert out["source_majority"] == pytest.approx(max(np.mean(sources == "A"), np.mean(sources == "B")))
    # the weighted mean of the two sources
    a, b = (sources == "A").sum(), (sources == "B").sum()
    assert out["within_source_balanced_accuracy"] == pytest.approx(
        (a * out["within_source_balanced_accuracy_A"] + b * out["within_source_balanced_accuracy_B"]) / (a + b))


def test_which_sources_and_classes_are_probed():
    X, _ = make_blobs(n_samples=170, centers=3, n_features=4, random_state=2)
    sources = np.repeat(["A", "B", "C"], [60, 50, 60])
    labels = np.concatenate([np.repeat(["COVID", "NORMAL"], 30),  # A: two classes of 30: probed
                             np.repeat(["COVID", "NORMAL", "PNEUMONIA"], [40, 5, 5]),  # B: one class of 20+
                             np.repeat(["NORMAL", "PNEUMONIA"], [35, 25])])  # C: probed on two classes
    out = probe.source_probe(X, labels, sources, n_splits=5, seed=0)
    assert out["n_sources"] == 3 and out["source_chance"] == pytest.approx(1 / 3)
    assert out["n_within_sources"] == 2
    assert {k for k in out if k.startswith("within_source_balanced_accuracy_")} == {
        "within_source_balanced_accuracy_A", "within_source_balanced_accuracy_C"}
    # grouped by patient: a source of three patients cannot be split into five folds, so it is left out
    groups = np.array([f"p{i}" for i in range(170)])
    groups[sources == "C"] = np.resize(["c1", "c2", "c3"], 60)
    grouped = probe.source_probe(X, labels, sources, groups=groups, n_splits=5, seed=0)
    assert grouped["n_sources"] == 2 and grouped["source_chance"] == 0.5 and grouped["n_within_sources"] == 1
    assert grouped["within_source_balanced_accuracy"] == grouped["within_source_balanced_accuracy_A"]
    # unreadable images count nowhere: 11 of C's PNEUMONIA images lost leave it one class of 20+
    unreadable = X.copy()
    unreadable[np.flatnonzero((sources == "C") & (labels == "PNEUMONIA"))[:11]] = np.nan
    assert probe.source_probe(unreadable, labels, sources, n_splits=5, seed=0)["n_within_sources"] == 1


def test_without_a_source_every_source_column_is_empty_and_reads_back_typed(tmp_path):
    X, labels, _ = hospital_data("source")
    out = probe.source_probe(X, labels, None)
    assert list(out) == list(probe.SOURCE_COLUMNS) and all(np.isnan(v) for v in out.values())
    from cxrcluster import products

    rows = pd.DataFrame([{"model": "M", "trained_weights": True, "accuracy_mean": 0.9, "accuracy_std": 0.01,
                          **probe.source_probe(X, labels, hospital_data("source")[2])},
                         {"model": "N", "trained_weights": True, "accuracy_mean": 0.8, "accuracy_std": 0.02,
                          **probe.source_probe(X, labels, hospital_data("source")[2])}])
    back = products.CLASSIFICATION_RESULTS.read(products.CLASSIFICATION_RESULTS.write(rows, root=tmp_path))
    assert back["n_sources"].dtype == np.int64 and back["n_within_sources"].tolist() == [2, 2]
    assert back["within_source_balanced_accuracy_A"].dtype == np.float64
