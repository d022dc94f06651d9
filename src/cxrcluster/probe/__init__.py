"""Supervised baselines on frozen features: how much label structure a feature space holds.

The clustering study never shows the labels to a model. This package asks the
complementary question with the same frozen features: how well can a *linear*
classifier (a "linear probe") separate the classes? Done without the leaks of
the companion study, which oversampled the minority classes with SMOTE before
splitting (synthetic test images made from training images) and re-scored one
set as its "validation":

- Every fitted step (standardisation and logistic regression, in one
  :class:`~sklearn.pipeline.Pipeline`) is fitted inside each training fold
  only; the test fold is only ever predicted.
- Class imbalance is handled by ``class_weight="balanced"`` inside the fold,
  never by resampling.
- When the data has a patient column, folds are grouped by patient
  (:class:`~sklearn.model_selection.StratifiedGroupKFold`), so that no patient
  has images on both sides of a split; otherwise they are stratified
  (:class:`~sklearn.model_selection.StratifiedKFold`).

The fitted probe is linear after standardisation, so it folds into one dense
layer (:func:`probe_as_dense`): placed on top of its backbone it makes a
differentiable classifier for Grad-CAM and saliency maps
(:mod:`cxrcluster.saliency`) without any fine-tuning.

:func:`finetune_backbone` (optional, off by default in the pipeline) trains a
Keras backbone with a new head on a held-out split that nothing else touches.

When the source (hospital) of the images is known, :func:`source_probe`
asks the same probe, on the same patient-grouped folds, to predict the source,
and the label within each source: whether the label probe reads the disease
or the hospital.

The package is in four modules, and every name below is re-exported here, so
``from cxrcluster import probe; probe.linear_probe_cv(...)`` works:

- :mod:`~cxrcluster.probe.linear`: :func:`linear_probe_cv`,
  :func:`make_probe`, :func:`fit_probe`, :func:`probe_as_dense`,
  :class:`ProbeCV`, :data:`METRICS` and :data:`MAX_ITER`.
- :mod:`~cxrcluster.probe.patients`: :func:`patient_groups`,
  :data:`PATIENT_COLUMNS`, :data:`IMAGE_COLUMNS` and :data:`METADATA_FILE`.
- :mod:`~cxrcluster.probe.by_source`: :func:`source_probe`,
  :data:`SOURCE_COLUMNS` and :data:`MIN_CLASS_IMAGES`.
- :mod:`~cxrcluster.probe.finetune`: :func:`finetune_backbone`,
  :func:`held_out_split` and :class:`FinetuneResult` (TensorFlow/Keras is
  imported only when :func:`finetune_backbone` runs).

:data:`MAX_ITER` is read by :mod:`~cxrcluster.probe.linear` at fit time: to
change it, set ``cxrcluster.probe.linear.MAX_ITER``, not the re-exported copy.
"""

from cxrcluster.probe.by_source import MIN_CLASS_IMAGES, SOURCE_COLUMNS, source_probe
from cxrcluster.probe.finetune import FinetuneResult, finetune_backbone, held_out_split
from cxrcluster.probe.linear import (
    MAX_ITER,
    METRICS,
    ProbeCV,
    fit_probe,
    linear_probe_cv,
    make_probe,
    probe_as_dense,
)
from cxrcluster.probe.patients import IMAGE_COLUMNS, METADATA_FILE, PATIENT_COLUMNS, patient_groups

__all__ = [
    "IMAGE_COLUMNS",
    "MAX_ITER",
    "METADATA_FILE",
    "METRICS",
    "MIN_CLASS_IMAGES",
    "PATIENT_COLUMNS",
    "SOURCE_COLUMNS",
    "FinetuneResult",
    "ProbeCV",
    "finetune_backbone",
    "fit_probe",
    "held_out_split",
    "linear_probe_cv",
    "make_probe",
    "patient_groups",
    "probe_as_dense",
    "source_probe",
]
