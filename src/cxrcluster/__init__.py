"""Unsupervised study of chest X-ray classes with pretrained CNN features.

The package holds every helper the notebooks call. Submodules are imported
explicitly (``from cxrcluster import metrics``) so that importing one stage's
helpers never pulls in another stage's heavy dependencies (TensorFlow, for
example, is only imported by :mod:`cxrcluster.models` and
:mod:`cxrcluster.features`).
"""

__version__ = "0.1.0"
