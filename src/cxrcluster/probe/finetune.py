"""Fine-tuning a Keras backbone with a new head, scored on a held-out split that nothing else touches.

:func:`held_out_split` splits the images once (stratified, grouped by patient
when possible); :func:`finetune_backbone` trains on the training split and
scores the test split only. TensorFlow/Keras and the image, data and model
modules of :mod:`cxrcluster` are imported inside the functions, so importing
this module stays light.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from cxrcluster.probe.linear import _fold_metrics


class FinetuneResult(NamedTuple):
    """What :func:`finetune_backbone` returns.

    Attributes
    ----------
    metrics : dict
        On the held-out test split: :data:`cxrcluster.probe.linear.METRICS`, ``n_train``, ``n_test``,
        ``n_test_groups``, ``grouped``, ``classes``, and the settings used.
    predictions : pandas.DataFrame
        One row per test image: ``image_name``, ``label``, ``predicted`` and
        ``proba_<class>``.
    confusion : pandas.DataFrame
        True class x predicted class counts on the test split.
    history : dict
        Training loss and accuracy per epoch, ``head`` and ``finetune`` phases.
    model : keras.Model
        The trained classifier (0-255 image in, class probabilities out).
    """

    metrics: dict
    predictions: pd.DataFrame
    confusion: pd.DataFrame
    history: dict
    model: object

    def save_backbone(self, path) -> str:
        """Save the fine-tuned backbone (without the head) as a whole Keras model, to extract features with.

        Feed it back as ``make all MODELS="<path>" PREPROCESS=<the returned mode>``: its features are the
        backbone's pooled output, and the mode is the preprocessing it was trained with.

        Returns
        -------
        str
            The ``PREPROCESS`` mode (:data:`cxrcluster.model_files.PREPROCESS`) of the backbone.
        """
        import keras

        from cxrcluster import models

        backbone = next(layer for layer in self.model.layers if isinstance(layer, keras.Model))
        backbone.save(path)
        kind = models.get_backbone(self.metrics["model"]).preprocessing
        return "raw" if kind == "none" else kind


def held_out_split(labels, groups=None, test_size: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into train and test, stratified, and grouped by patient when possible.

    Parameters
    ----------
    labels : array-like of str
        Class of each image.
    groups : array-like, optional
        Patient id of each image; when given, no patient is on both sides.
    test_size : float, default 0.2
        Share of the images in the test split (approximate when grouped: the
        first fold of ``round(1 / test_size)`` stratified group folds).
    seed : int, default 0
        Seeds the split.

    Returns
    -------
    train, test : numpy.ndarray of int
        Sorted row indices.
    """
    y = np.asarray(labels).astype(str)
    index = np.arange(len(y))
    if groups is None:
        train, test = train_test_split(index, test_size=test_size, stratify=y, random_state=seed)
    else:
        n_splits = max(2, round(1 / test_size))
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        train, test = next(cv.split(index, y, np.asarray(groups).astype(str)))
    return np.sort(train), np.sort(test)


