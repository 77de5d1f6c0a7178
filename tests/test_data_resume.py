"""Exact resume: the training data stream (in process) and whole `grn fit` runs killed with SIGKILL mid-run and
resumed with `--ckpt_path last` (per-step losses equal to the uninterrupted run's, bit for bit, on CPU)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grn_lightning.data.datamodule import GRNDataModule
from grn_lightning.data.splits import expand_shards

ROOT = Path(__file__).resolve().parents[1]


def _batches(dm: GRNDataModule, count: int, state_after: int | None = None):
    """`count` training batches as (keys, pixel sum), read the way Lightning does; the data module's state after
    `state_after` batches."""
    iterator, seen, state = iter(dm.train_dataloader()), [], None
    for index in range(count):
        batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(next(iterator), 0), 0)
        seen.append((batch["key"], int(batch["pixels"].flatten(1).sum(1).double().mul(1e-3).round().sum())))
        if index + 1 == state_after:
            state = dm.state_dict()
    return seen, state


@pytest.mark.parametrize(
    "options",
    [
        dict(num_workers=2),  # 13 consumed batches over 2 workers: the resumed loader starts with the second
        dict(num_workers=0),
        dict(num_workers=2, pixel_budget="0.06M", shuffle_buffer=16),  # partly filled bucket batches carry over
        dict(num_workers=0, one_shard=True),  # several epochs of one shard: order, buffer drain, new epoch
        dict(num_workers=2, kind="mixed", num_frames=5, video_batch_size=2),
    ],
    ids=["workers", "main-process", "buckets", "epochs", "mixed"],
)
def test_training_stream_resumes_exactly_in_process(demo_data, options):
    options = dict(options)
    shards = demo_data["images-train"]
    if options.pop("one_shard", False):
        shards = expand_shards(shards)[0]
    args = dict(kind="image", train_shards=shards, resolution=32, batch_size=4, shuffle_buffer=8, prefetch_factor=2,
                seed=3, train_video_shards=demo_data["videos-train"], short_clip="loop")  # fmt: skip
    args.update(options)
    first = GRNDataModule(**args)
    first.setup("fit")
    uninterrupted, state = _batches(first, 30, state_after=13)
    resumed = GRNDataModule(**args)
    resumed.load_state_dict(state)
    resumed.setup("fit")
    continued, _ = _batches(resumed, 17)
    assert continued == uninterrupted[13:]
    assert len({tuple(keys) for keys, _ in uninterrupted}) > 20  # the batches differ: a stuck stream would also match


def _tiny_run_config(name: str, out: Path, demo_data: dict, kill: bool) -> Path:
    """The smoke config `name` cut to 4 steps, a checkpoint every 2, per-step losses in a CSV file, no validation."""
    config = yaml.safe_load((ROOT / "configs" / "smoke" / f"{name}.yaml").read_text())
    trainer = config["trainer"]
    trainer.update(max_steps=4, limit_val_batches=0, log_every_n_steps=1, enable_progress_bar=False,
                   default_root_dir=str(out), val_check_interval=None, num_sanity_val_steps=0)  # fmt: skip
    trainer["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                         "init_args": {"save_dir": str(out), "name": "csv", "flush_logs_every_n_steps": 1}}  # fmt: skip
    trainer["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                             "init_args": {"dirpath": str(out / "ckpt"), "every_n_train_steps": 2, "save_last": True,
                                           "save_top_k": -1}}]  # fmt: skip
    if kill:
        trainer["callbacks"].append({"class_path": "_kill_after_checkpoint.KillAfterCheckpoint"})
    data = config["data"]["init_args"]
    data["train_shards"], data["val_shards"] = demo_data["images-train"], demo_data["images-val"]
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(config: Path, *extra: str) -> int:
    """Run `grn fit` in its own session (output in files beside the config); its exit status. The whole session
    is killed afterwards: DataLoader workers of a SIGKILLed trainer can outlive it, blocked on a full queue."""
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    command = [sys.executable, "-m", "grn_lightning.cli", "fit", "--config", str(config), *extra]
    log = config.parent / f"log-{len(list(config.parent.glob('log-*')))}.txt"
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=config.parent,
                                   start_new_session=True)  # fmt: skip
        try:
            status = process.wait(timeout=600)
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if status not in (0, -signal.SIGKILL):
        raise AssertionError(f"grn fit exited with {status}:\n{log.read_text()[-3000:]}")
    return status


def _losses(out: Path) -> dict[int, dict[str, str]]:
    """{step: {train metric: value as written}} over every CSV file of the run's folder (resumes write new ones)."""
    steps: dict[int, dict[str, str]] = {}
    for path in sorted(out.glob("csv/version_*/metrics.csv")):
        with open(path) as handle:
            for row in csv.DictReader(handle):
                values = {k: v for k, v in row.items() if k.startswith("train/") and v not in ("", None)}
                if values:
                    steps.setdefault(int(row["step"]), {}).update(values)
    return steps


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tokenizer_image", "c2i_ind", "t2i"])
def test_killed_fit_resumes_with_the_same_losses(tmp_path, demo_data, name):
    """tokenizer (two optimisers, GAN), C2I and T2I: SIGKILL after the step-2 checkpoint, `--ckpt_path last`."""
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    for folder in (straight, broken):
        folder.mkdir()
    assert _fit(_tiny_run_config(name, straight, demo_data, kill=False)) == 0
    assert _fit(_tiny_run_config(name, broken, demo_data, kill=True)) == -signal.SIGKILL  # mid-run, after a checkpoint
    assert (broken / "ckpt" / "last.ckpt").is_file()
    assert _fit(broken / f"{name}.yaml", "--ckpt_path", "last") == 0
    expected, got = _losses(straight), _losses(broken)
    assert sorted(expected) == [0, 1, 2, 3] and sorted(got) == [0, 1, 2, 3]  # the killed run logged steps 0 and 1
    for step in (2, 3):
        # every loss of the step, and every other metric both runs logged: C2I logs an accuracy bin only in steps
        # with samples in it, and in a step without, Lightning repeats the bin's value of the step before, which a
        # restarted process does not have
        losses = {key for key in expected[step] if "loss" in key}
        assert losses and losses <= got[step].keys(), f"step {step}: resumed run logged {sorted(got[step])}"
        common = expected[step].keys() & got[step].keys()
        resumed, straight = ({k: row[k] for k in common} for row in (got[step], expected[step]))
        assert resumed == straight, f"step {step}: resumed {resumed}, uninterrupted {straight}"


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_device_generators_are_in_the_data_module_state():
    """The CUDA generators' states go into the checkpoint with the CPU ones, and restoring them repeats the draws."""
    import torch

    from grn_lightning.data.resume import restore_rng_states

    torch.cuda.manual_seed_all(7)
    torch.rand(3, device="cuda")
    state = GRNDataModule(num_workers=0).state_dict()
    expected = (torch.rand(5, device="cuda"), torch.rand(5))
    torch.rand(100, device="cuda"), torch.rand(100)
    restore_rng_states(state["ranks"][0]["rng"])
    assert "cuda" in state["ranks"][0]["rng"]
    assert torch.equal(torch.rand(5, device="cuda"), expected[0]) and torch.equal(torch.rand(5), expected[1])
