"""The images and their labels: a folder per class, or a labels file, as ``original_labels.csv`` rows.

Two layouts are read. A folder per class (:func:`scan_dataset`), the Kaggle
chest X-ray dataset's: ``<root>/COVID/*.png``, ``<root>/NORMAL/*.jpeg``,
``<root>/PNEUMONIA/...``, optionally one level deeper (``<root>/train/COVID/...``);
the class of an image is the name of its folder. Or a labels file naming the
images (:func:`read_labels_file`): the original study's ``image_name,label``,
or a public collection's CSV of paths, labels, patient ids and sources. Either
way, common spellings fold into one class name (``COVID19``, ``COVID-19`` and
``covid`` are all ``COVID``), and a data set with fewer than two classes, or a
class of one image, is refused before any work (:func:`check_classes`).
Symbolic links in the data folder (data stores such as DVC, git-annex or
datalad keep files in a cache elsewhere) are followed wherever they point.
``original_labels.csv`` is read back by :func:`read_labels`.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path, PurePosixPath

import pandas as pd

#: File endings read as images (compared case-insensitively). DICOM files without an
#: ending are recognised by their preamble (:func:`is_dicom`).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")


#: Folder-name spellings (lower case, letters and digits only) -> class name.
CLASS_ALIASES = {
    "covid": "COVID",
    "covid19": "COVID",
    "covid2019": "COVID",
    "sarscov2": "COVID",
    "normal": "NORMAL",
    "healthy": "NORMAL",
    "pneumonia": "PNEUMONIA",
    "pneumoniabacterial": "PNEUMONIA",
    "pneumoniaviral": "PNEUMONIA",
    "bacterialpneumonia": "PNEUMONIA",
    "viralpneumonia": "PNEUMONIA",
}


#: Columns of ``original_labels.csv``: the original study's two, plus the image's
#: path relative to the data folder (posix separators).
LABEL_COLUMNS = ["image_name", "label", "path"]


class DatasetError(ValueError):
    """The data folder or a labels file cannot be used as it is."""


#: Separators a table written by hand or by a spreadsheet may use (a European locale writes ``;``).
TABLE_SEPARATORS = (",", ";", "\t")


def read_text_table(path: str | os.PathLike, sample_rows: int = 50) -> pd.DataFrame:
    """Read a CSV from outside the pipeline (a labels file, a ``metadata.csv``), every cell as text.

    The separator is the one of :data:`TABLE_SEPARATORS` that splits the header
    into more than one column (quoted fields taken as such); when several do,
    the one that splits the first ``sample_rows`` rows into as many fields as
    the header. A UTF-8 byte-order mark and CRLF line ends are read.

    Parameters
    ----------
    path : path-like
        The file, UTF-8 encoded.
    sample_rows : int
        Rows after the header that settle a tie between separators.

    Returns
    -------
    pandas.DataFrame
        One column per header field, every cell a ``str`` (an empty cell is ``""``).

    Raises
    ------
    DatasetError
        Naming the file: it is not UTF-8 (with the line of the first bad byte:
        a Latin-1 export is refused rather than read with mangled names), it is
        empty, or no separator, or more than one, fits.
    """
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DatasetError(f"{str(path)!r} is not UTF-8 text (line {line} holds byte {raw[err.start]:#04x}, "
                           "perhaps Latin-1 or Windows-1252): re-save it as UTF-8 (in a spreadsheet, "
                           "'CSV UTF-8')") from None
    if not text.strip():
        raise DatasetError(f"{str(path)!r} is empty")
    names = {",": "','", ";": "';'", "\t": "tab"}
    rows = {sep: list(_first_rows(text, sep, sample_rows + 1)) for sep in TABLE_SEPARATORS}
    fits = [sep for sep in TABLE_SEPARATORS if len(rows[sep][0]) > 1]
    if len(fits) > 1:
        fits = [sep for sep in fits if all(len(r) == len(rows[sep][0]) for r in rows[sep][1:] if r)]
    if len(fits) != 1:
        why = "none splits its header into columns" if not fits else "more than one fits its header and rows"
        raise DatasetError(f"{str(path)!r}: cannot tell its separator ({why}; tried "
                           f"{', '.join(names[s] for s in TABLE_SEPARATORS)}); write it with one of them")
    return pd.read_csv(io.StringIO(text), sep=fits[0], dtype=str, keep_default_na=False)


def _first_rows(text: str, sep: str, n: int):
    """The first ``n`` records of ``text`` split at ``sep`` (quoted fields may span lines)."""
    for i, row in enumerate(csv.reader(io.StringIO(text, newline=""), delimiter=sep)):
        if i == n:
            return
        yield row


def canonical_class(folder_name: str) -> str:
    """Map a class folder's name to its class name.

    Parameters
    ----------
    folder_name : str
        Name of the folder holding the images, e.g. ``"COVID-19"``.

    Returns
    -------
    str
        The canonical class name (``"COVID"``) for a known spelling, else the
        folder name upper-cased, so that unknown classes still work.
    """
    key = re.sub(r"[^a-z0-9]", "", folder_name.lower())
    return CLASS_ALIASES.get(key, folder_name.strip().upper())


def is_dicom(path: str | os.PathLike) -> bool:
    """Whether a file is DICOM: ``DICM`` after its 128-byte preamble, whatever its name.

    A file named ``.dcm`` without it is read like any other image (the masked
    copy of a DICOM file is a PNG under the same name), and refused with a
    reason when it is not one.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _is_image(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES or (path.suffix == "" and is_dicom(path))


def check_classes(labels: pd.DataFrame, source: str, min_images: int = 2) -> None:
    """Refuse a data set that cannot be studied: fewer than two classes, or a class below ``min_images``.

    Parameters
    ----------
    labels : pandas.DataFrame
        With a ``label`` column.
    source : str
        Where the labels came from, for the message.
    min_images : int, default 2
        Fewest images a class may have (a label seen once in a labels file is
        more likely a typo than a class).

    Raises
    ------
    DatasetError
        Naming every class found and its count.
    """
    counts = labels["label"].value_counts().sort_index()
    found = ", ".join(f"{c}: {n}" for c, n in counts.items()) or "none"
    if len(counts) < 2:
        raise DatasetError(f"{source}: the study needs at least two classes; found {found}. "
                           "Is a class folder empty, or the label column the wrong one?")
    small = counts[counts < min_images]
    if len(small):
        raise DatasetError(f"{source}: class(es) seen in fewer than {min_images} images: "
                           + ", ".join(f"{c}: {n}" for c, n in small.items()) + f" (all classes: {found})")


def scan_dataset(data_dir: str | os.PathLike) -> pd.DataFrame:
    """List every image under ``data_dir`` with its class.

    Parameters
    ----------
    data_dir : path-like
        Folder with one sub-folder per class, optionally one level deeper
        (``train/``, ``test/``). Hidden files and files that are not images
        (by extension) are ignored.

    Returns
    -------
    pandas.DataFrame
        Columns ``image_name, label, path``, sorted by label then path, one row
        per image. ``image_name`` is the file name when file names are unique in
        the dataset, else the relative path (so that it is always a unique key).

    Raises
    ------
    DatasetError
        If the folder does not exist, holds no images, or holds images outside
        any class folder or more than two levels deep.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"data folder {str(root)!r} does not exist or is not a folder")
    rows, misplaced, seen = [], [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a linked folder met twice (a link cycle): once is enough
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not _is_image(path):
                continue
            rel = path.relative_to(root)
            if len(rel.parts) not in (2, 3):
                misplaced.append(rel.as_posix())
                continue
            rows.append({"label": canonical_class(rel.parts[-2]), "path": rel.as_posix()})
    if misplaced:
        shown = ", ".join(misplaced[:5]) + (" ..." if len(misplaced) > 5 else "")
        raise DatasetError(
            f"{len(misplaced)} image(s) in {str(root)!r} are not inside a class folder "
            f"(<data>/<CLASS>/image or <data>/<split>/<CLASS>/image): {shown}"
        )
    if not rows:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {str(root)!r}")
    df = pd.DataFrame(rows)
    names = df["path"].map(lambda p: PurePosixPath(p).name)
    df.insert(0, "image_name", names if names.is_unique else df["path"])
    check_classes(df, f"data folder {str(root)!r}", min_images=1)
    return df.sort_values(["label", "path"], kind="stable").reset_index(drop=True)[LABEL_COLUMNS]


#: Column names recognised in a labels file, in order of preference (compared case-insensitively).
FILE_COLUMNS = ("path", "image_name", "image", "file", "filename", "image_path", "image index")
LABEL_COLUMN_NAMES = ("label", "class", "finding labels", "finding", "diagnosis")
PATIENT_COLUMN_NAMES = ("patient", "patient_id", "patientid", "patient id", "subject", "subject_id")
SOURCE_COLUMN_NAMES = ("source", "site", "hospital", "institution", "center", "centre", "dataset")

#: The metadata file looked for beside the class folders, and the names its image column may have
#: (its rows name an image by path relative to the data folder, or by file name).
METADATA_FILE = "metadata.csv"
METADATA_IMAGE_COLUMNS = ("path", "image", "image_name", "file", "filename", "image_path")


def read_labels_file(
    labels_csv: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    patient_column: str | None = None,
    source_column: str | None = None,
) -> pd.DataFrame:
    """Read a labels file that names the images of ``data_dir``, as ``original_labels.csv`` rows.

    The original study's two-column ``image_name,label`` (images in one
    folder), or a collection's CSV of file names or relative paths with labels
    and, optionally, patient ids and the source (hospital) of each image.

    Parameters
    ----------
    labels_csv : path-like
        The labels file.
    data_dir : path-like
        The folder the file names or paths are relative to.
    image_column, label_column, patient_column, source_column : str, optional
        The columns to use; by default the first of :data:`FILE_COLUMNS`,
        :data:`LABEL_COLUMN_NAMES`, :data:`PATIENT_COLUMN_NAMES` and
        :data:`SOURCE_COLUMN_NAMES` present (no patient or source column is fine).

    Returns
    -------
    pandas.DataFrame
        Columns ``image_name, label, path`` (then ``patient`` and ``source``
        when found), sorted by label then path like :func:`scan_dataset`:
        ``image_name`` is the file name when unique, else the path; labels are
        folded by :func:`canonical_class`.

    Raises
    ------
    DatasetError
        Before any work, naming the rows: a missing column, empty file names or
        labels, a file named twice, a path that is absolute or leaves the data
        folder, a file that does not exist or is empty, an empty patient or
        source, a source of one image (:func:`check_sources`); and a data set
        :func:`check_classes` refuses.
    """
    return _read_labels_file(labels_csv, data_dir, image_column=image_column, label_column=label_column,
                             patient_column=patient_column, source_column=source_column)[0]


def _read_labels_file(labels_csv, data_dir, *, image_column, label_column, patient_column,
                      source_column) -> tuple[pd.DataFrame, str | None]:
    """:func:`read_labels_file`, and the name of the source column it read (None: none)."""
    labels_csv, root = Path(labels_csv), Path(data_dir)
    if not labels_csv.is_file():
        raise DatasetError(f"labels file {str(labels_csv)!r} does not exist")
    if not root.is_dir():
        raise DatasetError(f"data folder {str(root)!r} does not exist or is not a folder")
    df = read_text_table(labels_csv)
    source = f"labels file {str(labels_csv)!r}"
    image_col = _column(df, image_column, FILE_COLUMNS, "image", source)
    label_col = _column(df, label_column, LABEL_COLUMN_NAMES, "label", source)
    patient_col = _column(df, patient_column, PATIENT_COLUMN_NAMES, "patient", source, required=False)
    source_col = _column(df, source_column, SOURCE_COLUMN_NAMES, "source", source, required=False)
    if df.empty:
        raise DatasetError(f"{source}: no rows")
    files = df[image_col].str.strip().str.replace("\\", "/", regex=False)
    labels = df[label_col].str.strip()
    line = pd.Series(df.index + 2, index=df.index)  # the file's line numbers, header being line 1
    problems = []
    empty = (files == "") | (labels == "")
    if empty.any():
        problems.append(f"empty {image_col!r} or {label_col!r} on line(s) {_lines(line[empty])}")
    twice = files.duplicated(keep=False) & ~empty
    if twice.any():
        problems.append(f"file(s) named more than once: {_shown(files[twice].unique())}")
    bad_paths, missing, empty_files = [], [], []
    for i in df.index[~empty]:
        p = PurePosixPath(files[i])
        if p.is_absolute() or ".." in p.parts:
            bad_paths.append(f"{files[i]} (line {line[i]})")
            continue
        full = root / p
        if not full.is_file():
            missing.append(f"{files[i]} (line {line[i]})")
        elif full.stat().st_size == 0:
            empty_files.append(f"{files[i]} (line {line[i]})")
    for found, what in ((bad_paths, "path(s) outside the data folder"), (missing, "file(s) missing"),
                        (empty_files, "empty file(s)")):
        if found:
            problems.append(f"{len(found)} {what}: {_shown(found)}")
    if problems:
        raise DatasetError(f"{source} (data folder {str(root)!r}) cannot be used: " + "; ".join(problems))
    out = pd.DataFrame({"label": labels.map(canonical_class), "path": files.map(lambda f: PurePosixPath(f).as_posix())})
    names = out["path"].map(lambda p: PurePosixPath(p).name)
    out.insert(0, "image_name", names if names.is_unique else out["path"])
    if patient_col is not None:
        out["patient"] = df[patient_col].str.strip()
        if (out["patient"] == "").any():
            raise DatasetError(f"{source}: empty {patient_col!r} on line(s) {_lines(line[out['patient'] == ''])}")
    if source_col is not None:
        out["source"] = df[source_col].str.strip()
        check_sources(out["source"], line, f"{source}, column {source_col!r}")
    check_classes(out, source)
    return out.sort_values(["label", "path"], kind="stable").reset_index(drop=True), source_col


def with_dicom_patients(labels: pd.DataFrame, data_dir: str | os.PathLike) -> pd.DataFrame:
    """Add a ``patient`` column from the DICOM headers, when nothing else says who is who.

    Only when ``labels`` has no patient column and every image is DICOM with a
    non-empty ``PatientID``: grouping part of the images by patient would let
    the others leak across folds.
    """
    if any(c.strip().lower() in PATIENT_COLUMN_NAMES for c in labels.columns):
        return labels
    paths = [Path(data_dir) / p for p in labels["path"]]
    if not paths or not all(is_dicom(p) for p in paths):
        return labels
    import pydicom

    ids = []
    for path in paths:
        try:
            patient = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
                          .get("PatientID", "")).strip()
        except Exception:  # noqa: BLE001 - an unreadable header: extraction will report the file
            return labels
        if not patient:
            return labels
        ids.append(patient)
    return labels.assign(patient=ids)


def check_sources(sources: pd.Series, where: pd.Series, what: str, by: str = "line") -> None:
    """Refuse sources that cannot be studied: an empty one, or a source of a single image.

    A source is compared with the others by the images it holds (which
    classes, which clusters): one image is no sample of a hospital, and an
    empty cell is a source nobody knows.

    Parameters
    ----------
    sources : pandas.Series of str
        The source of each image.
    where : pandas.Series
        Where each image's source was read, aligned with ``sources``: a line
        of a file, or an image's path.
    what : str
        The file and column, for the message.
    by : str, default "line"
        What ``where`` holds, for the message: ``"line"`` or ``"image"``.

    Raises
    ------
    DatasetError
        Naming the lines (or images) with an empty source, and each source of
        one image with its line.
    """
    empty = sources.str.strip() == ""
    if empty.any():
        raise DatasetError(f"{what}: empty source on {by}(s) {_lines(where[empty])}: a source column names the "
                           "source of every image, or of none")
    counts = sources.value_counts()
    single = sources.isin(counts.index[counts < 2])
    if single.any():
        raise DatasetError(f"{what}: a source must hold at least two images; "
                           + ", ".join(f"{s!r} holds one ({by} {w})" for s, w in
                                       zip(sources[single], where[single], strict=True)))


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a labels CSV written by :func:`scan_dataset`.

    Parameters
    ----------
    path : path-like
        ``original_labels.csv``.

    Returns
    -------
    pandas.DataFrame
        With at least ``image_name`` and ``label``; ``path`` defaults to
        ``<label>/<image_name>`` for two-column files of the original study.
        ``patient`` and ``source``, when present, are text.

    Raises
    ------
    DatasetError
        On missing columns, empty or duplicated image names, empty labels, or
        an empty source.
    """
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"image_name", "label"} - set(df.columns)
    if missing:
        raise DatasetError(f"{path}: missing column(s) {sorted(missing)}; found {list(df.columns)}")
    if df.empty:
        raise DatasetError(f"{path}: no rows")
    if (df["image_name"] == "").any() or (df["label"] == "").any():
        raise DatasetError(f"{path}: empty image_name or label in row(s) "
                           f"{list(df.index[(df['image_name'] == '') | (df['label'] == '')][:5] + 2)}")
    dup = df["image_name"][df["image_name"].duplicated()]
    if len(dup):
        raise DatasetError(f"{path}: duplicated image_name(s): {', '.join(dup.unique()[:5])}")
    if "source" in df.columns and (df["source"] == "").any():
        raise DatasetError(f"{path}: empty source in row(s) {list(df.index[df['source'] == ''][:5] + 2)}; "
                           "rerun 00-prepare-data")
    if "path" not in df.columns:
        df["path"] = df["label"] + "/" + df["image_name"]
    return df


