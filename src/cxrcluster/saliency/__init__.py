"""Grad-CAM and gradient saliency maps: where in an image a decision comes from.

Two differentiable decisions are explained, both built on a frozen backbone
without any fine-tuning:

- the *class* decision of the linear probe (:mod:`cxrcluster.probe`), folded
  into one dense layer on top of the backbone (:func:`classifier_model`);
- the *cluster* decision of KMeans: output ``k`` of
  :func:`cluster_score_model` compares the distances of the image's prepared
  features to the centroids (by default the margin of centroid ``k`` over the
  runner-up; minus the distance is available). The preparation used before
  clustering (standardisation, PCA) is linear, so it is one more dense layer
  (:func:`preparation_dense`); the optional L2 normalisation is a layer too.
  The largest score is the assigned cluster, and its Grad-CAM shows what in
  the image sends it there.

Both models take images as :func:`cxrcluster.images.load_image` returns them
(0-255, the model's input size) and apply the backbone's own
``preprocess_input`` inside, so gradients are taken with respect to the
image's pixels.

Maps (all ``(H, W)`` float arrays in [0, 1] at the input's size):

- :func:`grad_cam`: class-discriminative, coarse (the resolution of the last
  convolutional block, 7 x 7 for 224-pixel MobileNetV2 inputs, upsampled
  bilinearly). The score differentiated is the pre-softmax logit when the
  model ends with a ``Softmax`` layer.
- :func:`vanilla_saliency`: the absolute gradient of the score with respect
  to each pixel's luminance; fine but noisy.
- :func:`smoothgrad`: the vanilla gradient averaged over noisy copies of the
  image (Smilkov et al., 2017); less noisy.

What they cannot show: that the model is right, or why in clinical terms. A
map says which pixels changed the score, for this model, on this image.

The package is in three modules, and every name below is re-exported here, so
``from cxrcluster import saliency; saliency.grad_cam(...)`` works:

- :mod:`~cxrcluster.saliency.heads`: the differentiable models,
  :func:`classifier_model`, :func:`cluster_score_model` and its
  :class:`CentroidScores` layer, :func:`preparation_dense` and
  :func:`cluster_centroids`.
- :mod:`~cxrcluster.saliency.maps`: the maps, :func:`grad_cam`,
  :func:`vanilla_saliency`, :func:`smoothgrad`, :func:`saliency_maps` and
  :data:`METHODS`, with :func:`find_last_conv_layer` and the layer walking
  that reaches a layer inside a nested backbone.
- :mod:`~cxrcluster.saliency.gallery`: :func:`choose_examples` and the
  figure, :func:`saliency_grid`.
"""

from cxrcluster.saliency.gallery import choose_examples, saliency_grid
from cxrcluster.saliency.heads import (
    CentroidScores,
    classifier_model,
    cluster_centroids,
    cluster_score_model,
    preparation_dense,
)
from cxrcluster.saliency.maps import (
    METHODS,
    find_last_conv_layer,
    grad_cam,
    saliency_maps,
    smoothgrad,
    vanilla_saliency,
)

__all__ = [
    "METHODS",
    "CentroidScores",
    "choose_examples",
    "classifier_model",
    "cluster_centroids",
    "cluster_score_model",
    "find_last_conv_layer",
    "grad_cam",
    "preparation_dense",
    "saliency_grid",
    "saliency_maps",
    "smoothgrad",
    "vanilla_saliency",
]
