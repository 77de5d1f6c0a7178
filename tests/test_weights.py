"""Offline weight registry: resolution order, the documented error, checksums, the fetch tool (file:// only)."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

import grn_lightning  # noqa: F401
from grn_lightning import weights as W

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def isolated(monkeypatch, tmp_path):
    """Empty $GRN_WEIGHTS and hub cache, so nothing on this machine leaks into the test."""
    env_dir, torch_home = tmp_path / "env", tmp_path / "torch_home"
    env_dir.mkdir()
    monkeypatch.setenv("GRN_WEIGHTS", str(env_dir))
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return env_dir, torch_home / "hub" / "checkpoints"


def _write(path: Path, payload: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return hashlib.sha256(payload).hexdigest()


def _register(monkeypatch, **fields) -> W.WeightSpec:
    spec = W.WeightSpec(**{"name": "toy", "filename": "toy-weights.pth", "url": "https://example.org/toy.pth", **fields})
    monkeypatch.setitem(W.WEIGHTS, spec.name, spec)
    return spec


def test_registry_has_required_entries():
    for name in ("fid_inception", "i3d_kinetics400", "lpips_vgg_backbone", "lpips_alex_backbone", "umt5_xxl"):
        assert name in W.WEIGHTS
    assert W.WEIGHTS["fid_inception"].filename == "pt_inception-2015-12-05-6726825d.pth"
    assert W.WEIGHTS["fid_inception"].sha256_prefix == "6726825d"
    assert W.WEIGHTS["i3d_kinetics400"].filename == "i3d_pretrained_400.pt"
    assert W.WEIGHTS["lpips_vgg_backbone"].filename == "vgg16-397923af.pth"
    assert W.WEIGHTS["umt5_xxl"].is_dir
    for spec in W.WEIGHTS.values():  # torch-hub convention: the prefix is part of the file name
        if spec.sha256_prefix:
            assert spec.sha256_prefix in spec.filename


def test_missing_weight_error_names_file_place_checksum_and_command(isolated):
    env_dir, hub_dir = isolated
    with pytest.raises(W.MissingWeightsError) as info:
        W.resolve_weight("fid_inception")
    message = str(info.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in message
    assert str(env_dir / "pt_inception-2015-12-05-6726825d.pth") in message
    assert str(hub_dir / "pt_inception-2015-12-05-6726825d.pth") in message
    assert "6726825d" in message and "GRN_WEIGHTS" in message
    assert "python tools/fetch_weights.py fid_inception" in message
    assert isinstance(info.value, FileNotFoundError)


def test_unknown_name_lists_registered(isolated):
    with pytest.raises(KeyError, match="fid_inception"):
        W.resolve_weight("no_such_weight")


def test_resolves_from_env_then_hub_and_verifies_sha256(isolated, monkeypatch):
    env_dir, hub_dir = isolated
    digest = _write(hub_dir / "toy-weights.pth", b"hub copy")
    _register(monkeypatch, sha256=digest)
    assert W.resolve_weight("toy") == hub_dir / "toy-weights.pth"
    env_digest = _write(env_dir / "toy-weights.pth", b"env copy")
    _register(monkeypatch, sha256=env_digest)
    assert W.resolve_weight("toy") == env_dir / "toy-weights.pth"  # $GRN_WEIGHTS comes before the hub cache


def test_checksum_mismatch_is_an_error(isolated, monkeypatch):
    env_dir, _ = isolated
    _write(env_dir / "toy-weights.pth", b"corrupted")
    _register(monkeypatch, sha256=hashlib.sha256(b"original").hexdigest())
    with pytest.raises(W.WeightChecksumError, match="toy-weights.pth"):
        W.resolve_weight("toy")
    assert W.resolve_weight("toy", verify=False) == env_dir / "toy-weights.pth"


def test_hash_prefix_checksum(isolated, monkeypatch):
    env_dir, _ = isolated
    digest = _write(env_dir / "toy-weights.pth", b"prefix checked")
    _register(monkeypatch, sha256_prefix=digest[:8])
    assert W.resolve_weight("toy").read_bytes() == b"prefix checked"
    _register(monkeypatch, sha256_prefix="00000000" if not digest.startswith("00000000") else "11111111")
    with pytest.raises(W.WeightChecksumError):
        W.resolve_weight("toy")


def test_explicit_path_first_and_strict(isolated, monkeypatch, tmp_path):
    env_dir, _ = isolated
    _write(env_dir / "toy-weights.pth", b"env copy")
    _register(monkeypatch)
    explicit = tmp_path / "elsewhere" / "my-copy.pth"
    _write(explicit, b"explicit")
    assert W.resolve_weight("toy", explicit) == explicit
    assert W.resolve_weight("toy", explicit.parent.parent / "env") == env_dir / "toy-weights.pth"  # a folder
    with pytest.raises(W.MissingWeightsError, match="does-not-exist.pth"):  # asked-for file absent: no fallback
        W.resolve_weight("toy", tmp_path / "does-not-exist.pth")


def test_directory_weight_requires_its_files(isolated, monkeypatch):
    env_dir, _ = isolated
    _register(monkeypatch, filename="toy-model", is_dir=True, required_files=("config.json",))
    (env_dir / "toy-model").mkdir()
    with pytest.raises(W.MissingWeightsError, match="config.json"):
        W.resolve_weight("toy")
    (env_dir / "toy-model" / "config.json").write_text("{}")
    assert W.resolve_weight("toy") == env_dir / "toy-model"
    assert W.resolve_weight("toy", env_dir / "toy-model") == env_dir / "toy-model"


def test_register_rejects_duplicates_and_dir_checksums(monkeypatch):
    monkeypatch.setattr(W, "WEIGHTS", dict(W.WEIGHTS))
    with pytest.raises(ValueError, match="already registered"):
        W.register_weight(W.WEIGHTS["fid_inception"])
    with pytest.raises(ValueError, match="directory"):
        W.register_weight(W.WeightSpec("d", "d", "https://x", sha256="ab", is_dir=True))


def _load_fetch_tool():
    spec = importlib.util.spec_from_file_location("fetch_weights", REPO / "tools" / "fetch_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fetch_tool_downloads_verifies_and_refuses_bad_files(isolated, monkeypatch, tmp_path):
    fetch = _load_fetch_tool()
    source = tmp_path / "upstream.bin"
    digest = _write(source, b"upstream weights")
    spec = _register(monkeypatch, url=source.as_uri(), sha256=digest)
    dest = tmp_path / "dest"
    path = fetch.fetch_weight(spec, dest)
    assert path == dest / "toy-weights.pth" and path.read_bytes() == b"upstream weights"
    monkeypatch.setenv("GRN_WEIGHTS", str(dest))
    assert W.resolve_weight("toy") == path  # what the tool fetched is what training resolves
    bad = _register(monkeypatch, url=source.as_uri(), sha256="0" * 64)
    with pytest.raises(W.WeightChecksumError):
        fetch.fetch_weight(bad, tmp_path / "dest2")
    assert not (tmp_path / "dest2" / "toy-weights.pth").exists()  # a bad download is not left in place
