"""Issue 15 through the real `grn` command (a subprocess, as a user runs it): preemption saves and resumes, bad
inputs end in one `grn: error:` message with exit status 2, evaluation never overwrites the fit run's config, and
the output carries no third-party noise."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def grn(*args: str, timeout: int = 300, debug: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRN_DEBUG": debug, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "grn_lightning.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)  # fmt: skip


def assert_one_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2, one `grn: error:` message holding every fragment, no traceback."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    err = proc.stderr
    assert err.count("grn: error:") == 1 and "Traceback" not in err, err[-4000:]
    message = err[err.index("grn: error:") :]
    for fragment in fragments:
        assert fragment in message, message
    return message


def c2i_args(root: Path, demo_data: dict, *extra: str) -> list[str]:
    return ["--config", str(CONFIGS / "smoke/c2i_ind.yaml"), "--trainer.default_root_dir", str(root),
            "--trainer.logger.init_args.save_dir", str(root), "--trainer.limit_val_batches", "0",
            "--trainer.log_every_n_steps", "1", "--data.num_workers", "1",
            "--data.train_shards", demo_data["images-train"], "--data.val_shards", demo_data["images-val"], *extra]  # fmt: skip


def fit_until_signal(root: Path, demo_data: dict, signum: int) -> tuple[subprocess.CompletedProcess, str]:
    """A long `grn fit` that gets `signum` once training runs; returns the finished process and its output."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "grn_lightning.cli", "fit", *c2i_args(root, demo_data, "--trainer.max_steps", "100000")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    lines = []
    for line in proc.stdout:  # the model summary is printed when fit starts, after the signal handlers are set
        lines.append(line)
        if "Total params" in line:
            break
    time.sleep(3.0)  # a few steps
    proc.send_signal(signum)
    rest, _ = proc.communicate(timeout=300)
    return proc, "".join(lines) + rest


