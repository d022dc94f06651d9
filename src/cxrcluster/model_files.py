"""Backbones that come as files: a weights file with a head, and whole Keras models.

Two forms of chest-X-ray-trained (or otherwise fine-tuned) networks are taken:

1. **A weights file for a registered architecture** (``WEIGHTS=<file>`` with a
   name of :data:`cxrcluster.models.BACKBONES`), which may also hold a head or
   other layers, as CheXNet-style releases do (DenseNet121 with a 14-output
   sigmoid layer, saved by ``save_weights``). :func:`load_backbone_weights`
   loads the backbone's layers from it and ignores the rest: by layer name
   from a legacy HDF5 file (Keras 2's ``save_weights``), by Keras' saving path
   from a Keras 3 ``.weights.h5`` file (which names layers by class and order,
   not by name), inside a nested model too. A backbone layer missing from the
   file, or of another shape, is an error naming the layers.
2. **A whole model** (:class:`ModelFile`): ``.keras``, legacy ``.h5``, or a
   TensorFlow SavedModel folder, of any architecture, one or three input
   channels, any square input size. Its features are one layer's output
   (:func:`choose_feature_layer`), globally average-pooled when the layer is
   a feature map, after one of the preprocessings of :data:`PREPROCESS`.
   Its name in every file and table is the file's stem plus the first eight
   hex digits of its SHA-256 (:func:`file_model_name`), so two different files
   never share features.

What is out of scope: PyTorch checkpoints (convert them to Keras first), and
models with more than one input.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

#: Preprocessings of a whole model, applied to images of luminance 0-255 (as
#: :func:`cxrcluster.images.load_image` returns them), in words.
PREPROCESS = {
    "tf": "scaled to [-1, 1] (x / 127.5 - 1), as keras.applications' tf mode",
    "caffe": "RGB to BGR, then ImageNet channel means subtracted (no scaling), as keras.applications' caffe mode",
    "torch": "scaled to [0, 1], then ImageNet channel means subtracted and divided by channel std",
    "raw": "raw 0-255 pixels (the model scales its input itself)",
    "xray": "scaled to [-1024, 1024] (x / 255 * 2048 - 1024), the scaling of chest-X-ray model libraries",
}
#: File endings of whole Keras models; a folder holding ``saved_model.pb`` is a SavedModel.
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


class ModelFileError(ValueError):
    """A model or weights file the pipeline cannot use, and why; raised before any extraction."""


def is_model_path(spec: str) -> bool:
    """Whether a MODELS entry names a file or folder rather than a registered backbone."""
    return "/" in spec or os.sep in spec or spec.lower().endswith(MODEL_SUFFIXES) or Path(spec).exists()


def sha256_path(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, in sorted order)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        if p is not path:
            h.update(p.relative_to(path).as_posix().encode() + b"\0")
        _update(h, p)
    return h.hexdigest()


def _update(h, path) -> None:
    """Feed a file to a hash, read in chunks."""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def file_model_name(path: str | os.PathLike, sha256: str | None = None) -> str:
    """``<stem>-<8 hex digits of the SHA-256>``: letters, digits, dots and dashes only (no underscores,
    which separate the model from the algorithm in label CSV names)."""
    path = Path(path)
    stem = path.name[:-len(path.suffix)] if path.suffix.lower() in MODEL_SUFFIXES else path.name
    stem = re.sub(r"[^A-Za-z0-9.-]+", "-", stem).strip("-.") or "model"
    return f"{stem}-{(sha256 or sha256_path(path))[:8]}"


def _kind(path: Path) -> str:
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise ModelFileError(f"{str(path)!r} is a folder without saved_model.pb: not a TensorFlow SavedModel")
    if path.suffix.lower() == ".keras":
        return "keras"
    if path.suffix.lower() in (".h5", ".hdf5"):
        return "h5"
    raise ModelFileError(f"{str(path)!r} is not a model file: expected a .keras or .h5 file, or a SavedModel "
                         "folder (PyTorch checkpoints: convert them to Keras first)")


# ---- preprocessing ----------------------------------------------------------------------------
def preprocess_function(mode: str, channels: int):
    """The function from ``(n, s, s, 3)`` luminance images in 0-255 to the model's ``(n, s, s, channels)`` input."""
    import keras

    if mode not in PREPROCESS:
        raise ModelFileError(f"unknown preprocessing {mode!r}; choose one of {', '.join(PREPROCESS)}")
    if channels == 1 and mode in ("caffe", "torch"):
        raise ModelFileError(f"preprocessing {mode!r} normalises three colour channels; a one-channel model "
                             "takes tf, raw or xray")
    imagenet = keras.applications.imagenet_utils.preprocess_input

    def preprocess(x):
        if mode == "tf":
            y = x / 127.5 - 1.0
        elif mode == "xray":
            y = x / 255.0 * 2048.0 - 1024.0
        elif mode == "raw":
            y = x
        else:
            y = imagenet(x, mode=mode)
        return y[..., :1] if channels == 1 else y  # the three channels are one grey image repeated

    return preprocess


