"""Record the exact evaluation protocol next to every number (SPEC section 7: "FID numbers shift with
resize/crop code and evaluator; pin them").

A protocol entry holds the metric values, sample counts, sampling arguments, the sha256 of every weight and
statistics file used, and the software versions. Entries are appended to ``metrics_protocol.json`` (a JSON
list) in the log directory and echoed as text to TensorBoard.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from importlib import metadata
from pathlib import Path

from grn_lightning.weights import sha256_file

__all__ = ["PROTOCOL_FILE", "append_protocol", "file_record", "log_protocol_text", "software_versions"]

PROTOCOL_FILE = "metrics_protocol.json"
_PACKAGES = (
    "grn-lightning", "torch", "torchvision", "lightning", "torchmetrics", "pytorch-fid", "lpips", "numpy", "scipy",
    "pillow",
)  # fmt: skip


def software_versions() -> dict[str, str]:
    """Versions of the packages that change metric values, plus Python and the CUDA / cuDNN builds."""
    import torch

    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["cuda"] = str(torch.version.cuda)
    versions["cudnn"] = str(torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    return versions


def file_record(path: str | os.PathLike | None) -> dict[str, str | None]:
    """Path and sha256 of a weights / statistics file (None entries for random-init networks)."""
    if path is None:
        return {"path": None, "sha256": None, "note": "random_init: randomly initialised network, numbers are not comparable"}
    return {"path": os.fspath(path), "sha256": sha256_file(path)}


def append_protocol(log_dir: str | os.PathLike, entry: dict) -> Path:
    """Append ``entry`` (timestamped) to ``log_dir/metrics_protocol.json`` and return the file path."""
    out = Path(log_dir) / PROTOCOL_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    entries = json.loads(out.read_text()) if out.exists() else []
    entries.append({"time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(), **entry})
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(entries, indent=2, sort_keys=True, default=str))
    tmp.replace(out)  # atomic: a crash never leaves a truncated protocol file
    return out


def log_protocol_text(trainer, tag: str, entry: dict) -> None:
    """Echo the protocol entry as text to every logger that can take text (TensorBoard)."""
    text = "```\n" + json.dumps(entry, indent=2, sort_keys=True, default=str) + "\n```"
    for logger in getattr(trainer, "loggers", []):
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            experiment.add_text(tag, text, global_step=trainer.global_step)
