"""Minimal pure-Python stand-in for the parts of torchvision used by the
PyTorch-GAN reference scripts (``implementations/dcgan/dcgan.py`` and
``implementations/gan/gan.py``).

Why: torchvision cannot be installed beside the torch build in our venv, and the
benchmark must run the reference scripts unmodified. This package is put first
on ``PYTHONPATH`` by ``benchmarks/gan_reference.py`` only; it is never imported
by genforge itself.

Written by genforge from torchvision's documented behaviour (no torchvision
code is copied). Covered API:

* ``torchvision.transforms``: ``Compose``, ``Resize`` (PIL input), ``ToTensor``,
  ``Normalize``, ``InterpolationMode``
* ``torchvision.datasets.MNIST`` (reads local IDX files, never downloads)
* ``torchvision.utils.make_grid`` / ``save_image`` (PNG via PIL)
"""

__version__ = "0.0+genforge.reference_shim"
IS_GENFORGE_SHIM = True

from . import datasets, transforms, utils  # noqa: E402,F401  (mirror torchvision's eager imports)