# ---- a weights file with a head ---------------------------------------------------------------
def _legacy_arrays(f) -> dict[str, list]:
    """Layer name -> its arrays, from a legacy HDF5 weights file (Keras 2 ``save_weights``, or a model file's
    ``model_weights`` group)."""
    group = f["model_weights"] if "model_weights" in f else f
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["layer_names"]]
    out = {}
    for name in names:
        if name not in group:  # listed but absent: as good as missing
            continue
        weight_names = [w.decode() if isinstance(w, bytes) else str(w)
                        for w in group[name].attrs.get("weight_names", [])]
        out[name] = [group[name][w][()] for w in weight_names]
    return out


def _keras3_arrays(f) -> dict[str, list]:
    """Saving path (``layers/conv2d_3``) -> arrays, from a Keras 3 ``.weights.h5`` file."""
    out = {}

    def visit(name, obj):
        if name.endswith("/vars") and hasattr(obj, "keys"):
            out[name[:-len("/vars")]] = [obj[k][()] for k in sorted(obj.keys(), key=int)]

    f.visititems(visit)
    return out


def _keras3_paths(model) -> list[tuple[str, object]]:
    """Each layer of ``model`` with its Keras 3 saving path: the snake-cased class name, numbered in order
    (tests/test_model_files.py checks this against a file Keras writes)."""
    from keras.src.utils import naming

    used: dict[str, int] = {}
    out = []
    for layer in model.layers:
        name = naming.to_snake_case(layer.__class__.__name__)
        if name in used:
            used[name] += 1
            name = f"{name}_{used[name]}"
        else:
            used[name] = 0
        out.append((f"layers/{name}", layer))
    return out


def load_backbone_weights(model, path: str | os.PathLike) -> dict:
    """Load the layers of a built backbone from a weights file that may hold more (a head), in place.

    Returns
    -------
    dict
        ``weights_format`` (legacy-h5 by layer name, or keras3 by saving path and with the prefix
        found), ``tensors_loaded``, ``tensors_ignored`` (in the file, not part of the backbone).

    Raises
    ------
    ModelFileError
        Not an HDF5 weights file, or backbone layers missing from it or of another shape (named).
    """
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ModelFileError(f"{str(path)!r} is not an HDF5 weights file ({exc})") from None
    with f:
        legacy = "layer_names" in f.attrs or ("model_weights" in f and "layer_names" in f["model_weights"].attrs)
        stored = _legacy_arrays(f) if legacy else _keras3_arrays(f)
    wanted = [(layer.name, layer) for layer in model.layers if layer.weights] if legacy else \
        [(p, layer) for p, layer in _keras3_paths(model) if layer.weights]
    prefix = ""
    if not legacy:  # the backbone may sit inside a bigger model: find the group that holds all its layers
        prefixes = [""] + sorted({k.rsplit("layers/", 1)[0] for k in stored if "layers/" in k} - {""})
        prefix = max(prefixes, key=lambda p: sum(f"{p}{key}" in stored for key, _ in wanted))
    problems, loaded = [], 0
    for key, layer in wanted:
        arrays = stored.get(prefix + key)
        expected = [tuple(w.shape) for w in layer.weights]
        if arrays is None:
            problems.append(f"{layer.name} (missing)")
        elif [a.shape for a in arrays] != expected:
            problems.append(f"{layer.name} (file {[a.shape for a in arrays]}, backbone {expected})")
    if problems:
        raise ModelFileError(
            f"{str(path)!r} does not hold the {model.name} backbone: {len(problems)} of its {len(wanted)} layers "
            f"with weights are missing or of another shape: {', '.join(problems[:12])}"
            + (f" and {len(problems) - 12} more" if len(problems) > 12 else "")
            + ". Is it a weights file of this architecture (and, for a Keras 3 .weights.h5, saved from a model "
              "built the same way)?")
    used = set()
    for key, layer in wanted:
        arrays = stored[prefix + key]
        layer.set_weights(arrays)
        used.add(prefix + key)
        loaded += len(arrays)
    ignored = sum(len(a) for k, a in stored.items() if k not in used)
    return {"weights_format": "legacy HDF5, by layer name" if legacy else
            f"Keras 3 .weights.h5, by saving path under {prefix or 'the root'!r}",
            "tensors_loaded": loaded, "tensors_ignored": ignored}