def resolve_image_paths(labels: pd.DataFrame, data_dir: str | os.PathLike) -> list[Path]:
    """Turn the ``path`` column into absolute paths, refusing unsafe or missing ones.

    Parameters
    ----------
    labels : pandas.DataFrame
        A labels table with a ``path`` column relative to ``data_dir``.
    data_dir : path-like
        The data folder.

    Returns
    -------
    list of pathlib.Path
        One per row, in row order.

    Raises
    ------
    DatasetError
        Naming the rows whose path is absolute or escapes ``data_dir`` (``..``),
        and the rows whose file does not exist.
    """
    root = Path(os.path.abspath(data_dir))
    out, escaping, missing = [], [], []
    for name, rel in zip(labels["image_name"], labels["path"], strict=True):
        p = PurePosixPath(str(rel).replace("\\", "/"))
        # the escape check reads the path as written; a symbolic link inside the folder is
        # followed wherever it points (data stores keep their files in a cache elsewhere)
        full = root / p
        if p.is_absolute() or ".." in p.parts:
            escaping.append(f"{name} ({rel})")
        elif not full.is_file():
            missing.append(f"{name} ({rel})")
        out.append(full)
    problems = []
    if escaping:
        problems.append(f"{len(escaping)} path(s) outside the data folder: {', '.join(escaping[:5])}")
    if missing:
        problems.append(f"{len(missing)} file(s) missing: {', '.join(missing[:5])}")
    if problems:
        raise DatasetError(f"labels refer to files that cannot be used (data folder {str(root)!r}): "
                           + "; ".join(problems))
    return out


def _column(df: pd.DataFrame, wanted: str | None, candidates, what: str, source: str, required: bool = True):
    if wanted:
        if wanted not in df.columns:
            raise DatasetError(f"{source}: no column {wanted!r}; columns are {list(df.columns)}")
        return wanted
    lower = {c.strip().lower(): c for c in df.columns}
    found = next((lower[c] for c in candidates if c in lower), None)
    if found is None and required:
        raise DatasetError(f"{source}: no {what} column (one of {list(candidates)}); columns are {list(df.columns)}. "
                           f"Name it with the {what}_column option")
    return found


def _shown(items, limit: int = 5) -> str:
    items = list(items)
    return ", ".join(map(str, items[:limit])) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _lines(lines: pd.Series) -> str:
    return _shown(lines.tolist())
