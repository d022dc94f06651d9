"""Grad-CAM and gradient saliency maps of one output of a model, and the layer walking they need.

All maps are ``(H, W)`` float arrays in [0, 1] at the input's size:
:func:`grad_cam` (coarse, class-discriminative), :func:`vanilla_saliency`
(the absolute input gradient) and :func:`smoothgrad` (the gradient averaged
over noisy copies); :func:`saliency_maps` computes several of them
(:data:`METHODS`) for several images. :func:`find_last_conv_layer` finds the
Grad-CAM layer, inside a nested backbone too.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from PIL import Image


def _is_softmax(layer) -> bool:
    if isinstance(layer, keras.layers.Softmax):
        return True
    return isinstance(layer, keras.layers.Activation) and getattr(layer.activation, "__name__", "") == "softmax"


def _inner_models(model: keras.Model):
    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def _spatial_layers(model: keras.Model) -> list:
    """Layers with a 4-D output of more than one position, in order, nested models opened."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            out.extend(_spatial_layers(layer))
            continue
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # a layer called more than once has no single output
            continue
        if len(shape) == 4 and (shape[1] or 2) * (shape[2] or 2) > 1:
            out.append(layer)
    return out


def find_last_conv_layer(model: keras.Model) -> str:
    """Name of the last layer with a spatial (4-D, more than 1 x 1) output, nested models included.

    For the registered backbones this is the activation after the last
    convolution (``out_relu`` for MobileNetV2), the usual Grad-CAM layer.
    """
    layers = [layer for layer in _spatial_layers(model) if not isinstance(layer, keras.layers.Lambda)]
    if not layers:
        raise ValueError(f"model {model.name!r} has no layer with a spatial output")
    return layers[-1].name


def _find_layer(model: keras.Model, name: str):
    for layer in model.layers:
        if layer.name == name:
            return layer
    for inner in _inner_models(model):
        found = _find_layer(inner, name)
        if found is not None:
            return found
    return None


_SPLITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _split(model: keras.Model, layer_name: str | None, logits: bool):
    """:func:`_make_split`, built once per model, layer and score."""
    try:
        cache = _SPLITS.setdefault(model, {})
    except TypeError:  # not weak-referenceable: build every time
        return _make_split(model, layer_name, logits)
    key = (layer_name, logits)
    if key not in cache:
        cache[key] = _make_split(model, layer_name, logits)
    return cache[key]


def _make_split(model: keras.Model, layer_name: str | None, logits: bool):
    """A function ``x -> (activations of layer_name or None, scores)``.

    Scores are the model's output, or the input of its final ``Softmax`` layer
    when ``logits``. A layer inside a nested model (the backbone inside the
    classifier) is reached by running the outer model's layers as a chain,
    which is checked against the model's own output.
    """
    last = model.layers[-1]
    out = last.input if logits and _is_softmax(last) else model.output
    target = None
    if layer_name is not None:
        target = _find_layer(model, layer_name)
        if target is None:
            raise ValueError(f"model {model.name!r} has no layer {layer_name!r}")
    if target is None or any(layer is target for layer in model.layers):
        sub = keras.Model(model.inputs, [target.output if target is not None else out, out])

        def direct(x):
            return sub(x, training=False)

        direct.raw = direct
        return direct

    holder = next(inner for inner in _inner_models(model) if _find_layer(inner, layer_name) is not None)
    inner_split = _make_split(holder, layer_name, logits=False)
    steps = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if logits and _is_softmax(last):
        steps = steps[:-1]

    def run(x):
        activations = None
        for layer in steps:
            if layer is holder:
                activations, x = inner_split(x)
            else:
                x = layer(x, training=False)
        return activations, x

    reference = keras.Model(model.inputs, out)
    verified = []

    def checked(x):
        activations, scores = run(x)
        if not verified:  # once per model: the chain gives the model's own output
            expected = reference(x, training=False)
            if not np.allclose(np.asarray(scores), np.asarray(expected), rtol=1e-3, atol=1e-4):
                raise ValueError(f"model {model.name!r} is not a chain of layers around {holder.name!r}: "
                                 f"cannot reach layer {layer_name!r} inside it")
            verified.append(True)
        return activations, scores

    checked.raw = run  # what the compiled gradients trace, once checked has run
    return checked


