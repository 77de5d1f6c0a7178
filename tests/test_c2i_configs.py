"""Every C2I config parses through `grn`, the full ones build on the meta device with the SPEC §4 sizes, and the
smoke configs train, validate (GenerationMetrics) and checkpoint on the demo photos."""

from __future__ import annotations

import math

from pathlib import Path

import pytest
import torch
import yaml

from grn_lightning.cli import main
from grn_lightning.data.splits import expand_shards

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# (config files composed left to right, expected size, variant, cfg scale, temperature, CFG interval low)
FULL = [
    (["c2i_grn_b.yaml"], "B", "ind", 2.4, 1.33, 0.40),
    (["c2i_grn_b.yaml", "c2i_grn_b_bit.yaml"], "B", "bit", 2.4, 1.23, 0.44),
    (["c2i_grn_l.yaml"], "L", "ind", 2.0, 1.30, 0.40),
    (["c2i_grn_l.yaml", "c2i_grn_l_bit.yaml"], "L", "bit", 1.9, 1.20, 0.45),
    (["c2i_grn_h.yaml"], "H", "ind", 2.0, 1.30, 0.40),
    (["c2i_grn_g.yaml"], "G", "ind", 1.7, 1.30, 0.30),
    (["c2i_grn_h.yaml", "c2i_fsdp1.yaml"], "H", "ind", 2.0, 1.30, 0.40),
]
SPEC_PARAMS = {"B": 130e6, "L": 458e6, "H": 952e6, "G": 2.0e9}  # SPEC §4 table


def _args(files: list[str]) -> list[str]:
    return [a for f in files for a in ("--config", str(CONFIGS / f))]


def test_every_c2i_config_is_covered():
    listed = {f for files, *_ in FULL for f in files} | {"c2i_predict.yaml"}  # predict: see the smoke test below
    assert {p.name for p in CONFIGS.glob("c2i_*.yaml")} == listed


