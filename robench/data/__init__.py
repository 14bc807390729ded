"""Datasets -> batches of ([0, 1] float images, labels, row positions), with stable sample ids.

Built-in: ``digits`` (scikit-learn's bundled 8x8 digits, the default) and
``fashion-mnist[:DIR]`` and ``mnist:DIR`` (IDX files); anything else is an ImageFolder directory
or a timm dataset string (``torch/...``, ``hfds/...``).

Every source names its classes in index order (``classes``). Image folders number their
class folders in natural order (1, 2, 10: timm's) or as strings (1, 10, 2: torchvision's
ImageFolder), or by a class list (a ``--classes`` file, a checkpoint's), because a model is
only right when its output index means the class the data labels with that index.

Each source keeps only what it must in memory (digits and Fashion-MNIST are a few MB
of uint8); images are resized per batch to the model's input size, so memory stays
O(batch) whatever the model's resolution.

Modules, each importing only those above it in this list:

- ``inputs``: what every source gives: InputConfig, Batch, the Source protocol, ``select``.
- ``digests``: content hashes of a sample, of a dataset's samples, of its id list.
- ``channels``: gray to RGB and RGB to luminance (``to_channels``), and the note saying so.
- ``builtin``: TensorSource and scikit-learn's digits.
- ``idx``: IDX files: MNIST-format folders and Fashion-MNIST.
- ``decode``: PIL images to [0, 1]: 16-bit and float gray, decompression bombs, timm's eval transform.
- ``images``: ImageSource, decoding per batch in a DataLoader.
- ``classes``: class lists: orders, checks, the ``--classes`` file, a folder's numbering.
- ``folders``: image folders as ImageSources, and their train/val subfolders.
- ``timm_sets``: timm dataset strings (``torch/...``, ``hfds/...``).
- ``open``: a data spec to a source (``open_source``), and the rows of one as a source (``subset``).

This package re-exports the names the other packages use.
"""

from robench.data.builtin import TensorSource, load_digits_source
from robench.data.channels import channel_note, to_channels
from robench.data.classes import CLASS_ORDERS, class_list_problem, few_pair, read_class_list
from robench.data.digests import content_sha256, ids_sha256
from robench.data.idx import FASHION_MNIST_DIR, load_fashion_mnist_source
from robench.data.inputs import Batch, InputConfig, Source, select
from robench.data.open import has_test_split, is_folder, open_source, subset

__all__ = [
    "CLASS_ORDERS",
    "FASHION_MNIST_DIR",
    "Batch",
    "InputConfig",
    "Source",
    "TensorSource",
    "channel_note",
    "class_list_problem",
    "content_sha256",
    "few_pair",
    "has_test_split",
    "ids_sha256",
    "is_folder",
    "load_digits_source",
    "load_fashion_mnist_source",
    "open_source",
    "read_class_list",
    "select",
    "subset",
    "to_channels",
]