def logged_steps(version_dir: Path, tag: str = "train/loss") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for events in sorted(version_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            steps += [event.step for event in accumulator.Scalars(tag)]
    return sorted(steps)


@pytest.fixture(scope="module")
def preempted_run(tmp_path_factory, demo_data):
    """A C2I smoke run stopped by SIGTERM: (root, output, returncode, checkpoint path)."""
    root = tmp_path_factory.mktemp("preempted")
    proc, output = fit_until_signal(root, demo_data, signal.SIGTERM)
    return root, output, proc.returncode, root / "tb/version_0/checkpoints/last.ckpt"


def _stopped_step(output: str, checkpoint: Path) -> int:
    match = re.search(r"Stopped by a termination signal after step (\d+): saved (\S+)\.", output)
    assert match, output[-3000:]
    assert Path(match.group(2)) == checkpoint
    return int(match.group(1))


def test_sigterm_saves_at_the_step_reached_and_last_resumes_from_it(preempted_run, demo_data):
    root, output, returncode, checkpoint = preempted_run
    assert returncode == 0 and "Traceback" not in output, output[-3000:]
    step = _stopped_step(output, checkpoint)
    assert 1 <= step < 100000
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["global_step"] == step
    assert logged_steps(root / "tb/version_0")[-1] == step - 1  # the last finished step's loss (0-based steps)

    resumed = grn("fit", *c2i_args(root, demo_data, "--trainer.max_steps", str(step + 2), "--ckpt_path", "last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"--ckpt_path last: resuming from {checkpoint}" in resumed.stdout + resumed.stderr
    # The restarted job logs to version_1 and runs exactly the two steps after the saved one.
    assert logged_steps(root / "tb/version_1") == [step, step + 1]
    final = torch.load(root / "tb/version_1/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == step + 2

    # Item 9: what a user sees of a smoke run — no advertising tip, no deprecation spam, a step bar that ends full.
    assert_quiet(resumed.stdout + resumed.stderr, step + 2)


def assert_quiet(shown: str, steps: int) -> None:
    assert "Tip:" not in shown and "litlogger" not in shown and "deprecated" not in shown.lower(), shown[-3000:]
    assert "Warning" not in shown and "warn(" not in shown, shown[-3000:]
    assert re.search(rf"Step\s.*\b{steps}/{steps}\b", shown) and "Epoch 0/-2" not in shown, shown[-2000:]


@pytest.mark.slow
def test_sigusr1_takes_the_same_path(tmp_path, demo_data):
    proc, output = fit_until_signal(tmp_path, demo_data, signal.SIGUSR1)
    checkpoint = tmp_path / "tb/version_0/checkpoints/last.ckpt"
    assert proc.returncode == 0 and "Traceback" not in output, output[-3000:]
    step = _stopped_step(output, checkpoint)
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"] == step >= 1


def test_missing_ckpt_path_file(tmp_path, demo_data):
    missing = tmp_path / "nowhere/last.ckpt"
    proc = grn("fit", *c2i_args(tmp_path, demo_data, "--ckpt_path", str(missing)))
    assert_one_error(proc, f"--ckpt_path {missing}: no such file", "--ckpt_path last")
    debug = grn("fit", *c2i_args(tmp_path, demo_data, "--ckpt_path", str(missing)), debug="1")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "GRNUserError" in debug.stderr


def test_missing_shards(tmp_path, demo_data):
    pattern = str(tmp_path / "shards/train-{000000..000001}.tar")
    proc = grn("fit", *c2i_args(tmp_path, demo_data, "--data.train_shards", pattern))
    assert_one_error(proc, "data.train_shards", str(tmp_path / "shards/train-000000.tar"), "tools/make_shards.py")


def test_checkpoint_of_another_module_class_is_refused(tmp_path, preempted_run, demo_data):
    checkpoint = preempted_run[3]
    proc = grn("fit", "--config", str(CONFIGS / "smoke/tokenizer_image.yaml"), "--ckpt_path", str(checkpoint),
               "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
               "--data.train_shards", demo_data["images-train"], "--data.val_shards", demo_data["images-val"])  # fmt: skip
    assert_one_error(proc, "grn_lightning.generator.c2i.module.C2IModule checkpoint",
                     "configuration builds a grn_lightning.tokenizer.module.TokenizerModule")  # fmt: skip


def test_command_line_value_the_checkpoint_would_override_is_an_error(tmp_path, preempted_run, demo_data):
    checkpoint = preempted_run[3]
    proc = grn("fit", *c2i_args(tmp_path, demo_data, "--ckpt_path", str(checkpoint),
                                "--model.init_args.transformer.init_args.size", "B"))  # fmt: skip
    assert_one_error(proc, "model.init_args.transformer.init_args.size: checkpoint 'tiny', configuration 'B'",
                     "--ckpt_settings config")  # fmt: skip


def test_test_command_keeps_the_fit_config_and_records_the_checkpoint_step(preempted_run, demo_data):
    """`grn test` into the fit run's own log folder: config.yaml stays the fit's, the test writes config_test.yaml and
    results_test.json, and TensorBoard gets the test metrics at the checkpoint's step, not at step 0."""
    root, output, _, checkpoint = preempted_run
    step = _stopped_step(output, checkpoint)
    version = root / "tb/version_0"
    fit_config = (version / "config.yaml").read_bytes()
    proc = grn("test", *c2i_args(root, demo_data, "--trainer.logger.init_args.version", "0", "--ckpt_path",
               str(checkpoint), "--data.test_shards", demo_data["images-val"], "--trainer.limit_test_batches", "1"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (version / "config.yaml").read_bytes() == fit_config
    assert "max_steps: 100000" in (version / "config.yaml").read_text()
    assert (version / "config_test.yaml").is_file()
    import json

    results = json.loads((version / "results_test.json").read_text())
    assert results["global_step"] == step and Path(results["ckpt_path"]) == checkpoint and "test/loss" in results["metrics"]
    assert logged_steps(version, "test/loss") == [step]


def test_clip_samples_reach_tensorboard_as_videos(tmp_path):
    """T2XSampleLogger's clips become an animated GIF summary (no moviepy): every frame of every clip comes back
    from the event file, decoded by Pillow, with the colours that went in (pure colours: the GIF palette is exact)."""
    import lightning as L
    import numpy as np
    from lightning.pytorch.loggers import TensorBoardLogger
    from PIL import Image, ImageSequence
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from grn_lightning.generator.t2x.callbacks import T2XSampleLogger

    colours = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]],  # clip 0: red, green, blue
                            [[1.0, 1.0, 1.0], [1.0, 1.0, 0], [0, 1.0, 1.0]]])  # clip 1: white, yellow, cyan  # fmt: skip
    clips = colours[:, :, :, None, None].expand(2, 3, 3, 8, 8)  # [B, T, 3, H, W] in [0, 1]
    media = clips.permute(0, 2, 1, 3, 4) * 2 - 1  # the module's [B, 3, T, H, W] in [-1, 1]
    trainer = L.Trainer(logger=TensorBoardLogger(str(tmp_path), name="tb"), accelerator="cpu", devices=1)
    T2XSampleLogger(prompts=["a", "b"], frames=5, fps=10, name="t2v").write(trainer, media)
    trainer.logger.experiment.flush()

    events = EventAccumulator(str(tmp_path / "tb/version_0"))
    events.Reload()
    assert {"samples/t2v", "samples/t2v_video"} <= set(events.Tags()["images"])
    (video,) = events.Images("samples/t2v_video")
    gif = Image.open(__import__("io").BytesIO(video.encoded_image_string))
    assert gif.format == "GIF" and (video.width, video.height) == (8 + 2 + 8, 8)
    frames = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(gif)]
    assert len(frames) == 3 and gif.info["duration"] == 100  # 10 fps
    for t, frame in enumerate(frames):
        assert (frame[:, :8] == (colours[0, t] * 255).numpy()).all()  # left tile: clip 0
        assert (frame[:, 10:] == (colours[1, t] * 255).numpy()).all()  # right tile: clip 1
        assert (frame[:, 8:10] == 0).all()  # padding


@pytest.fixture(scope="module")
def unlabelled_shards(tmp_path_factory, demo_data) -> str:
    """Held-out demo photos written by make_shards.py from a plain image folder: no class, no caption."""
    photos = Path(demo_data["images-test"]).parents[1] / "raw/test"
    out = tmp_path_factory.mktemp("unlabelled")
    subprocess.run([sys.executable, str(REPO / "tools/make_shards.py"), "--image-folder", str(photos), "--out",
                    str(out), "--prefix", "photos", "--quiet"], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    (shard,) = out.glob("photos-*.tar")
    return str(shard)


def test_unlabelled_shards_for_c2i(tmp_path, demo_data, unlabelled_shards):
    proc = grn("fit", *c2i_args(tmp_path, demo_data, "--data.train_shards", unlabelled_shards))
    assert_one_error(proc, f"data.train_shards: the first 16 records of {unlabelled_shards} carry no class",
                     "--class-folder")  # fmt: skip


def t2i_args(root: Path, demo_data: dict, train_shards: str, *extra: str) -> list[str]:
    return ["--config", str(CONFIGS / "smoke/t2i.yaml"), "--trainer.default_root_dir", str(root),
            "--trainer.logger.init_args.save_dir", str(root), "--trainer.limit_val_batches", "0",
            "--data.train_shards", train_shards, "--data.val_shards", demo_data["images-val"], *extra]  # fmt: skip


def test_captionless_shards_for_text_to_image(tmp_path, demo_data, unlabelled_shards):
    proc = grn("fit", *t2i_args(tmp_path, demo_data, unlabelled_shards))
    assert_one_error(proc, f"data.train_shards: the first 16 records of {unlabelled_shards} carry no caption",
                     "--allow_uncaptioned true")  # fmt: skip


@pytest.mark.slow
def test_captionless_shards_train_when_allowed(tmp_path, demo_data, unlabelled_shards):
    proc = grn("fit", *t2i_args(tmp_path, demo_data, unlabelled_shards, "--trainer.max_steps", "1",
                                "--allow_uncaptioned", "true"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert torch.load(next(tmp_path.rglob("last.ckpt")), map_location="cpu", weights_only=False)["global_step"] == 1
    assert_quiet(proc.stdout + proc.stderr, 1)


def test_predict_class_ids_outside_the_model(tmp_path, preempted_run):
    """configs/c2i_predict.yaml's ImageNet ids on the 8-class smoke model: refused before sampling."""
    proc = grn("predict", "--config", str(CONFIGS / "smoke/c2i_ind.yaml"), "--config", str(CONFIGS / "c2i_predict.yaml"),
               "--ckpt_path", str(preempted_run[3]), "--trainer.callbacks.output_dir", str(tmp_path / "samples"))  # fmt: skip
    assert_one_error(proc, "data.class_ids: [88, 207, 279, 360, 387, 417, 974, 979] outside the model's classes 0..7")
    assert not (tmp_path / "samples").exists() or not any((tmp_path / "samples").iterdir())


def test_ckpt_path_last_also_finds_slurm_requeue_checkpoints(tmp_path):
    """Under SLURM, Lightning's auto-requeue saves hpc_ckpt_<n>.ckpt in default_root_dir on SIGUSR1; `--ckpt_path last`
    takes the newest of those and the run's last.ckpt files."""
    import lightning as L

    from grn_lightning.training.resume import find_last_checkpoint

    trainer = L.Trainer(default_root_dir=str(tmp_path), logger=False, accelerator="cpu", devices=1)
    last = tmp_path / "checkpoints/last.ckpt"
    last.parent.mkdir()
    requeue = tmp_path / "hpc_ckpt_1.ckpt"
    for age, path in ((100, last), (50, requeue)):
        path.write_bytes(b"")
        os.utime(path, (time.time() - age, time.time() - age))
    assert find_last_checkpoint(trainer) == requeue
    os.utime(last, None)  # now newer
    assert find_last_checkpoint(trainer) == last


def test_truncated_validation_shard(tmp_path, demo_data):
    from grn_lightning.data.splits import expand_shards

    whole = Path(expand_shards(demo_data["images-val"])[0]).read_bytes()
    truncated = tmp_path / "val-000000.tar"
    truncated.write_bytes(whole[: len(whole) // 2 + 100])  # cut inside a member, as an interrupted copy leaves it
    proc = grn("fit", *c2i_args(tmp_path, demo_data, "--data.val_shards", str(truncated),
                                "--trainer.limit_val_batches", "1"))  # fmt: skip
    assert_one_error(proc, f"shard {truncated} is unreadable", "tools/make_shards.py")


@pytest.mark.slow
def test_tokenizer_clip_reconstructions_reach_tensorboard_as_videos(tmp_path, demo_data):
    """The joint tokenizer smoke run: the video validation set's reconstructions are a video (input | reconstruction
    per clip, every frame), next to the frame grid."""
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = grn("fit", "--config", str(CONFIGS / "smoke/tokenizer_video.yaml"), "--trainer.max_steps", "2",
               "--trainer.val_check_interval", "1", "--trainer.default_root_dir", str(tmp_path),
               "--trainer.logger.init_args.save_dir", str(tmp_path), "--data.num_frames", "5",
               "--data.train_shards", demo_data["images-train"], "--data.val_shards", demo_data["images-val"],
               "--data.train_video_shards", demo_data["videos-train"],
               "--data.val_video_shards", demo_data["videos-val"], timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = EventAccumulator(str(tmp_path / "tb/version_0"))
    events.Reload()
    videos = events.Images("val/reconstructions_1_video")  # dataloader 1: the video validation set
    assert videos and (videos[0].width, videos[0].height) == (2 * 64 + 2, 2 * 64 + 2)  # 2 clips x (input | recon)
    gif = Image.open(__import__("io").BytesIO(videos[0].encoded_image_string))
    assert gif.n_frames == 5


def _training_configs() -> list[Path]:
    import yaml

    found = []
    for path in sorted(CONFIGS.rglob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        if "class_path" in (config.get("model") or {}) and "max_steps" in (config.get("trainer") or {}):
            found.append(path)
    return found


@pytest.mark.parametrize("path", _training_configs(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_training_config_checkpoints_every_n_steps(path):
    """Not only at validation: a preempted or crashed job loses at most N steps (full and smoke configs)."""
    import yaml

    callbacks = yaml.safe_load(path.read_text())["trainer"].get("callbacks") or []
    periodic = [c.get("init_args") or {} for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
    assert any(a.get("every_n_train_steps", 0) >= 1 and a.get("save_last") for a in periodic), periodic


@pytest.mark.parametrize("files", [["t2i.yaml", "t2v.yaml"], ["smoke/t2i.yaml", "smoke/t2v.yaml"]], ids=["full", "smoke"])
def test_composed_configs_keep_every_stage_sample_logger(files, capsys):
    """t2v.yaml over t2i.yaml appends its clip sample logger (`callbacks+:`) instead of replacing the T2I prompts'."""
    import yaml

    from grn_lightning.cli import main

    with pytest.raises(SystemExit):
        main(["fit", *(arg for f in files for arg in ("--config", str(CONFIGS / f))), "--print_config"])
    callbacks = yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"]
    loggers = [c["init_args"] for c in callbacks if c["class_path"].endswith("T2XSampleLogger")]
    assert sorted((a["frames"] > 1, a["name"]) for a in loggers) == [(False, "t2x"), (True, "t2v")], loggers
    assert sum(c["class_path"].endswith("ModelCheckpoint") for c in callbacks) == 1


def test_only_settings_given_on_the_command_line_count_as_given():
    """A checkpoint setting that differs from a config FILE value is adopted (printed); only one that differs from a
    value typed on the command line is an error. The match is per setting, with or without `init_args` levels."""
    from grn_lightning.training.ckpt_settings import _given, command_line_model_keys

    given = command_line_model_keys(["--config", "c.yaml", "--model.init_args.transformer.init_args.size", "B",
                                     "--model.optimization.lr=3e-4", "--data.batch_size", "8"])  # fmt: skip
    assert given == {("transformer", "init_args", "size"), ("optimization", "lr")}
    assert _given(("transformer", "init_args", "size"), given)
    assert not _given(("transformer", "init_args", "depth"), given)  # from the config file
    assert _given(("optimization", "lr"), given) and not _given(("optimization", "betas"), given)
    assert _given(("transformer", "init_args", "size"), command_line_model_keys(["--model.transformer.size", "B"]))
    assert _given(("transformer", "init_args", "size"), command_line_model_keys(["--model.transformer", "{...}"]))