def _gradients(model: keras.Model, layer_name: str | None, logits: bool):
    """A compiled ``(x, k) -> (activations, gradient)`` of the summed scores of output ``k``.

    The gradient is taken with respect to ``layer_name``'s activations, or to the input ``x`` when
    ``layer_name`` is None (``activations`` is then ``x``). One graph per model, layer and score
    (traced once, for any batch size and output), about five times faster than eager
    differentiation of a MobileNetV2 (27 s against about 6 s for the six SmoothGrad maps of the
    demo run). Samples are independent, so the gradient of the sum is each sample's gradient.
    """
    split = _split(model, layer_name, logits)
    try:
        cache = _SPLITS.setdefault(model, {})
    except TypeError:
        cache = {}
    key = ("gradients", layer_name, logits)
    if key not in cache:
        run = split.raw

        @tf.function(input_signature=[tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32),
                                      tf.TensorSpec([], tf.int32)])
        def gradients(x, k):
            with tf.GradientTape() as tape:
                tape.watch(x)
                activations, scores = run(x)
                if layer_name is None:
                    activations = x
                score = tf.reduce_sum(tf.gather(scores, k, axis=1))
            return activations, tape.gradient(score, activations)

        def checked_then_compiled(x, k):
            split(x[:1])  # the eager check of a nested chain, once (cached in split)
            cache[key] = gradients
            return gradients(x, k)

        cache[key] = checked_then_compiled
    return cache[key]


def _batch(image: np.ndarray) -> tf.Tensor:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one (H, W, 3) image, got shape {image.shape}")
    return tf.convert_to_tensor(image)