# ---- a whole model ----------------------------------------------------------------------------
def _load(path: Path, kind: str):
    """The Keras model in a file, or a SavedModel's serving function wrapped as a layer."""
    import keras

    if kind == "savedmodel":
        return keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    try:
        return keras.models.load_model(str(path), compile=False)
    except (TypeError, ValueError) as exc:
        text = str(exc)
        missing = re.search(r"Could not locate (?:class|function) '([^']+)'", text) or \
            re.search(r"Unknown (?:layer|object)[^:]*: '?([A-Za-z_][A-Za-z0-9_.]*)", text)
        if missing:
            raise ModelFileError(
                f"{str(path)!r} holds a custom layer or object Keras cannot deserialize: {missing.group(1)!r}. "
                "Define it in a module, decorate its class with @keras.saving.register_keras_serializable(), "
                "and import that module before extraction (MODEL_MODULES=<module> in make, model_modules in "
                "the notebooks)") from None
        raise ModelFileError(f"{str(path)!r} is not a Keras model Keras can load ({type(exc).__name__}: "
                             f"{text.splitlines()[0][:300]})") from None
    except OSError as exc:
        raise ModelFileError(f"{str(path)!r} is not a Keras model file ({exc})") from None


def _candidates(model) -> list[str]:
    out = []
    for layer in model.layers:
        try:
            rank = len(layer.output.shape)
        except (AttributeError, ValueError):
            continue
        if rank in (2, 4) and type(layer).__name__ != "InputLayer":
            out.append(f"{layer.name} {tuple(layer.output.shape[1:])}")
    return out[-15:]


def choose_feature_layer(model, requested: str | None = None):
    """The tensor whose (pooled) value is the feature vector, and how it was chosen.

    By default the output of the model's last global pooling layer, else the input of its last dense
    layer (a classifier's features), else an error listing candidate layers. Layers of the model
    itself are considered (a nested backbone counts as one layer, its output).
    """
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if requested:
        found = next((layer for layer in layers if layer.name == requested), None)
        if found is None:
            raise ModelFileError(f"the model has no layer {requested!r} (nested models count as one layer); "
                                 f"candidates: {'; '.join(_candidates(model))}")
        return found.output, f"the layer named by FEATURE_LAYER, {requested!r}"
    pools = [layer for layer in layers if isinstance(layer, (keras.layers.GlobalAveragePooling2D,
                                                             keras.layers.GlobalMaxPooling2D))]
    if pools:
        return pools[-1].output, f"the last global pooling layer, {pools[-1].name!r}"
    dense = [layer for layer in layers if isinstance(layer, keras.layers.Dense)]
    if dense:
        return dense[-1].input, f"the input of the last dense layer, {dense[-1].name!r}"
    raise ModelFileError("the model has neither a global pooling layer nor a dense layer: name the layer whose "
                         f"output is the feature vector with FEATURE_LAYER; candidates: {'; '.join(_candidates(model))}")


