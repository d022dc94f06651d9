"""Disease or hospital? How much of a clustering follows the images' source rather than their label.

Public COVID / Pneumonia / Normal collections are compilations in which each
class comes from different hospitals, and networks learn the hospital
(DeGrave, Janizek and Lee, *Nature Machine Intelligence* 2021). A pooled
label change then mixes two things: how well the features separate diseases,
and how well they separate sources that happen to line up with diseases. This
package measures both, in two ways.

**Per clustering** (:func:`score_sources`, :func:`add_source_columns`): the
clustering against the source partition (ARI, NMI), and two conditional
figures, each a conditional mutual information normalised to [0, 1]:

- ``label_given_source`` = I(C; Y | S) / H(Y | S): what the clusters C say
  about the label Y *within* each source S;
- ``source_given_label`` = I(C; S | Y) / H(S | Y): what they say about the
  source *within* each label.

Each is 0 when its denominator is 0 (nothing left to explain), and 1 when the
clusters determine the label within every source (resp. the source within
every label). ``follows`` names what a clustering follows beyond chance
(:data:`FOLLOWS_RULE`). **When every class comes from a single source** (the
sources are nested in the classes' partition, as in the real sample: COVID
from Hannover, NORMAL and PNEUMONIA from Guangzhou), H(S | Y) = 0 and
``source_given_label`` is 0 by construction: no statistic computed from the
images' clusters, labels and sources can tell a disease from its only
hospital, and ``follows`` can only say ``label`` or ``neither``. The evidence
is then the second measurement.

**Within one source** (:func:`run_within_source`): for every known source
holding at least two classes of at least :data:`MIN_CLASS_IMAGES` images, the
clustering suite runs again on those images alone, with as many clusters as
the source has classes. A hospital cannot be what separates the clusters
there, so the change measured there is the fairer test of the features.

The source of each image (:func:`source_partition`) is the labels' ``source``
column when the data names it, else a **proxy**: each image's file signature
from the audit (format, bit depth and a size group), which separates sources
that differ in how their files were made and merges those that do not.
Noise points (cluster ``-1``) are one more group, as in
:mod:`cxrcluster.metrics`' ARI and NMI.

The package is in three modules, one per job, and every name below is
re-exported here, so ``from cxrcluster import sources; sources.score_sources(...)``
works:

- :mod:`~cxrcluster.sources.partition`: the source of each image,
  :func:`source_partition` into a :class:`SourcePartition` (kinds
  :data:`KINDS`), its proxy :func:`file_signature` with :func:`size_group`
  and :func:`read_audit_metadata`, and :func:`classes_from_one_source`.
- :mod:`~cxrcluster.sources.scores`: the figures of each clustering,
  :func:`conditional_information`, :func:`conditional_chance`,
  :func:`follows` (:data:`FOLLOWS_RULE`, :data:`ALPHA`), :func:`score_sources`
  and :func:`add_source_columns` (:data:`SOURCE_COLUMNS`).
- :mod:`~cxrcluster.sources.within`: the within-source test,
  :func:`eligible_sources` (:data:`MIN_CLASS_IMAGES`),
  :func:`why_no_source_test`, :func:`run_within_source`, its table
  (:data:`WITHIN_COLUMNS`, :func:`empty_within_results`), the folders of its
  label CSVs (:func:`source_folder_name`, :func:`within_source_labels_dir`),
  :func:`pooled_and_within` and :func:`headline`.

The constants are read by their own modules: to change one, set it there
(e.g. ``cxrcluster.sources.within.MIN_CLASS_IMAGES``), not on the re-exported copy.
"""

from cxrcluster.sources.partition import (
    KINDS,
    SourcePartition,
    classes_from_one_source,
    file_signature,
    read_audit_metadata,
    size_group,
    source_partition,
)
from cxrcluster.sources.scores import (
    ALPHA,
    FOLLOWS_RULE,
    SOURCE_COLUMNS,
    add_source_columns,
    conditional_chance,
    conditional_information,
    follows,
    score_sources,
)
from cxrcluster.sources.within import (
    MIN_CLASS_IMAGES,
    WITHIN_COLUMNS,
    eligible_sources,
    empty_within_results,
    headline,
    pooled_and_within,
    run_within_source,
    source_folder_name,
    why_no_source_test,
    within_source_labels_dir,
)

__all__ = [
    "ALPHA",
    "FOLLOWS_RULE",
    "KINDS",
    "MIN_CLASS_IMAGES",
    "SOURCE_COLUMNS",
    "WITHIN_COLUMNS",
    "SourcePartition",
    "add_source_columns",
    "classes_from_one_source",
    "conditional_chance",
    "conditional_information",
    "eligible_sources",
    "empty_within_results",
    "file_signature",
    "follows",
    "headline",
    "pooled_and_within",
    "read_audit_metadata",
    "run_within_source",
    "score_sources",
    "size_group",
    "source_folder_name",
    "source_partition",
    "why_no_source_test",
    "within_source_labels_dir",
]
