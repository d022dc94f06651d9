"""Label issues: the evidence, per image, that its label is wrong, and a check of that evidence.

Three kinds of evidence, each on its own scale: **drift** (the share of the
non-degenerate model x algorithm runs in which the image left its class),
**confident learning** (the ``cleanlab`` library's verdict and label-quality
score from a linear probe's out-of-fold class probabilities) and
**duplicates** (an exact or near duplicate that carries another label). When
the source (hospital) of the images is known, a flag may be the hospital
speaking, and is marked so.

The package is in three modules, one per job, and every name below is
re-exported here, so ``from cxrcluster import label_issues; label_issues.noise_check(...)``
works:

- :mod:`~cxrcluster.label_issues.signals`: the signals per image,
  :func:`out_of_fold_probabilities`, :func:`mean_probabilities`,
  :func:`cleanlab_evidence`, :func:`drift_evidence`,
  :func:`duplicate_conflicts`, :func:`source_majority` and
  :func:`source_explained`; :func:`combined_score` ranks on drift and
  confident learning together (:data:`COMBINE_RULE`);
  :func:`label_issues_table` gathers it all, one row per image
  (:data:`ISSUE_COLUMNS`).
- :mod:`~cxrcluster.label_issues.check`: the planted-noise check.
  :func:`noise_check` flips a seeded, stratified share of labels
  (:func:`plant_flips`), recomputes every signal from the flipped labels
  (the cluster assignments are reused, the probe refitted) and scores each
  ranking of :data:`SIGNALS` (:func:`signal_scores`, :func:`ranking_scores`)
  on the subsets :data:`SUBSETS`; :data:`CHECK_COLUMNS`;
  :func:`on_all_images` and :func:`headline_signal` read it back.
- :mod:`~cxrcluster.label_issues.figures`: :func:`noise_check_figure`
  (precision against recall of the planted flips) and :func:`issues_gallery`
  (the top candidates of each class); :data:`SIGNAL_NAMES`.

The constants are read by their own modules: to change one, set it there
(e.g. ``cxrcluster.label_issues.check.SIGNALS``), not on the re-exported copy.
"""

from cxrcluster.label_issues.check import (
    CHECK_COLUMNS,
    SIGNALS,
    SUBSETS,
    headline_signal,
    noise_check,
    on_all_images,
    plant_flips,
    ranking_scores,
    signal_scores,
)
from cxrcluster.label_issues.figures import SIGNAL_NAMES, issues_gallery, noise_check_figure
from cxrcluster.label_issues.signals import (
    COMBINE_RULE,
    ISSUE_COLUMNS,
    cleanlab_evidence,
    combined_score,
    drift_evidence,
    duplicate_conflicts,
    label_issues_table,
    mean_probabilities,
    out_of_fold_probabilities,
    source_explained,
    source_majority,
)

__all__ = [
    "CHECK_COLUMNS",
    "COMBINE_RULE",
    "ISSUE_COLUMNS",
    "SIGNALS",
    "SIGNAL_NAMES",
    "SUBSETS",
    "cleanlab_evidence",
    "combined_score",
    "drift_evidence",
    "duplicate_conflicts",
    "headline_signal",
    "issues_gallery",
    "label_issues_table",
    "mean_probabilities",
    "noise_check",
    "noise_check_figure",
    "on_all_images",
    "out_of_fold_probabilities",
    "plant_flips",
    "ranking_scores",
    "signal_scores",
    "source_explained",
    "source_majority",
]
