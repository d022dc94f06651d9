"""The source of each image: named by the data, or a proxy from the files' signature.

:func:`source_partition` reads the labels' ``source`` column when the data
names the sources, else each image's file signature from the audit
(:func:`file_signature`: format, bit depth and :func:`size_group`), which
separates sources that differ in how their files were made and merges those
that do not. :class:`SourcePartition` holds the result;
:func:`classes_from_one_source` says whether every class comes from a single
source.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrcluster import products

#: Kinds of source partition: known from the data, or a proxy from the files' signature.
KINDS = ("source", "proxy")

# The audit's metadata, read with the columns the proxy needs and their kinds (its owner names it only).
_AUDIT_METADATA = dataclasses.replace(
    products.AUDIT_METADATA,
    columns=(("image_name", "str"), ("label", "str"), ("format", "str"), ("bit_depth", "int"),
             ("width", "int"), ("height", "int"), ("error", "str")))


@dataclass(frozen=True)
class SourcePartition:
    """The source of each image.

    Attributes
    ----------
    values : numpy.ndarray of str, shape (n,)
        One source per row of the labels it was made from, in their order.
    kind : {"source", "proxy"}
        ``source``: named by the data (the labels' ``source`` column);
        ``proxy``: the file signature of the audit, which stands in for a source.
    origin : str
        Where the values come from, for the reports.
    """

    values: np.ndarray
    kind: str
    origin: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {self.kind!r}")

    @property
    def is_proxy(self) -> bool:
        """Whether the sources are a proxy (file signatures), not known sources."""
        return self.kind == "proxy"

    def subset(self, rows) -> SourcePartition:
        """The partition of some rows (a boolean mask or positions), in their order."""
        return dataclasses.replace(self, values=self.values[np.asarray(rows)])

    def describe(self) -> str:
        """One line for a report: the kind, where it comes from and the sources with their image counts."""
        counts = pd.Series(self.values).value_counts().sort_index()
        shown = ", ".join(f"{s} ({n})" for s, n in counts.items())
        what = "PROXY sources (file signatures, not known hospitals)" if self.is_proxy else "sources"
        return f"{what} from {self.origin}: {shown}"


def size_group(width, height) -> str:
    """The size group of an image: the power of two its longer side does not exceed, as ``"≤1024 px"``.

    A source's files usually share one size or a narrow range of sizes; groups
    between powers of two keep such a range together (640 × 520 and 640 × 713
    are both ``≤1024 px``) while a resized redistribution (224 × 224,
    ``≤256 px``) stands apart.

    Parameters
    ----------
    width, height : int or missing
        Pixels.

    Returns
    -------
    str
        ``"≤<2**k> px"`` with 2**(k-1) < longer side <= 2**k, or ``"size ?"``.
    """
    if pd.isna(width) or pd.isna(height) or max(int(width), int(height)) < 1:
        return "size ?"
    return f"≤{2 ** math.ceil(math.log2(max(int(width), int(height))))} px"


def file_signature(meta: pd.DataFrame) -> pd.Series:
    """The file signature of each image of the audit's metadata: format, bit depth and size group.

    Parameters
    ----------
    meta : pandas.DataFrame
        The audit's metadata (``reports/audit/metadata.csv``): ``format``,
        ``bit_depth`` (bits per pixel), ``width``, ``height``, ``error``.

    Returns
    -------
    pandas.Series of str
        For example ``"PNG 8-bit ≤1024 px"``; ``"unreadable"`` for a file the
        audit could not read.
    """
    def one(row) -> str:
        if str(row["error"] or "").strip():
            return "unreadable"
        depth = "?" if pd.isna(row["bit_depth"]) else str(int(row["bit_depth"]))
        return f"{row['format'] or '?'} {depth}-bit {size_group(row['width'], row['height'])}"

    return meta.apply(one, axis=1).astype(str) if len(meta) else pd.Series([], dtype=str)


def read_audit_metadata(path: str | os.PathLike) -> pd.DataFrame:
    """Read the audit's ``metadata.csv`` with the columns the proxy needs, typed.

    Raises
    ------
    KeyError
        When a column of the signature is missing.
    """
    return _AUDIT_METADATA.read(path)


def source_partition(labels: pd.DataFrame, audit_metadata: pd.DataFrame | str | os.PathLike | None = None, *,
                     origin: str | None = None) -> SourcePartition | None:
    """The source of each image: named by the data, else a proxy from the audit, else None.

    Parameters
    ----------
    labels : pandas.DataFrame
        ``original_labels.csv`` (:func:`cxrcluster.data.read_labels`): with a
        ``source`` column when the data names the sources. An empty field is
        the source ``"(unknown)"``.
    audit_metadata : pandas.DataFrame or path-like, optional
        The audit's ``metadata.csv`` (or its frame), used when ``labels`` has
        no ``source`` column: each image's file signature
        (:func:`file_signature`) stands in for its source.
    origin : str, optional
        Where a known source comes from (``reports/dataset.json``'s
        ``source.origin``); by default "the labels' source column".

    Returns
    -------
    SourcePartition or None
        Values aligned with the rows of ``labels``; kind ``source`` or
        ``proxy``. None when there is no source column and no audit metadata.

    Raises
    ------
    ValueError
        When the audit's metadata lacks images of ``labels``: it is from
        another dataset or an older labels file.
    """
    if "source" in labels.columns:
        values = labels["source"].fillna("").astype(str).str.strip().replace("", "(unknown)").to_numpy()
        return SourcePartition(values, "source", origin or "the labels' source column")
    if audit_metadata is None:
        return None
    meta = audit_metadata if isinstance(audit_metadata, pd.DataFrame) else read_audit_metadata(audit_metadata)
    signature = pd.Series(file_signature(meta).to_numpy(), index=meta["image_name"].astype(str).to_numpy())
    signature = signature[~signature.index.duplicated()]
    names = labels["image_name"].astype(str)
    missing = names[~names.isin(signature.index)]
    if len(missing):
        raise ValueError(f"the audit's metadata lacks {len(missing)} of {len(labels)} images (e.g. "
                         f"{', '.join(missing.head(3))}); rerun 01-audit-data on these labels")
    return SourcePartition(signature.loc[names].to_numpy().astype(str), "proxy",
                           "the audit's metadata.csv (each file's format, bit depth and size group)")


def classes_from_one_source(labels, partition: SourcePartition) -> bool:
    """Whether every class comes from a single source (H(S | Y) = 0).

    Then ``source_given_label`` is 0 by construction, and no statistic of the
    clusters, labels and sources can separate a class from its only source.
    """
    frame = pd.DataFrame({"label": np.asarray(labels), "source": partition.values})
    return bool((frame.groupby("label")["source"].nunique() <= 1).all())