@dataclass(frozen=True)
class ModelFile:
    """A whole model used as a backbone: where it is, what it was checked to be, and how it is fed.

    Made by :func:`resolve`, which loads the file once and checks it; :meth:`build` loads it again
    (on a Dask worker too) and checks the file's SHA-256 against :attr:`sha256`.
    """

    name: str
    path: str
    sha256: str
    kind: str  # keras | h5 | savedmodel
    input_size: int
    channels: int
    preprocessing: str  # a key of PREPROCESS
    feature_layer: str | None  # as asked (None: the default rule)
    feature_dim: int
    chosen: str = ""  # the layer used and why, in words
    pooled: bool = False
    modules: tuple[str, ...] = field(default_factory=tuple)
    from_file = True

    # what the registered backbones answer too (cxrcluster.models.Backbone)
    def preprocess_input(self):
        return preprocess_function(self.preprocessing, self.channels)

    def describe(self) -> dict:
        """The sidecar's record of the network and its input."""
        return {"model_file": self.path, "model_file_sha256": self.sha256, "model_file_kind": self.kind,
                "feature_layer": self.chosen, "pooling": "global average" if self.pooled else "none (the layer "
                "is a vector)", "input_size": [self.input_size, self.input_size, self.channels],
                "preprocessing": {"mode": self.preprocessing, "description": PREPROCESS[self.preprocessing]}}

    def verify(self) -> None:
        """Refuse when the file is no longer the one checked (its SHA-256, computed again when its size or
        modification time changed). A Dask worker calls this before every shard."""
        path = Path(self.path)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        signature = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
        if _VERIFIED.get(self.path) == (signature, self.sha256):
            return
        actual = sha256_path(self.path)
        if actual != self.sha256:
            raise ModelFileError(f"{self.path!r} changed since it was checked (SHA-256 {actual[:12]}..., expected "
                                 f"{self.sha256[:12]}...): give every worker the same model file")
        _VERIFIED[self.path] = (signature, self.sha256)

    def build(self):
        """The feature extractor: preprocessed ``(n, s, s, channels)`` -> ``(n, feature_dim)``."""
        self.verify()
        key = (self.sha256, self.feature_layer, self.input_size, self.modules)
        if key in _LOADED:  # resolve() loaded it in this process a moment ago: loading again costs seconds
            return _LOADED.pop(key)
        model, _, _ = _extractor(Path(self.path), self.kind, self.feature_layer, self.input_size, self.modules)
        return model


#: The extractor resolve() last built, for the build() that follows in the same process (taken once).
_LOADED: dict = {}
#: Files found unchanged: path -> (their names, sizes and times, the SHA-256 they had).
_VERIFIED: dict = {}


def _import_modules(modules) -> None:
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ModelFileError(f"cannot import the module {module!r} named to register custom layers: {exc}") \
                from None


def _extractor(path: Path, kind: str, feature_layer: str | None, input_size: int | None, modules=()):
    """Load the model and cut it at its feature layer: (extractor, chosen in words, pooled)."""
    import keras

    _import_modules(modules)
    loaded = _load(path, kind)
    if kind == "savedmodel":
        return _savedmodel_extractor(path, loaded, feature_layer, input_size)
    if len(loaded.inputs) != 1:
        raise ModelFileError(f"{str(path)!r} expects {len(loaded.inputs)} inputs; a backbone takes one image")
    output, chosen = choose_feature_layer(loaded, feature_layer)
    pooled = len(output.shape) == 4
    if pooled:
        output = keras.layers.GlobalAveragePooling2D(name="cxrcluster_pool")(output)
    if len(output.shape) != 2:
        raise ModelFileError(f"the feature layer ({chosen}) gives shape {tuple(output.shape[1:])}, not a vector "
                             "nor a feature map to pool: choose another with FEATURE_LAYER; candidates: "
                             f"{'; '.join(_candidates(loaded))}")
    return keras.Model(loaded.inputs[0], output, name=f"{loaded.name}_features"), chosen, pooled


