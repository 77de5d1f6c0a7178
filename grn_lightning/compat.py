"""Make ``import torchvision`` work when its compiled extension cannot load.

Why: on CPU-only machines the only torchvision 0.28 wheel on PyPI is built against CUDA torch. Its C
extension (``torchvision/_C.so``) fails to load on the CPU build of torch, so the custom operators
``torchvision::nms`` etc. are never defined, and ``torchvision/_meta_registrations.py`` then raises
``RuntimeError: operator torchvision::nms does not exist`` at import time. ``lightning``,
``torchmetrics``, ``lpips`` and ``pytorch-fid`` all import torchvision, although none of them needs
the compiled detection operators (they use ``torchvision.models`` / ``transforms``, pure Python).

What: only when that exact failure happens, re-import torchvision while ``torch.library.register_fake``
skips registrations for ``torchvision::`` operators that do not exist. Nothing changes on machines
where torchvision imports normally (every GPU install). The detection ops (nms, roi_align, ...) stay
unavailable on such machines; grn-lightning never calls them.
"""

from __future__ import annotations

import sys

_TORCHVISION_OP_PREFIX = "torchvision::"


def _torchvision_op_exists(qualname: str) -> bool:
    import torch

    namespace, _, name = qualname.partition("::")
    try:
        getattr(getattr(torch.ops, namespace), name.split(".")[0]).default  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


def ensure_torchvision_importable() -> bool:
    """Import torchvision, patching around a missing C extension. Returns True if a patch was needed."""
    try:
        import torchvision  # noqa: F401

        return False
    except RuntimeError as err:
        if _TORCHVISION_OP_PREFIX not in str(err):
            raise
    import torch.library

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # drop the half-initialised package before importing it again

    original_register_fake = torch.library.register_fake

    def register_fake_if_op_exists(op, *args, **kwargs):
        if isinstance(op, str) and op.startswith(_TORCHVISION_OP_PREFIX) and not _torchvision_op_exists(op):
            return lambda fn: fn
        return original_register_fake(op, *args, **kwargs)

    torch.library.register_fake = register_fake_if_op_exists
    try:
        import torchvision  # noqa: F401,F811
    finally:
        torch.library.register_fake = original_register_fake
    return True