@pytest.mark.parametrize("files,size,variant,cfg,tau,low", FULL, ids=["+".join(f[0]) for f in FULL])
def test_full_configs_print_and_match_the_paper(files, size, variant, cfg, tau, low, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *_args(files), "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    model = config["model"]["init_args"]
    assert config["model"]["class_path"] == "grn_lightning.generator.c2i.module.C2IModule"
    transformer = model["transformer"]["init_args"]
    assert (transformer["size"], transformer["variant"]) == (size, variant)
    sampling = model["sampler"]["init_args"]
    assert (sampling["cfg_scale"], sampling["temperature"], sampling["cfg_interval"]) == (cfg, tau, [low, 1.0])
    assert sampling["steps"] == 50 and sampling["schedule"] == "linear"
    # SPEC §3 recipe: batch 1024 (lr rule → 2e-4), 5-epoch warm-up, clip 0.1, EMA 0.9999 (+0.9996), 600 epochs.
    opt = model["optimization"]
    assert opt["global_batch_size"] == 1024 and opt["base_lr"] == 5e-5 and opt["lr"] is None
    assert opt["warmup_epochs"] == 5 and opt["betas"] == [0.9, 0.95] and opt["weight_decay"] == 0.0
    assert (model["ema"]["decay"], model["ema"]["decay_2"]) == (0.9999, 0.9996)
    corruption = model["corruption"]
    assert (corruption["ratio_mu"], corruption["ratio_sigma"], corruption["condition_dropout"]) == (-0.8, 0.8, 0.1)
    assert config["data"]["init_args"]["batch_size"] is None  # given by the model: 1024 / (devices × accumulation)
    trainer = config["trainer"]
    assert trainer["gradient_clip_val"] == 0.1 and trainer["precision"] == "bf16-mixed"
    steps_per_epoch = -(-1281167 // 1024)
    assert trainer["max_steps"] == 600 * steps_per_epoch
    assert any(c["class_path"].endswith("GenerationMetrics") for c in trainer["callbacks"])
    assert config["data"]["init_args"]["kind"] == "tokens"


@pytest.mark.parametrize("size", ["B", "L", "H", "G"])
def test_full_sizes_build_on_meta_with_spec_counts(size):
    from grn_lightning.generator.c2i.model import GRNC2ITransformer
    from grn_lightning.generator.c2i.module import C2IModule
    from grn_lightning.generator.options import EMATracks, Optimization

    init = yaml.safe_load((CONFIGS / f"c2i_grn_{size.lower()}.yaml").read_text())["model"]["init_args"]
    with torch.device("meta"):
        transformer = GRNC2ITransformer(**init["transformer"]["init_args"])
        module = C2IModule(transformer, optimization=Optimization(**init["optimization"]), ema=EMATracks(**init["ema"]))
    trained = sum(p.numel() for p in module.model.parameters())
    assert abs(trained / SPEC_PARAMS[size] - 1) < 0.03, trained
    assert sum(p.numel() for p in module.ema.parameters()) == trained
    assert sum(p.numel() for p in module.ema2.parameters()) == trained
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == trained


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("files", [["smoke/c2i_ind.yaml"], ["smoke/c2i_ind.yaml", "smoke/c2i_bit.yaml"]],
                         ids=["ind", "bit"])  # fmt: skip
def test_smoke_configs_train_validate_and_checkpoint(tmp_path, demo_data, files):
    root = str(tmp_path)
    main(["fit", *_args(files), "--data.train_shards", demo_data["images-train"],
          "--data.val_shards", expand_shards(demo_data["images-val"])[0], "--data.num_workers", "0",
          "--trainer.max_steps", "6", "--trainer.val_check_interval", "6", "--trainer.limit_val_batches", "1",
          "--trainer.default_root_dir", root, "--trainer.logger.init_args.save_dir", root,
          "--trainer.enable_progress_bar", "false"])  # fmt: skip
    checkpoints = list(tmp_path.rglob("last.ckpt"))
    assert len(checkpoints) == 1
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=False)
    assert state["global_step"] == 6
    keys = state["state_dict"].keys()
    assert any(k.startswith("ema.") for k in keys) and not any(k.startswith("tokenizer") for k in keys)
    protocol = list(tmp_path.rglob("metrics_protocol.json"))
    assert protocol and '"is"' in protocol[0].read_text()

    # `grn test` from that checkpoint: refinement loss of the EMA weights on a labelled split + the gFID/IS callback
    # (the demo's test photos carry no class, which the module refuses with a clear error).
    cli = main(["test", *_args(files), "--ckpt_path", str(checkpoints[0]), "--data.test_shards",
                demo_data["images-val"], "--data.num_workers", "0", "--trainer.limit_test_batches", "1",
                "--trainer.default_root_dir", root, "--trainer.logger.init_args.save_dir", root,
                "--trainer.enable_progress_bar", "false"])  # fmt: skip
    metrics = cli.trainer.callback_metrics
    assert 0 < float(metrics["test/loss"]) < 2 * math.log(cli.model.model.classes) and "test/gen_is" in metrics

    # `grn predict` from that checkpoint with configs/c2i_predict.yaml: class samples and a region edit.
    photo = next(Path(demo_data["images-train"]).parent.parent.rglob("*.jpg"))
    out = tmp_path / "samples"
    main(["predict", *_args(files + ["c2i_predict.yaml"]), "--ckpt_path", str(checkpoints[0]),
          "--trainer.accelerator", "cpu", "--trainer.callbacks.output_dir", str(out),
          "--trainer.default_root_dir", root,
          "--data.class_ids", "[1, 5]", "--data.samples_per_class", "2", "--data.resolution", "64",
          "--data.edit_image", str(photo), "--data.edit_samples", "1", "--trainer.enable_progress_bar", "false",
          "--model.init_args.sampler.init_args.steps", "4"])  # fmt: skip
    names = sorted(p.name for p in out.glob("*.png"))
    assert names[:1] == ["class0001_000.png"] and "grid.png" in names and len(names) == 6, names

    # A predict-time sampling override reaches the module's sampler through the CLI although the checkpoint was
    # trained with other sampling options (sampling is not saved in checkpoints), and it changes the samples.
    def predict(steps: str, folder: str):
        cli = main(["predict", *_args(files + ["c2i_predict.yaml"]), "--ckpt_path", str(checkpoints[0]),
                    "--trainer.accelerator", "cpu", "--trainer.callbacks.output_dir", str(tmp_path / folder),
                    "--trainer.default_root_dir", root, "--data.class_ids", "[1, 5]", "--data.samples_per_class", "2",
                    "--data.resolution", "64", "--trainer.enable_progress_bar", "false",
                    "--model.init_args.sampler.init_args.steps", steps])  # fmt: skip
        return cli.model.sampler.steps, (tmp_path / folder / "class0001_000.png").read_bytes()

    (steps_a, image_a), (steps_b, image_b), (_, image_c) = predict("3", "a"), predict("5", "b"), predict("3", "c")
    assert (steps_a, steps_b) == (3, 5) and image_a == image_c and image_a != image_b


def test_ckpt_path_last_resumes_across_logger_versions(tmp_path, demo_data):
    """`grn fit --ckpt_path last` after a restart (SPEC §10: the release's resume glob never matched). The restarted
    job logs to a new TensorBoard version, where Lightning alone finds no last.ckpt and silently starts over."""
    root = str(tmp_path)
    common = [*_args(["smoke/c2i_ind.yaml"]), "--data.train_shards", demo_data["images-train"],
              "--data.val_shards", demo_data["images-val"], "--data.num_workers", "0", "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", root,
              "--trainer.logger.init_args.save_dir", root, "--trainer.enable_progress_bar", "false",
              "--ckpt_path", "last"]  # fmt: skip
    first = main(["fit", *common, "--trainer.max_steps", "3"])  # the job's first launch: nothing to resume
    assert first.trainer.ckpt_path is None and first.trainer.global_step == 3
    second = main(["fit", *common, "--trainer.max_steps", "5"])  # the restart after a "crash"
    assert Path(second.trainer.ckpt_path) == tmp_path / "tb/version_0/checkpoints/last.ckpt"
    assert second.trainer.global_step == 5
    third = main(["fit", *common, "--trainer.max_steps", "7"])  # the newest last.ckpt wins
    assert Path(third.trainer.ckpt_path) == tmp_path / "tb/version_1/checkpoints/last.ckpt"
    saved = torch.load(tmp_path / "tb/version_2/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 7
