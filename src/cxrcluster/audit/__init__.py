"""Dataset audit: what the image files are, before their features are trusted.

A public chest X-ray collection is usually a compilation of sources (hospitals,
scanners, earlier redistributions), and each source tends to bring its own file
format, resolution and bit depth. If those properties line up with the classes,
a clustering of CNN features can recover the *source* of an image rather than
its *disease*. This package measures that risk and lists duplicated images.

Paths in the label table are relative to the data folder, so the same table
works wherever the data folder is mounted.

The package is in four modules, one per job, and every name below is
re-exported here, so ``from cxrcluster import audit; audit.image_metadata(...)``
works:

- :mod:`~cxrcluster.audit.metadata`: :func:`image_metadata` reads every file's
  header (format, mode, bit depth, size; DICOM's manufacturer and view
  position) and records a reason instead of crashing when a file is
  unreadable; :func:`audit_summary` describes each class from it;
  :data:`METADATA_COLUMNS` and :data:`DICOM_COLUMNS`.
- :mod:`~cxrcluster.audit.confound`: :func:`metadata_confound` asks whether a
  simple classifier predicts the class from file metadata alone, and says so
  loudly when it does; the rule's :data:`CONFOUND_MARGIN`,
  :data:`CONFOUND_MIN_SCORE` and :data:`SEPARABLE_F1`, and the metadata it
  learns from, :data:`CONFOUND_NUMERIC` and :data:`CONFOUND_CATEGORICAL`.
- :mod:`~cxrcluster.audit.duplicates`: :func:`find_duplicates` finds exact
  (same bytes) and near (perceptual hash) duplicates and flags pairs whose
  labels disagree; :data:`DUPLICATE_COLUMNS`.
- :mod:`~cxrcluster.audit.figure`: :func:`plot_audit`, per-class image sizes,
  file sizes and format / bit-depth composition.

The constants are read by their own modules: to change one, set it there
(e.g. ``cxrcluster.audit.confound.CONFOUND_MARGIN``), not on the re-exported copy.
"""

from cxrcluster.audit.confound import (
    CONFOUND_CATEGORICAL,
    CONFOUND_MARGIN,
    CONFOUND_MIN_SCORE,
    CONFOUND_NUMERIC,
    SEPARABLE_F1,
    metadata_confound,
)
from cxrcluster.audit.duplicates import DUPLICATE_COLUMNS, find_duplicates
from cxrcluster.audit.figure import plot_audit
from cxrcluster.audit.metadata import DICOM_COLUMNS, METADATA_COLUMNS, audit_summary, image_metadata

__all__ = [
    "CONFOUND_CATEGORICAL",
    "CONFOUND_MARGIN",
    "CONFOUND_MIN_SCORE",
    "CONFOUND_NUMERIC",
    "DICOM_COLUMNS",
    "DUPLICATE_COLUMNS",
    "METADATA_COLUMNS",
    "SEPARABLE_F1",
    "audit_summary",
    "find_duplicates",
    "image_metadata",
    "metadata_confound",
    "plot_audit",
]
