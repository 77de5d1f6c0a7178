"""Offline weight resolution: one registry of every external weight file grn-lightning may load.

Policy (DESIGN.md "No import-time work, no downloads, ever"): a weight is looked up, in order, at
  1. an explicit path given by the caller (a file, or a directory holding the registered file name),
  2. each directory of ``$GRN_WEIGHTS`` (``os.pathsep``-separated),
  3. the torch hub cache, ``torch.hub.get_dir()/checkpoints`` (``~/.cache/torch/hub/checkpoints`` unless
     ``$TORCH_HOME`` says otherwise), where torchvision / pytorch-fid put the same files when they download.
A file that is not found raises ONE ``MissingWeightsError`` naming the file, the places searched, where to put
it, its checksum and the ``tools/fetch_weights.py`` command; nothing here ever opens a network connection.
Downloading is done only by ``tools/fetch_weights.py`` on a machine with internet.

Checksums: ``sha256`` is the full hex digest where it is published; otherwise ``sha256_prefix`` is the hash
prefix that torch hub conventionally embeds in the file name (``vgg16-397923af.pth``: the file's sha256 starts
with ``397923af``). Entries with neither are only checked for presence; their actual sha256 is recorded by the
evaluation callbacks next to every number (SPEC section 7: "pin them").
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "WEIGHTS",
    "MissingWeightsError",
    "WeightChecksumError",
    "WeightSpec",
    "register_weight",
    "resolve_weight",
    "sha256_file",
    "verify_weight",
    "weight_search_dirs",
]

ENV_VAR = "GRN_WEIGHTS"
FETCH_COMMAND = "python tools/fetch_weights.py {name} --dest {dest}"


@dataclass(frozen=True)
class WeightSpec:
    """One external weight file (or directory) the framework may load.

    Args:
        name: registry key used in configs and ``resolve_weight``.
        filename: file (or directory) name looked up in every search location.
        url: upstream location ``tools/fetch_weights.py`` downloads from.
        sha256: full sha256 hex digest of the file, where published.
        sha256_prefix: leading hex digits of the sha256 (torch hub file-name convention) when the full
            digest is not published.
        is_dir: the weight is a directory (for example a Hugging Face model folder), not a single file.
        required_files: files that must exist inside a directory weight for it to count as present.
        description: what the weight is and who uses it.
    """

    name: str
    filename: str
    url: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    is_dir: bool = False
    required_files: tuple[str, ...] = ()
    description: str = ""

    def checksum_text(self) -> str:
        if self.sha256:
            return f"sha256 {self.sha256}"
        if self.sha256_prefix:
            return f"sha256 starting with {self.sha256_prefix}"
        return "no published checksum (presence only)"


class MissingWeightsError(FileNotFoundError):
    """A registered weight is not present in any search location (no download is attempted)."""


class WeightChecksumError(ValueError):
    """A weight file was found but its sha256 does not match the registry."""


def _torchvision_url(filename: str) -> str:
    return f"https://download.pytorch.org/models/{filename}"


_GRN_HF = "https://huggingface.co/bytedance-research/GRN/resolve/main/"

WEIGHTS: dict[str, WeightSpec] = {}


def register_weight(spec: WeightSpec, overwrite: bool = False) -> WeightSpec:
    """Add ``spec`` to the registry (released GRN checkpoints and user weights go here too)."""
    if spec.name in WEIGHTS and not overwrite:
        raise ValueError(f"weight {spec.name!r} is already registered; pass overwrite=True to replace it")
    if spec.is_dir and (spec.sha256 or spec.sha256_prefix):
        raise ValueError(f"weight {spec.name!r}: a directory weight cannot carry a file checksum")
    WEIGHTS[spec.name] = spec
    return spec


for _spec in (
    WeightSpec(
        name="fid_inception",
        filename="pt_inception-2015-12-05-6726825d.pth",
        url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth",
        sha256_prefix="6726825d",
        description="TF-ported FID Inception-V3 (pytorch-fid FIDInceptionA/C/E structure); gFID, rFID, IS",
    ),
    WeightSpec(
        name="i3d_kinetics400",
        filename="i3d_pretrained_400.pt",
        url="https://github.com/JunyaoHu/common_metrics_on_video_quality/raw/main/fvd/videogpt/"
        "i3d_pretrained_400.pt",
        description="I3D Kinetics-400 (VideoGPT/piergiaj key names) for FVD logits",
    ),
    WeightSpec(
        name="lpips_vgg_backbone",
        filename="vgg16-397923af.pth",
        url=_torchvision_url("vgg16-397923af.pth"),
        sha256_prefix="397923af",
        description="torchvision VGG16 ImageNet trunk for LPIPS-VGG (the linear heads ship in the lpips wheel)",
    ),
    WeightSpec(
        name="lpips_alex_backbone",
        filename="alexnet-owt-7be5be79.pth",
        url=_torchvision_url("alexnet-owt-7be5be79.pth"),
        sha256_prefix="7be5be79",
        description="torchvision AlexNet ImageNet trunk for LPIPS-Alex (the linear heads ship in the lpips wheel)",
    ),
    WeightSpec(
        name="umt5_xxl",
        filename="umt5-xxl",
        url="https://huggingface.co/google/umt5-xxl",
        is_dir=True,
        required_files=("config.json",),
        description="umT5-XXL text encoder + tokenizer folder (Hugging Face layout) for T2I/T2V (SPEC section 5)",
    ),
    WeightSpec(
        name="hbq_tokenizer_16ch",
        filename="HBQ_image_tokenizer_16dim_M4.ckpt",
        url=_GRN_HF + "HBQ_image_tokenizer_16dim_M4.ckpt",
        description="released C2I image tokenizer, C=16, M=4 (weights under 'ema' / 'vae')",
    ),
    WeightSpec(
        name="hbq_tokenizer_64ch",
        filename="HBQ_tokenizer_64dim_M4.ckpt",
        url=_GRN_HF + "HBQ_tokenizer_64dim_M4.ckpt",
        description="released joint image/video tokenizer, C=64, M=4 (weights under 'ema' / 'vae')",
    ),
):
    register_weight(_spec)


def weight_search_dirs() -> list[Path]:
    """Directories searched after an explicit path: every ``$GRN_WEIGHTS`` entry, then the torch hub cache."""
    dirs = [Path(p).expanduser() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    import torch.hub  # deferred: no import-time work

    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (weights are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


# (path, size, mtime_ns) -> digest, so a weight loaded by several callbacks is hashed once per process.
_DIGEST_CACHE: dict[tuple[str, int, int], str] = {}


def _cached_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGEST_CACHE:
        _DIGEST_CACHE[key] = sha256_file(path)
    return _DIGEST_CACHE[key]


def verify_weight(spec: WeightSpec, path: Path) -> str | None:
    """Check ``path`` against the registry checksum; return its sha256 (None for directories)."""
    if spec.is_dir:
        missing = [f for f in spec.required_files if not (path / f).exists()]
        if missing:
            raise MissingWeightsError(
                f"weight {spec.name!r}: directory {path} lacks {', '.join(missing)}; " + _how_to_get(spec)
            )
        return None
    digest = _cached_sha256(path)
    expected = spec.sha256 or spec.sha256_prefix
    if expected and not digest.startswith(expected.lower()):
        raise WeightChecksumError(
            f"weight {spec.name!r}: {path} has sha256 {digest}, expected {spec.checksum_text()}. "
            f"The file is corrupt or a different version; re-fetch it with "
            f"`{FETCH_COMMAND.format(name=spec.name, dest=path.parent)}`."
        )
    return digest


def _how_to_get(spec: WeightSpec) -> str:
    dest = os.environ.get(ENV_VAR, "").split(os.pathsep)[0] or "~/.cache/torch/hub/checkpoints"
    kind = "directory" if spec.is_dir else "file"
    return (
        f"put the {kind} {spec.filename!r} ({spec.checksum_text()}) into ${ENV_VAR} or "
        f"~/.cache/torch/hub/checkpoints, or pass its path explicitly. Upstream: {spec.url}. "
        f"On a machine with internet run `{FETCH_COMMAND.format(name=spec.name, dest=dest)}`."
    )


def _candidate(location: Path, spec: WeightSpec) -> Path:
    """An explicit path may name the weight itself or a directory holding it under its registered name."""
    if not location.is_dir():
        return location
    if spec.is_dir and all((location / f).exists() for f in spec.required_files):
        return location  # the weight directory itself
    return location / spec.filename


def resolve_weight(name: str, path: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Return the local path of registered weight ``name``, never downloading.

    Args:
        name: a key of ``WEIGHTS``.
        path: explicit file (or directory holding the registered file name); searched first, and when given
            but absent it is an error even if the file exists elsewhere (the caller asked for that file).
        verify: check the sha256 against the registry (hash computed once per process per file).

    Raises:
        KeyError: unknown name (message lists the registered names).
        MissingWeightsError: not found; the message names the file, the searched places, the checksum and the
            fetch command.
        WeightChecksumError: found but the checksum differs.
    """
    if name not in WEIGHTS:
        raise KeyError(f"unknown weight {name!r}; registered weights: {', '.join(sorted(WEIGHTS))}")
    spec = WEIGHTS[name]
    if path is not None:
        searched = [_candidate(Path(path).expanduser(), spec)]
    else:
        searched = [d / spec.filename for d in weight_search_dirs()]
    for candidate in searched:
        if candidate.exists() and candidate.is_dir() == spec.is_dir:
            if verify:
                verify_weight(spec, candidate)
            return candidate
    places = "\n  ".join(str(c) for c in searched)
    raise MissingWeightsError(
        f"weight {name!r} ({spec.description}) not found; looked at:\n  {places}\nTo fix: " + _how_to_get(spec)
    )
