"""`ThreadBudget` (grn_lightning/training/thread_budget.py) and tools/repro.py's hand-off of a finished chain's cores
to the fits still running."""

from __future__ import annotations

import json
import logging
import threading

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from grn_lightning.training.thread_budget import ThreadBudget, write_thread_budget
from tests.test_eval_tools import _load_tool


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_budget_file_sets_the_threads_and_bad_or_missing_files_keep_them(tmp_path, restore_threads, caplog):
    torch.set_num_threads(1)
    budget = ThreadBudget(str(tmp_path / "threads"))
    assert budget.apply() == 1 and torch.get_num_threads() == 1  # no file: unchanged
    write_thread_budget(tmp_path / "threads", 2)
    assert (tmp_path / "threads").read_text() == "2\n" and not (tmp_path / "threads.partial").exists()
    assert budget.apply() == 2 and torch.get_num_threads() == 2
    (tmp_path / "threads").write_text("two\n")
    with caplog.at_level(logging.WARNING):
        assert budget.apply() == 2 and budget.apply() == 2
    assert [r.getMessage() for r in caplog.records].count(
        f"ThreadBudget: {tmp_path / 'threads'} holds 'two', not a thread count >= 1; keeping 2 thread(s)") == 1
    (tmp_path / "threads").write_text("0")
    assert budget.apply() == 2
    with pytest.raises(ValueError, match=">= 1"):
        write_thread_budget(tmp_path / "threads", 0)
    with pytest.raises(ValueError, match="every_n_steps"):
        ThreadBudget(str(tmp_path / "threads"), every_n_steps=0)


class _Scheduler(pl.Callback):
    """Plays the job scheduler: frees a core after step 4 (the budget file goes 1 -> 2) and records the threads
    every training step ran with."""

    def __init__(self, path):
        self.path, self.seen = path, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append(torch.get_num_threads())
        if trainer.global_step == 4:
            write_thread_budget(self.path, 2)


def test_a_running_fit_takes_up_the_freed_threads_at_the_next_check(tmp_path, restore_threads):
    torch.set_num_threads(1)
    write_thread_budget(tmp_path / "threads", 1)
    scheduler = _Scheduler(tmp_path / "threads")
    trainer = pl.Trainer(max_steps=10, callbacks=[ThreadBudget(str(tmp_path / "threads"), every_n_steps=3), scheduler],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")  # fmt: skip
    trainer.fit(BoringModel())
    # read before steps 0, 3, 6, 9 (global_step at batch start); written after step 4 -> applied before step 6
    assert scheduler.seen == [1] * 6 + [2] * 4


def test_repro_hands_a_finished_chains_core_to_the_running_fit(tmp_path, monkeypatch):
    """Two chains on 2 cores: each fit starts on 1 thread; when the other chain ends, the running fit's budget file
    says 2 (what its ThreadBudget callback then applies), and later commands start on 2 threads."""
    repro = _load_tool("repro")
    monkeypatch.setattr(repro.os, "cpu_count", lambda: 2)
    runner = repro.Runner(tmp_path, {"device": "CPU"}, force=False, jobs=2)
    runner.chains_left = 2
    started, release, seen = threading.Event(), threading.Event(), {}

    def fake_call(command, env=None, **kwargs):
        seen["omp"], seen["command"] = env["OMP_NUM_THREADS"], command
        seen["budget_at_start"] = (tmp_path / "t2x" / "threads").read_text()
        started.set()
        release.wait(10)
        seen["budget_later"] = (tmp_path / "t2x" / "threads").read_text()
        return 0

    monkeypatch.setattr(repro.subprocess, "call", fake_call)
    fit = threading.Thread(target=runner.fit, args=("t2x", ["--config", "configs/repro/t2x.yaml"]))
    fit.start()
    assert started.wait(10)
    runner.chain_done()  # the other chain ends while the T2X fit runs
    release.set()
    fit.join(10)
    assert seen["omp"] == "1" and seen["budget_at_start"] == "1\n" and seen["budget_later"] == "2\n"
    callback = json.loads(seen["command"][-1].split("=", 1)[1])
    assert seen["command"][-1].startswith("--trainer.callbacks+=")
    assert callback == {"class_path": "grn_lightning.training.thread_budget.ThreadBudget",
                        "init_args": {"path": str(tmp_path / "t2x" / "threads")}}  # fmt: skip
    assert json.loads((tmp_path / "runs.jsonl").read_text())["threads_at_start"] == 1
    assert runner.threads() == 2  # the T2X test that follows starts on both cores
