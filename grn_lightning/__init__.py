"""grn-lightning: train, evaluate and sample GRN (Generative Refinement Networks) with PyTorch Lightning."""

from grn_lightning.compat import ensure_torchvision_importable as _ensure_torchvision_importable

# Must run before anything imports lightning / torchmetrics / lpips / pytorch-fid (all import torchvision).
# It is a no-op where torchvision imports normally; see compat.py for the CPU-wheel failure it handles.
_ensure_torchvision_importable()

__version__ = "0.1.0"
