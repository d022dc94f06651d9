"""The registry of pretrained Keras backbones used as feature extractors.

Every entry knows its Keras constructor, native input size, its own
``preprocess_input`` (the function of its ``keras.applications`` family: feeding
``x / 255`` to ImageNet weights trained on another scaling is a bug), its
pooling (global average over the last convolutional block) and its feature
dimension. Adding a model is one :class:`Backbone` entry in :data:`BACKBONES`.

This module imports Keras lazily, so listing the registry
(``python -m cxrcluster.models``) needs only the standard library.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

#: Preprocessing of each ``keras.applications`` family, in words.
PREPROCESSING = {
    "none": "raw 0-255 pixels (rescaling and normalisation are layers inside the model)",
    "caffe": "RGB to BGR, then ImageNet channel means subtracted (no scaling)",
    "tf": "scaled to [-1, 1] (x / 127.5 - 1)",
    "torch": "scaled to [0, 1], then ImageNet channel means subtracted and divided by channel std",
}


@dataclass(frozen=True)
class Backbone:
    """A pretrained Keras network used without its classifier head.

    Attributes
    ----------
    name : str
        Name used in file names and on the command line (no underscores).
    constructor : str
        Attribute of ``keras.applications`` that builds the network.
    family : str
        Sub-module of ``keras.applications`` whose ``preprocess_input`` the
        network was trained with.
    preprocessing : str
        Key of :data:`PREPROCESSING`.
    input_size : int
        Native square input size in pixels.
    feature_dim : int
        Length of the globally average-pooled feature vector.
    weights_file : str
        File name of the no-top ImageNet weights in Keras' cache
        (``$KERAS_HOME/models/``).
    kwargs : dict
        Extra constructor arguments (e.g. ``alpha``).
    """

    name: str
    constructor: str
    family: str
    preprocessing: str
    input_size: int
    feature_dim: int
    weights_file: str
    kwargs: dict = field(default_factory=dict)

    #: Grey images are repeated to three channels for every registered network.
    channels = 3
    from_file = False

    def preprocess_input(self):
        """Return the family's ``keras.applications.<family>.preprocess_input``."""
        import keras

        return getattr(keras.applications, self.family).preprocess_input

    def describe(self) -> dict:
        """The sidecar's record of the network and its input."""
        return {"keras_constructor": f"keras.applications.{self.constructor}", "constructor_kwargs": self.kwargs,
                "pooling": "global average", "input_size": [self.input_size, self.input_size, 3],
                "preprocessing": {"function": f"keras.applications.{self.family}.preprocess_input",
                                  "description": PREPROCESSING[self.preprocessing]}}