def _savedmodel_extractor(path: Path, layer, feature_layer: str | None, input_size: int | None):
    import keras
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    if len(specs) != 1:
        raise ModelFileError(f"{str(path)!r} expects {len(specs)} inputs ({', '.join(specs)}); a backbone takes one")
    spec = next(iter(specs.values()))
    shape = tuple(spec.shape)
    if len(shape) != 4:
        raise ModelFileError(f"{str(path)!r} takes inputs of shape {shape}, not images (batch, height, width, "
                             "channels)")
    size = shape[1] or input_size
    inputs = keras.Input((size, size, shape[3]))
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        keys = sorted(outputs)
        key = feature_layer or (keys[0] if len(keys) == 1 else None)
        if key not in outputs:
            raise ModelFileError(f"the SavedModel's serving signature has outputs {keys}: name the feature output "
                                 "with FEATURE_LAYER")
        outputs, chosen = outputs[key], f"the serving signature's output {key!r}"
    else:
        chosen = "the serving signature's output"
    pooled = len(outputs.shape) == 4
    if pooled:
        outputs = keras.layers.GlobalAveragePooling2D(name="cxrcluster_pool")(outputs)
    if len(outputs.shape) != 2:
        raise ModelFileError(f"the SavedModel's output ({chosen}) has shape {tuple(outputs.shape[1:])}, not a "
                             "vector nor a feature map to pool")
    return keras.Model(inputs, outputs, name=f"{path.name}_features"), chosen, pooled


def resolve(spec: str | os.PathLike, *, feature_layer: str | None = None, preprocess: str | None = None,
            input_size: int | None = None, modules=()) -> ModelFile:
    """Check a whole-model file and describe it as a backbone; every problem is a :class:`ModelFileError`.

    Parameters
    ----------
    spec : path-like
        ``.keras``, ``.h5`` (a whole model, not weights only), or a SavedModel folder.
    feature_layer : str, optional
        The layer (a SavedModel: the output) whose value is the feature vector; by default
        :func:`choose_feature_layer`'s rule.
    preprocess : str
        A key of :data:`PREPROCESS`: what the model was trained on. Required: a file does not say.
    input_size : int, optional
        The square input size, for a model that does not state one; must agree with one it states.
    modules : sequence of str
        Modules to import first (they register the model's custom layers).
    """
    path = Path(spec).expanduser().resolve()
    if not path.exists():
        raise ModelFileError(f"model file {str(path)!r} does not exist")
    kind = _kind(path)
    if not preprocess:
        raise ModelFileError(f"{path.name}: say how its input was scaled in training with PREPROCESS= "
                             f"({', '.join(PREPROCESS)}); a model file does not record it")
    if preprocess not in PREPROCESS:
        raise ModelFileError(f"unknown PREPROCESS={preprocess!r}; choose one of {', '.join(PREPROCESS)}")
    sha = sha256_path(path)
    model, chosen, pooled = _extractor(path, kind, feature_layer or None, input_size, tuple(modules))
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[3] not in (1, 3):
        raise ModelFileError(f"{path.name} takes inputs of shape {shape[1:]}: expected (height, width, 1 or 3)")
    stated = {s for s in shape[1:3] if s is not None}
    if len(stated) > 1:
        raise ModelFileError(f"{path.name} takes {shape[1]}x{shape[2]} inputs; only square inputs are supported")
    size = next(iter(stated), None)
    if size is not None and input_size and int(input_size) != size:
        raise ModelFileError(f"INPUT_SIZE={input_size} disagrees with the {size}-pixel input {path.name} states")
    size = size or (int(input_size) if input_size else None)
    if not size:
        raise ModelFileError(f"{path.name} does not state its input size: give it with INPUT_SIZE=")
    preprocess_function(preprocess, shape[3])  # refuses caffe or torch for a one-channel model
    _LOADED.clear()
    _LOADED[(sha, feature_layer or None, size, tuple(modules))] = model
    return ModelFile(name=file_model_name(path, sha), path=str(path), sha256=sha, kind=kind, input_size=size,
                     channels=int(shape[3]), preprocessing=preprocess, feature_layer=feature_layer or None,
                     feature_dim=int(model.outputs[0].shape[-1]), chosen=chosen, pooled=pooled,
                     modules=tuple(modules))
