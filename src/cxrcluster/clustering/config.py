"""Reading and checking the clustering configuration (``config/clustering.yaml``).

:func:`load_config` reads the YAML file and :func:`validate_config` checks a
mapping and fills in :data:`DEFAULTS`: unknown keys and algorithm names (see
:data:`cxrcluster.clustering.registry.ALGORITHMS`) are errors, algorithm
parameters are passed through except the :data:`RUNNER_KEYS`, and the
``preparation`` section is checked by the feature preparation's own checker.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from os import PathLike

import numpy as np
import yaml

from cxrcluster.clustering.preparation import _is_int, _require, _validate_preparation
from cxrcluster.clustering.registry import ALGORITHMS
from cxrcluster.clustering.verdict import DEGENERACY_DEFAULTS

DEFAULTS: dict = {
    "seed": 0,
    "seeds": 5,
    "memory_budget_gb": 8.0,
    "silhouette_max_n": 2500,
    "chance_permutations": 200,
    "degenerate": {},
    "preparation": {},
}
"""Top-level configuration values used when the configuration leaves them out."""

RUNNER_KEYS = ("enabled", "max_samples", "preparation")
"""Per-algorithm configuration keys read by the suite, not passed to the algorithm.

``enabled`` (default true) switches an algorithm off; ``max_samples`` caps the
number of images it is fitted on (a seeded subsample, the rest assigned as for
the memory budget), for algorithms whose running time, not memory, is the
limit; ``preparation`` replaces the top-level feature preparation for this
algorithm (same keys), for algorithms that need another space.
"""


def load_config(path: str | PathLike) -> dict:
    """Read and validate the clustering configuration.

    Parameters
    ----------
    path : path-like
        A YAML file (``config/clustering.yaml``).

    Returns
    -------
    dict
        The configuration with defaults filled in: ``seed``, ``seeds``,
        ``memory_budget_gb``, ``silhouette_max_n``, ``chance_permutations``,
        ``degenerate`` (thresholds, :data:`cxrcluster.clustering.verdict.DEGENERACY_DEFAULTS`),
        ``preparation`` and ``algorithms`` (name -> parameters, each with
        ``enabled``, optionally its own ``preparation``).

    Raises
    ------
    ValueError
        On unknown keys or algorithm names (named in the message) and on
        values of the wrong type. Algorithm parameters are passed through: a
        wrong one fails that algorithm alone when the suite runs.
    """
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    return validate_config(raw, source=str(path))


def validate_config(config: Mapping, *, source: str = "the clustering configuration") -> dict:
    """Check a configuration mapping and fill in defaults (see :func:`load_config`)."""
    if not isinstance(config, Mapping):
        raise ValueError(f"{source} must be a mapping, not {type(config).__name__}")
    unknown = sorted(set(config) - set(DEFAULTS) - {"algorithms"})
    if unknown:
        raise ValueError(
            f"unknown key(s) in {source}: {', '.join(map(str, unknown))} "
            f"(known: {', '.join([*DEFAULTS, 'algorithms'])})"
        )
    cfg = {**copy.deepcopy(DEFAULTS), **copy.deepcopy(dict(config))}
    _require(_is_int(cfg["seed"]) and cfg["seed"] >= 0, source, "seed must be a non-negative integer")
    _require(_is_int(cfg["seeds"]) and cfg["seeds"] >= 1, source, "seeds must be a positive integer")
    _require(
        _is_number(cfg["memory_budget_gb"]) and cfg["memory_budget_gb"] > 0,
        source,
        "memory_budget_gb must be a positive number",
    )
    _require(
        _is_int(cfg["silhouette_max_n"]) and cfg["silhouette_max_n"] >= 2,
        source,
        "silhouette_max_n must be an integer of at least 2",
    )
    _require(
        _is_int(cfg["chance_permutations"]) and cfg["chance_permutations"] >= 1,
        source,
        "chance_permutations must be a positive integer",
    )
    degenerate = cfg["degenerate"] or {}
    _require(isinstance(degenerate, Mapping), source, "degenerate must be a mapping of thresholds")
    unknown = sorted(set(degenerate) - set(DEGENERACY_DEFAULTS))
    _require(not unknown, source, f"unknown degenerate threshold(s) {unknown} (known: {list(DEGENERACY_DEFAULTS)})")
    cfg["degenerate"] = {**DEGENERACY_DEFAULTS, **degenerate}
    for key, value in cfg["degenerate"].items():
        _require(_is_number(value) and value >= 0, source, f"degenerate.{key} must be a non-negative number")
    cfg["preparation"] = _validate_preparation(cfg["preparation"], source)

    algorithms = cfg.get("algorithms")
    _require(isinstance(algorithms, Mapping) and algorithms, source, "algorithms must be a non-empty mapping")
    unknown = [str(name) for name in algorithms if name not in ALGORITHMS]
    if unknown:
        raise ValueError(
            f"unknown algorithm(s) in {source}: {', '.join(unknown)} (known: {', '.join(ALGORITHMS)})"
        )
    checked = {}
    for name, spec in algorithms.items():
        spec = {} if spec is None else spec
        _require(isinstance(spec, Mapping), source, f"algorithms.{name} must be a mapping of parameters")
        spec = {"enabled": True, **spec}
        _require(
            isinstance(spec["enabled"], bool), source, f"algorithms.{name}.enabled must be true or false"
        )
        cap = spec.get("max_samples")
        _require(
            cap is None or (_is_int(cap) and cap >= 2),
            source,
            f"algorithms.{name}.max_samples must be an integer of at least 2",
        )
        if "preparation" in spec:
            spec["preparation"] = _validate_preparation(spec["preparation"], f"{source}: algorithms.{name}")
        checked[name] = spec
    cfg["algorithms"] = checked
    return cfg


def algorithm_preparation(config: Mapping, name: str) -> dict:
    """The feature preparation an algorithm runs on: its own, or the configuration's.

    Parameters
    ----------
    config : mapping
        A validated configuration (:func:`validate_config`).
    name : str
        An algorithm of the configuration.

    Returns
    -------
    dict
        The checked preparation mapping.
    """
    if name not in config["algorithms"]:
        raise KeyError(f"{name} is not in the clustering configuration (it has {', '.join(config['algorithms'])})")
    return config["algorithms"][name].get("preparation", config["preparation"])


def _is_number(value) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)
