"""T2I/T2V configs: the full ones parse through `grn` with the release recipe (SPEC §3, §5, §6) and build on the meta
device at the released parameter counts; the smoke configs train (images; images + clips with I2V), validate, log
samples to TensorBoard, checkpoint without the frozen tokenizer / text encoder, resume, test and predict (PNGs,
MP4s, I2V from a photo) on the demo data."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from grn_lightning.cli import main
from grn_lightning.data.splits import expand_shards

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RELEASED = {"GRN0b": 18_227_200, "GRN2b": 2_197_832_448, "GRN8b": 7_890_859_520}  # SPEC §5


def _args(files: list[str]) -> list[str]:
    return [a for f in files for a in ("--config", str(CONFIGS / f))]


def _print_config(files: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_args(files), "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_every_t2x_config_is_covered():
    assert {p.name for p in CONFIGS.glob("t2*.yaml")} == {"t2i.yaml", "t2v.yaml", "t2x_predict.yaml"}
    assert {p.name for p in (CONFIGS / "smoke").glob("t2*.yaml")} == {"t2i.yaml", "t2v.yaml"}


def test_t2i_config_is_the_release_recipe(capsys):
    config = _print_config(["t2i.yaml"], capsys)
    assert config["model"]["class_path"] == "grn_lightning.generator.t2x.module.T2XModule"
    model = config["model"]["init_args"]
    net = model["transformer"]["init_args"]
    assert (net["size"], net["variant"], net["channels"], net["rounds"]) == ("GRN2b", "bit", 64, 4)
    assert model["text_encoder"]["class_path"].endswith("UMT5TextEncoder") and net["text_dim"] == 4096
    corruption, opt = model["corruption"], model["optimization"]
    assert (corruption["ratio_mu"], corruption["ratio_sigma"], corruption["condition_dropout"]) == (-1.3, 1.3, 0.1)
    assert (opt["lr"], opt["betas"], opt["weight_decay"], opt["warmup_steps"]) == (2e-4, [0.9, 0.999], 0.01, 50)
    assert model["ema"]["decay"] == 0.999 and model["parallelism"]["activation_checkpointing"]
    assert net["attention"] == "flex"
    packing = model["packing"]
    assert (packing["token_budget"], packing["max_fraction"], packing["max_rows"]) == (40960, 0.4, 1)
    assert packing["pad_to_budget"] and config["data"]["init_args"]["batch_size"] is None  # filled from the budget
    sampling = model["sampler"]["init_args"]
    assert sampling["schedule"] == "cosine" and sampling["cfg_interval"] == [0.0, 1.0]  # CFG always on for text
    adaptive = sampling["adaptive"]["init_args"]  # SPEC §6: paper Eq. 9 values, Tmin 10 for text models
    assert (adaptive["k"], adaptive["b"], adaptive["t_min"], adaptive["t_max"], adaptive["t0"]) == (600.0, -547.2, 10, 50, 5)
    trainer = config["trainer"]
    assert trainer["precision"] == "bf16-mixed" and trainer["gradient_clip_val"] == 0.1
    assert trainer["strategy"]["class_path"].endswith("ModelParallelStrategy")
    assert config["data"]["init_args"]["pixel_budget"] == "0.25M"


def test_t2v_config_composes_over_t2i(capsys):
    config = _print_config(["t2i.yaml", "t2v.yaml"], capsys)
    data, model = config["data"]["init_args"], config["model"]["init_args"]
    assert data["kind"] == "mixed" and data["num_frames"] == 17 and data["fps"] == 16.0
    assert data["max_video_seconds"] == 13.0 and (data["num_frames"] - 1) % 4 == 0  # SPEC §8: 1 + 4k, 13 s cap
    assert model["task"] == "auto" and 0 < model["i2v_probability"] < 1
    assert model["transformer"]["init_args"]["size"] == "GRN2b"
    loggers = [c["init_args"] for c in config["trainer"]["callbacks"] if c["class_path"].endswith("T2XSampleLogger")]
    assert [(a["name"], a["frames"]) for a in loggers] == [("t2x", 1), ("t2v", 17)]  # t2v.yaml appends (callbacks+:)


@pytest.mark.parametrize("size", sorted(RELEASED))
def test_released_sizes_build_on_meta_with_exact_counts(size):
    from grn_lightning.generator.t2x.model import GRNT2XTransformer
    from grn_lightning.generator.t2x.module import T2XModule

    init = yaml.safe_load((CONFIGS / "t2i.yaml").read_text())["model"]["init_args"]
    with torch.device("meta"):
        module = T2XModule(GRNT2XTransformer(**{**init["transformer"]["init_args"], "size": size}))
    trained = sum(p.numel() for p in module.model.parameters())
    assert trained == RELEASED[size]
    assert sum(p.numel() for p in module.ema.parameters()) == trained
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == trained


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("files", [["smoke/t2i.yaml"], ["smoke/t2i.yaml", "smoke/t2v.yaml"]], ids=["t2i", "t2i+t2v"])
def test_smoke_configs_train_log_samples_checkpoint_resume_and_test(tmp_path, demo_data, files):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = str(tmp_path)
    video = len(files) > 1
    common = [*_args(files), "--data.train_shards", demo_data["images-train"],
              "--data.val_shards", expand_shards(demo_data["images-val"])[0], "--data.num_workers", "0",
              "--trainer.default_root_dir", root, "--trainer.logger.init_args.save_dir", root,
              "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "1"]  # fmt: skip
    if video:  # video batches only, all I2V: the 4 steps surely run the I2V path end to end (T2V: test_t2x_module)
        common += ["--data.train_video_shards", demo_data["videos-train"], "--data.val_video_shards",
                   demo_data["videos-val"], "--data.video_ratio", "1.0",
                   "--model.init_args.i2v_probability", "1.0"]  # fmt: skip
    first = main(["fit", *common, "--trainer.max_steps", "4", "--trainer.val_check_interval", "4"])
    assert first.trainer.global_step == 4
    metrics = first.trainer.callback_metrics
    assert 0 < float(metrics["train/loss"]) < 2 * math.log(2) and float(metrics["train/dropped_samples"]) == 0
    assert float(metrics["train/latent_frames"]) == (2 if video else 1)  # 5 frames → 1 + 1 latent frames
    assert float(metrics["train/i2v_fraction"]) == (1 if video else 0)
    checkpoint = tmp_path / "tb/version_0/checkpoints/last.ckpt"
    keys = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"].keys()
    assert any(k.startswith("ema.") for k in keys)
    assert not any(k.startswith(("tokenizer", "text_encoder")) for k in keys)  # frozen helpers stay out
    events = EventAccumulator(str(next((tmp_path / "tb/version_0").glob("events*"))))
    events.Reload()
    assert "samples/t2x" in events.Tags()["images"]

    resumed = main(["fit", *common, "--trainer.max_steps", "6", "--trainer.val_check_interval", "6",
                    "--ckpt_path", "last"])  # fmt: skip
    assert Path(resumed.trainer.ckpt_path) == checkpoint and resumed.trainer.global_step == 6

    tested = main(["test", *_args(files), "--ckpt_path", str(checkpoint), "--data.test_shards", demo_data["images-val"],
                   "--data.num_workers", "0", "--trainer.limit_test_batches", "1", "--trainer.default_root_dir", root,
                   "--trainer.logger.init_args.save_dir", root, "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert 0 < float(tested.trainer.callback_metrics["test/loss"]) < 2 * math.log(2)

    # `grn predict` with configs/t2x_predict.yaml: PNGs + grid; clips also as MP4s (I2V from a held-out photo)
    out = tmp_path / "samples"
    request = ["--data.prompts", "[a person riding a bike, a cat]", "--data.samples_per_prompt", "2",
               "--data.height", "64", "--data.width", "64", "--model.init_args.sampler.init_args.steps", "4"]  # fmt: skip
    if video:
        photo = next(Path(demo_data["images-train"]).parent.parent.rglob("*.jpg"))
        request += ["--data.frames", "5", "--data.first_frame", str(photo)]
    main(["predict", *_args(files + ["t2x_predict.yaml"]), "--ckpt_path", str(checkpoint), "--trainer.accelerator",
          "cpu", "--trainer.callbacks.output_dir", str(out), "--trainer.default_root_dir", root,
          "--trainer.enable_progress_bar", "false", *request])  # fmt: skip
    names = {p.name for p in out.iterdir()}
    expected = {f"prompt{p:03d}_{i:03d}.{ext}" for p in (0, 1) for i in (0, 1) for ext in (["png", "mp4"] if video else ["png"])}
    assert names == expected | {"grid.png"}
    if video:
        import av

        with av.open(str(out / "prompt000_000.mp4")) as container:
            frames = list(container.decode(video=0))
        assert len(frames) == 5 and (frames[0].width, frames[0].height) == (64, 64)