_T = "_weights_tf_dim_ordering_tf_kernels"
BACKBONES: dict[str, Backbone] = {b.name: b for b in [
    Backbone("EfficientNetB0", "EfficientNetB0", "efficientnet", "none", 224, 1280, "efficientnetb0_notop.h5"),
    Backbone("ResNet50", "ResNet50", "resnet50", "caffe", 224, 2048, f"resnet50{_T}_notop.h5"),
    Backbone("ResNet152", "ResNet152", "resnet", "caffe", 224, 2048, f"resnet152{_T}_notop.h5"),
    Backbone("VGG19", "VGG19", "vgg19", "caffe", 224, 512, f"vgg19{_T}_notop.h5"),
    Backbone("DenseNet121", "DenseNet121", "densenet", "torch", 224, 1024, f"densenet121{_T}_notop.h5"),
    Backbone("InceptionV3", "InceptionV3", "inception_v3", "tf", 299, 2048, f"inception_v3{_T}_notop.h5"),
    Backbone("Xception", "Xception", "xception", "tf", 299, 2048, f"xception{_T}_notop.h5"),
    Backbone("MobileNetV2", "MobileNetV2", "mobilenet_v2", "tf", 224, 1280, f"mobilenet_v2{_T}_1.0_224_no_top.h5"),
    Backbone("MobileNetV2-0.35", "MobileNetV2", "mobilenet_v2", "tf", 224, 1280,
             f"mobilenet_v2{_T}_0.35_224_no_top.h5", {"alpha": 0.35}),
    Backbone("MobileNetV3Large", "MobileNetV3Large", "mobilenet_v3", "none", 224, 960,
             "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
]}


class WeightsUnavailableError(RuntimeError):
    """The requested weights are neither cached nor downloadable."""


def get_backbone(spec, *, feature_layer: str | None = None, preprocess: str | None = None,
                 input_size: int | None = None, modules=()):
    """The backbone a MODELS entry names: a :class:`Backbone` of the registry, or a whole model file.

    Parameters
    ----------
    spec : str, Backbone or cxrcluster.model_files.ModelFile
        A registry name, a path to a ``.keras`` / ``.h5`` model or a SavedModel folder
        (:func:`cxrcluster.model_files.resolve`, which takes the keyword options), or an
        already resolved backbone (returned as it is).

    Raises
    ------
    KeyError
        An unknown name that is not a path, listing the known ones.
    cxrcluster.model_files.ModelFileError
        A model file that cannot be used, and why.
    """
    from cxrcluster import model_files

    if isinstance(spec, (Backbone, model_files.ModelFile)):
        return spec
    if spec in BACKBONES:
        return BACKBONES[spec]
    if model_files.is_model_path(str(spec)):
        return model_files.resolve(spec, feature_layer=feature_layer, preprocess=preprocess, input_size=input_size,
                                   modules=modules)
    raise KeyError(f"unknown model {spec!r}; known models: {', '.join(BACKBONES)}, or a path to a .keras or .h5 "
                   "model or a SavedModel folder") from None


def model_name(spec) -> str:
    """The name a MODELS entry goes by in files and tables, without loading anything: a registry name as
    it is, a model file's stem and hash (:func:`cxrcluster.model_files.file_model_name`)."""
    from cxrcluster import model_files

    if not isinstance(spec, str):
        return spec.name
    if spec in BACKBONES:
        return spec
    if model_files.is_model_path(spec):
        if not Path(spec).exists():
            raise FileNotFoundError(f"model file {spec!r} does not exist")
        return model_files.file_model_name(spec)
    raise KeyError(f"unknown model {spec!r}; known models: {', '.join(BACKBONES)}, or a path to a .keras or .h5 "
                   "model or a SavedModel folder")


def expand_models(spec: str | list[str]) -> list[str]:
    """Turn a model list (``"ResNet50 VGG19"``, ``"all"``, or a list) into entries (names, or model paths).

    Unknown names raise ``KeyError`` naming them and the known ones.
    """
    names = spec.replace(",", " ").split() if isinstance(spec, str) else list(spec)
    if names == ["all"]:
        return list(BACKBONES)
    for name in names:
        model_name(name)
    return names


def keras_cache_dir() -> Path:
    """The folder where Keras caches downloaded weights (``$KERAS_HOME/models``)."""
    home = os.environ.get("KERAS_HOME")
    if not home:  # Keras' own rule: ~/.keras, or /tmp/.keras when home is read-only
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return Path(home) / "models"


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in chunks (:func:`cxrcluster.model_files.sha256_path`)."""
    from cxrcluster import model_files

    return model_files.sha256_path(path)


@contextmanager
def _seeded_keras(seed: int) -> Iterator[None]:
    """``keras.utils.set_random_seed(seed)``, with Keras' seed draws kept from other threads.

    Keras seeds every unseeded initializer with a number drawn from Python's
    shared ``random`` module, one draw per layer while the model is built.
    Another thread drawing from that module meanwhile (a Dask worker's event
    loop does) changes the random weights from some layer on: a backbone built
    in a Dask task differed from the same build here from its seventh kernel
    on. While the model is built, Keras draws from a private generator seeded
    like the shared one, so the weights are those of a plain
    ``set_random_seed`` with no other thread about.
    """
    import random

    import keras
    from keras.src.random import seed_generator

    keras.utils.set_random_seed(seed)
    shared = seed_generator.python_random
    seed_generator.python_random = random.Random(seed)
    try:
        yield
    finally:
        seed_generator.python_random = shared


def _built(constructor, seed: int, **kwargs):
    with _seeded_keras(seed):
        return constructor(**kwargs)


def build_backbone(name, weights: str = "imagenet", seed: int = 0):
    """Build a backbone as a feature extractor (no top, global average pooling).

    Parameters
    ----------
    name : str, Backbone or cxrcluster.model_files.ModelFile
        A key of :data:`BACKBONES`, or a resolved backbone (:func:`get_backbone`). A whole model
        file is built from its own weights (``weights`` and ``seed`` are not used), after its
        SHA-256 is checked against the one it was resolved with.
    weights : str
        ``"imagenet"`` (through Keras' download-and-cache, so
        ``$KERAS_HOME/models`` serves offline copies), ``"none"`` (random
        initialisation from ``seed``: the features are meaningless and a
        warning says so), or a path to a weights file for this architecture,
        which may also hold a head or other layers
        (:func:`cxrcluster.model_files.load_backbone_weights`).
    seed : int
        Seed of the random initialisation.

    Returns
    -------
    model : keras.Model
        Maps ``(batch, input_size, input_size, 3)`` preprocessed images to
        ``(batch, feature_dim)``.
    provenance : dict
        ``weights`` (imagenet / none / path), ``weights_file`` and
        ``weights_sha256`` (None for random weights), ``trained`` (bool).

    Raises
    ------
    WeightsUnavailableError
        When ImageNet weights are neither cached nor downloadable; the message
        names the file, the cache folder, ``KERAS_HOME`` and ``WEIGHTS=none``.
    FileNotFoundError
        When a weights path does not exist.
    cxrcluster.model_files.ModelFileError
        A weights file without every backbone layer at its shape (named), or a changed model file.
    """
    import keras

    from cxrcluster import model_files

    backbone = get_backbone(name)
    if backbone.from_file:
        return backbone.build(), {
            "weights": "model file", "weights_file": backbone.path, "weights_sha256": backbone.sha256,
            "trained": True, "weights_note": "the model file's own weights, not the registry's ImageNet weights: what they were "
                            "trained on is the file's"}
    name = backbone.name
    ctor = getattr(keras.applications, backbone.constructor)
    shape = (backbone.input_size, backbone.input_size, 3)
    kwargs = dict(include_top=False, pooling="avg", input_shape=shape, **backbone.kwargs)
    if weights == "imagenet":
        cached = keras_cache_dir() / backbone.weights_file
        try:
            model = _built(ctor, seed, weights="imagenet", **kwargs)
        except Exception as exc:  # Keras raises a bare Exception on a failed download
            if cached.is_file():
                raise
            raise WeightsUnavailableError(
                f"ImageNet weights for {name} are not available: the file {backbone.weights_file!r} is not "
                f"in Keras' cache folder {str(cached.parent)!r} and could not be downloaded ({exc}). "
                "Put the file there (the cache folder is $KERAS_HOME/models; set KERAS_HOME to use "
                "another folder), pass a weights file with WEIGHTS=/path/to/file.h5, or run with "
                "WEIGHTS=none for random weights (meaningless features, for testing only)."
            ) from exc
        provenance = {"weights": "imagenet", "weights_file": str(cached), "weights_sha256": sha256_file(cached),
                      "trained": True}
    elif weights in ("none", "None", None, ""):
        warnings.warn(f"{name} is built with RANDOM weights (WEIGHTS=none): its features are untrained "
                      "and meaningless for the study; use them to test the pipeline only.", stacklevel=2)
        model = _built(ctor, seed, weights=None, **kwargs)
        provenance = {"weights": "none", "weights_file": None, "weights_sha256": None, "trained": False}
    else:
        path = Path(weights).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"weights file {str(path)!r} for {name} does not exist")
        model = _built(ctor, seed, weights=None, **kwargs)
        loaded = model_files.load_backbone_weights(model, path)
        provenance = {"weights": "file", "weights_file": str(path), "weights_sha256": sha256_file(path),
                      "trained": True, **loaded,
                      "weights_note": "weights from a file, not ImageNet's: what they were trained on is the file's "
                                      "(a head or other layers in it are ignored, counted in tensors_ignored)"}
    return model, provenance


def main(argv: list[str] | None = None) -> None:
    """Print the registered model names, one per line; with ``--names ENTRY...``, each MODELS entry's name and
    the entry, one pair per line (used by the Makefile, which names files by the first)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--names", nargs="*", metavar="ENTRY")
    args = parser.parse_args(argv)
    if args.names is None:
        print("\n".join(BACKBONES))
        return
    try:
        entries = expand_models(" ".join(args.names)) if args.names else []
    except (KeyError, FileNotFoundError) as exc:
        sys.exit(str(exc).strip('"'))
    for entry in entries:
        if any(c.isspace() or c in "=$#%:" for c in entry):
            sys.exit(f"MODELS entry {entry!r}: make cannot carry a path with spaces or any of = $ # % :; "
                     "link the file at a plain path and name that")
        print(f"{model_name(entry)}={Path(entry).expanduser().resolve() if entry not in BACKBONES else entry}")


if __name__ == "__main__":
    main()
