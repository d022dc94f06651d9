"""The dataset: a folder per class, or a labels file, turned into ``original_labels.csv`` and ``reports/dataset.json``.

- :mod:`~cxrcluster.data.layouts`: the images and their labels, from class
  folders (:func:`scan_dataset`) or a labels file (:func:`read_labels_file`),
  with the checks that refuse a data set before any work (:func:`check_classes`,
  :func:`check_sources`); ``original_labels.csv`` read back (:func:`read_labels`)
  and its rows resolved to files (:func:`resolve_image_paths`).
- :mod:`~cxrcluster.data.origins`: the source (hospital) of each image where
  the data states it: ``metadata.csv`` beside the images, or DICOM headers;
  never guessed (:func:`image_sources`).
- :mod:`~cxrcluster.data.description`: :func:`read_dataset`, the one entry
  point of notebook 00, and the owner of ``reports/dataset.json``
  (:func:`describe_dataset`, :func:`read_dataset_description`) and of the note
  every figure carries (:func:`data_note`).
"""

from cxrcluster.data.description import (  # noqa: F401
    SYNTHETIC_NOTE,
    Dataset,
    data_note,
    describe_dataset,
    labels_fingerprint,
    read_dataset,
    read_dataset_description,
    write_dataset_description,
)
from cxrcluster.data.layouts import (  # noqa: F401
    CLASS_ALIASES,
    FILE_COLUMNS,
    IMAGE_SUFFIXES,
    LABEL_COLUMN_NAMES,
    LABEL_COLUMNS,
    METADATA_FILE,
    METADATA_IMAGE_COLUMNS,
    PATIENT_COLUMN_NAMES,
    SOURCE_COLUMN_NAMES,
    DatasetError,
    canonical_class,
    check_classes,
    check_sources,
    is_dicom,
    read_labels,
    read_labels_file,
    resolve_image_paths,
    scan_dataset,
    with_dicom_patients,
)
from cxrcluster.data.origins import (  # noqa: F401
    dicom_sources,
    image_sources,
    match_metadata,
    metadata_sources,
    read_metadata,
)

__all__ = [
    "CLASS_ALIASES",
    "Dataset",
    "DatasetError",
    "FILE_COLUMNS",
    "IMAGE_SUFFIXES",
    "LABEL_COLUMNS",
    "LABEL_COLUMN_NAMES",
    "METADATA_FILE",
    "METADATA_IMAGE_COLUMNS",
    "PATIENT_COLUMN_NAMES",
    "SOURCE_COLUMN_NAMES",
    "SYNTHETIC_NOTE",
    "canonical_class",
    "check_classes",
    "check_sources",
    "data_note",
    "describe_dataset",
    "dicom_sources",
    "image_sources",
    "is_dicom",
    "labels_fingerprint",
    "match_metadata",
    "metadata_sources",
    "read_dataset",
    "read_dataset_description",
    "read_labels",
    "read_labels_file",
    "read_metadata",
    "resolve_image_paths",
    "scan_dataset",
    "with_dicom_patients",
    "write_dataset_description",
]
