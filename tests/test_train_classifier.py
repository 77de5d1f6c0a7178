"""tools/train_classifier.py pins its thread count (--threads), so a recipe's judge does not depend on how many cores
the runner happened to give the stage: the same weights from a process started with one OpenMP thread or two."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.test_fashion_mnist import idx_dir  # noqa: F401  (fixture: synthetic Fashion-MNIST IDX files)

REPO = Path(__file__).resolve().parents[1]


def _train(patterns: dict, out: Path, omp_threads: int, extra: list[str]) -> dict:
    command = [sys.executable, str(REPO / "tools" / "train_classifier.py"), "--train", patterns["images-train"],
               "--test", patterns["images-test"], "--out", str(out), "--steps", "12", "--batch-size", "8",
               "--width", "8", "--floor-samples", "8", "--num-workers", "0", *extra]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(omp_threads), PYTHONPATH=str(REPO))
    subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd=REPO)
    return torch.load(out, weights_only=True)


def test_pinned_threads_give_the_same_judge_whatever_the_process_was_given(idx_dir, tmp_path):  # noqa: F811
    from grn_lightning.data.fashion_mnist import build_fashion_mnist

    patterns = build_fashion_mnist(str(idx_dir), str(tmp_path / "fm"), train_clips=0, test_clips=0, val_images=4)
    one = _train(patterns, tmp_path / "one.pt", 1, ["--threads", "1"])
    two = _train(patterns, tmp_path / "two.pt", 2, ["--threads", "1"])
    assert one["state_dict"].keys() == two["state_dict"].keys()
    for key, value in one["state_dict"].items():
        assert torch.equal(value, two["state_dict"][key]), key
    assert one["metrics"]["threads"] == 1 and two["metrics"]["threads"] == 1
    assert json.loads((tmp_path / "two.pt.json").read_text())["threads"] == 1
    unpinned = _train(patterns, tmp_path / "unpinned.pt", 2, [])
    assert unpinned["metrics"]["threads"] == 2  # without --threads the process's own count is used (and recorded)