def _image_dataset(paths, y, size, batch_size, shuffle, seed):
    import keras

    from cxrcluster.images import load_image

    class Images(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.order = np.arange(len(paths))
            self.rng = np.random.default_rng(seed)
            if shuffle:
                self.rng.shuffle(self.order)

        def __len__(self):
            return int(np.ceil(len(paths) / batch_size))

        def __getitem__(self, i):
            rows = self.order[i * batch_size:(i + 1) * batch_size]
            batch = np.stack([load_image(paths[r], size) for r in rows])
            return (batch, y[rows]) if y is not None else (batch,)

        def on_epoch_end(self):
            if shuffle:
                self.rng.shuffle(self.order)

    return Images()


def finetune_backbone(
    labels_df: pd.DataFrame,
    data_dir: str | os.PathLike,
    model_name: str,
    weights: str = "imagenet",
    groups=None,
    test_size: float = 0.2,
    seed: int = 0,
    epochs: int = 3,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    unfreeze_layers: int = 0,
    finetune_epochs: int = 2,
    finetune_learning_rate: float = 1e-5,
    progress: bool = True,
) -> FinetuneResult:
    """Train a backbone with a new classifier head, scored on a held-out test split.

    1. The images are split once (:func:`held_out_split`: stratified, grouped by
       patient when ``groups`` are given, seeded). The test images are read
       only for the final evaluation: no early stopping, model selection or
       normalisation statistic sees them.
    2. Head phase: the backbone (ImageNet weights, its own
       ``preprocess_input`` inside the model) is frozen and a softmax dense
       head is trained for ``epochs`` epochs (Adam, ``learning_rate``, class
       weights balanced on the training split).
    3. Optional fine-tuning phase (``unfreeze_layers > 0``): the top
       ``unfreeze_layers`` layers of the backbone are unfrozen (batch
       normalisation layers stay frozen, in inference mode, as small batches
       would corrupt their statistics) and everything trainable is trained for
       ``finetune_epochs`` more epochs at ``finetune_learning_rate``.

    Runs on the CPU with small defaults; images are read batch by batch
    (:func:`cxrcluster.images.load_image`), so memory does not grow with the
    dataset.

    Parameters
    ----------
    labels_df : pandas.DataFrame
        ``original_labels.csv`` (``image_name``, ``label``, ``path``).
    data_dir : path-like
        The data folder.
    model_name : str
        A backbone of :data:`cxrcluster.models.BACKBONES`.
    weights : str, default "imagenet"
        As for :func:`cxrcluster.models.build_backbone`.
    groups : array-like, optional
        Patient id of each row of ``labels_df``
        (:func:`cxrcluster.probe.patients.patient_groups`).
    test_size : float, default 0.2
        Share of the images held out.
    seed : int, default 0
        Seeds the split, the head's initialisation and the batch order.
    epochs, batch_size, learning_rate : int, int, float
        Head phase.
    unfreeze_layers : int, default 0
        Backbone layers (counted from the top) trained in the fine-tuning
        phase; 0 skips it.
    finetune_epochs, finetune_learning_rate : int, float
        Fine-tuning phase.
    progress : bool, default True
        Keras' per-epoch progress output.

    Returns
    -------
    FinetuneResult
    """
    import keras

    from cxrcluster import data, models

    backbone_spec = models.get_backbone(model_name)
    paths = np.asarray([str(p) for p in data.resolve_image_paths(labels_df, data_dir)])
    y_text = labels_df["label"].astype(str).to_numpy()
    classes = sorted(np.unique(y_text).tolist())
    y = np.asarray([classes.index(c) for c in y_text])
    train, test = held_out_split(y_text, groups, test_size=test_size, seed=seed)

    backbone, provenance = models.build_backbone(model_name, weights, seed=seed)
    keras.utils.set_random_seed(seed)
    size = backbone_spec.input_size
    preprocess = backbone_spec.preprocess_input()
    inputs = keras.Input((size, size, 3), name="image_0_255")
    x = keras.layers.Lambda(preprocess, name="preprocess_input")(inputs)
    backbone.trainable = False
    x = backbone(x, training=False)
    outputs = keras.layers.Dense(len(classes), activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs, name=f"{model_name}-finetuned")

    counts = np.bincount(y[train], minlength=len(classes))
    class_weight = {k: len(train) / (len(classes) * counts[k]) for k in range(len(classes)) if counts[k]}
    verbose = 2 if progress else 0
    history: dict = {}
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    fit = model.fit(_image_dataset(paths[train], y[train], size, batch_size, True, seed), epochs=epochs,
                    class_weight=class_weight, verbose=verbose)
    history["head"] = {k: [float(v) for v in vals] for k, vals in fit.history.items()}

    if unfreeze_layers > 0 and finetune_epochs > 0:
        backbone.trainable = True
        for layer in backbone.layers[:-unfreeze_layers]:
            layer.trainable = False
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        model.compile(optimizer=keras.optimizers.Adam(finetune_learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        fit = model.fit(_image_dataset(paths[train], y[train], size, batch_size, True, seed + 1),
                        epochs=finetune_epochs, class_weight=class_weight, verbose=verbose)
        history["finetune"] = {k: [float(v) for v in vals] for k, vals in fit.history.items()}

    proba = model.predict(_image_dataset(paths[test], None, size, batch_size, False, seed), verbose=0)
    predicted = np.asarray(classes)[proba.argmax(axis=1)]
    truth = y_text[test]
    predictions = pd.DataFrame({"image_name": labels_df["image_name"].to_numpy()[test], "label": truth,
                                "predicted": predicted})
    for k, c in enumerate(classes):
        predictions[f"proba_{c}"] = proba[:, k]
    metrics = {
        **_fold_metrics(truth, predicted),
        "n_train": len(train), "n_test": len(test),
        "n_test_groups": int(np.unique(np.asarray(groups)[test]).size) if groups is not None else len(test),
        "grouped": groups is not None, "classes": classes, "model": model_name,
        "weights": provenance["weights"], "seed": seed, "epochs": epochs, "batch_size": batch_size,
        "learning_rate": learning_rate, "unfreeze_layers": unfreeze_layers,
        "finetune_epochs": finetune_epochs if unfreeze_layers > 0 else 0,
        "finetune_learning_rate": finetune_learning_rate, "test_size": test_size,
    }
    confusion = pd.DataFrame(confusion_matrix(truth, predicted, labels=classes),
                             index=pd.Index(classes, name="true class"),
                             columns=pd.Index(classes, name="predicted class"))
    return FinetuneResult(metrics, predictions, confusion, history, model)