def _resize(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if heatmap.shape == shape:
        return heatmap.astype(np.float32)
    resized = Image.fromarray(heatmap.astype(np.float32), mode="F").resize(
        (shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _unit(heatmap: np.ndarray, clip_percentile: float | None = None) -> np.ndarray:
    heatmap = np.maximum(np.asarray(heatmap, dtype=np.float32), 0.0)
    top = float(np.percentile(heatmap, clip_percentile)) if clip_percentile else float(heatmap.max())
    if not np.isfinite(top) or top <= 0:
        return np.zeros_like(heatmap)
    return np.clip(heatmap / top, 0.0, 1.0)


def grad_cam(model: keras.Model, image: np.ndarray, class_index: int, layer_name: str | None = None,
             logits: bool = True) -> np.ndarray:
    """Grad-CAM map of one output of ``model`` for one image (Selvaraju et al., 2017).

    The activations ``A`` of a convolutional layer are weighted by the mean
    gradient of the score over each channel's positions, summed over
    channels, passed through a ReLU (only evidence *for* the output counts),
    upsampled bilinearly to the image's size and divided by their maximum.

    Parameters
    ----------
    model : keras.Model
        E.g. :func:`cxrcluster.saliency.heads.classifier_model` or
        :func:`cxrcluster.saliency.heads.cluster_score_model`.
    image : numpy.ndarray
        ``(H, W, 3)`` (or ``(H, W)`` luminance) in the model's input scale.
    class_index : int
        The output explained (class, or cluster column).
    layer_name : str, optional
        The convolutional layer; by default :func:`find_last_conv_layer`.
    logits : bool, default True
        Differentiate the input of a final ``Softmax`` layer (the logit), as
        in the Grad-CAM paper, rather than the probability.

    Returns
    -------
    numpy.ndarray of float32, shape (H, W)
        In [0, 1]; all zeros when no position has positive evidence.
    """
    x = _batch(image)
    activations, grads = _gradients(model, layer_name or find_last_conv_layer(model), logits)(
        x, tf.constant(class_index, tf.int32))
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))[0].numpy()
    return _unit(_resize(cam, tuple(x.shape[1:3])))


def _input_gradients(model: keras.Model, images: np.ndarray, class_index: int, logits: bool,
                     batch_size: int) -> np.ndarray:
    gradients = _gradients(model, None, logits)
    k = tf.constant(class_index, tf.int32)
    out = []
    for start in range(0, len(images), batch_size):
        _, grads = gradients(tf.convert_to_tensor(images[start:start + batch_size]), k)
        out.append(grads.numpy())
    # the three channels are one grey pixel repeated: its gradient is their sum
    return np.concatenate(out).sum(axis=-1)


def vanilla_saliency(model: keras.Model, image: np.ndarray, class_index: int, logits: bool = True,
                     clip_percentile: float = 99.0) -> np.ndarray:
    """Absolute gradient of one output with respect to each pixel (Simonyan et al., 2014).

    Parameters
    ----------
    model, image, class_index, logits
        As for :func:`grad_cam`.
    clip_percentile : float, default 99.0
        The map is divided by this percentile and clipped to 1, so that a few
        extreme pixels do not make the rest invisible.

    Returns
    -------
    numpy.ndarray of float32, shape (H, W)
        In [0, 1].
    """
    x = _batch(image).numpy()
    grads = _input_gradients(model, x, class_index, logits, batch_size=1)[0]
    return _unit(np.abs(grads), clip_percentile)


def smoothgrad(model: keras.Model, image: np.ndarray, class_index: int, n: int = 25, sigma: float = 0.15,
               seed: int = 0, logits: bool = True, clip_percentile: float = 99.0,
               batch_size: int = 8) -> np.ndarray:
    """Gradient averaged over noisy copies of the image (SmoothGrad, Smilkov et al., 2017).

    Parameters
    ----------
    model, image, class_index, logits, clip_percentile
        As for :func:`vanilla_saliency`.
    n : int, default 25
        Noisy copies.
    sigma : float, default 0.15
        Standard deviation of the Gaussian noise, as a fraction of the image's
        value range (the paper finds 10-20 % best).
    seed : int, default 0
        Seeds the noise.
    batch_size : int, default 8
        Copies per forward pass.

    Returns
    -------
    numpy.ndarray of float32, shape (H, W)
        The absolute value of the mean gradient, in [0, 1].
    """
    x = _batch(image).numpy()[0]
    spread = float(x.max() - x.min()) or 1.0
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, sigma * spread, size=(n, *x.shape[:2], 1)).astype(np.float32)
    noisy = x[None] + noise  # the same noise on the three channels: the copies stay grey images
    grads = _input_gradients(model, noisy, class_index, logits, batch_size)
    return _unit(np.abs(grads.mean(axis=0)), clip_percentile)


#: The maps :func:`saliency_maps` can compute, by name.
METHODS = {"Grad-CAM": grad_cam, "vanilla gradient": vanilla_saliency, "SmoothGrad": smoothgrad}


def saliency_maps(model: keras.Model, images: Sequence[np.ndarray], class_indices: Sequence[int],
                  methods: Sequence[str] = tuple(METHODS), **kwargs) -> dict[str, list[np.ndarray]]:
    """Compute several maps for several images, each for its own output.

    Parameters
    ----------
    model : keras.Model
        The model explained.
    images : sequence of numpy.ndarray
        ``(H, W, 3)`` inputs.
    class_indices : sequence of int
        The output explained for each image.
    methods : sequence of str
        Keys of :data:`METHODS`.
    **kwargs
        Passed to :func:`smoothgrad` (``n``, ``sigma``, ``seed``).

    Returns
    -------
    dict of str to list of numpy.ndarray
        Method name -> one map per image, in order; ready for
        :func:`cxrcluster.saliency.gallery.saliency_grid`.
    """
    if len(images) != len(class_indices):
        raise ValueError(f"{len(images)} images for {len(class_indices)} class indices")
    out = {}
    for name in methods:
        fn = METHODS[name]
        extra = kwargs if fn is smoothgrad else {}
        out[name] = [fn(model, img, int(k), **extra) for img, k in zip(images, class_indices, strict=True)]
    return out
