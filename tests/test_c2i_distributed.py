"""C2IModule (and T2XModule, mode fsdp2_t2x) under 2-process CPU (gloo) data parallelism: FSDP2 (`ModelParallelStrategy` + `fully_shard`) and DDP.

Each run trains a tiny GRN for a few steps, saves a checkpoint (sharded for FSDP2), then a second run resumes
from it: the restored EMA weights, raw weights and step counter must equal the saved ones exactly, and both
ranks must hold identical full weights. The worker is this file run as a script (Lightning re-launches it once
per rank); the test compares what the ranks wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

STEPS = 3


from grn_lightning.generator.options import Corruption, EMATracks, Optimization, Parallelism


def _tiny_transformer(num_classes: int = 3):
    """The tiny C2I transformer of these tests: 4 channels, 4 rounds, a 4x4 token grid."""
    from grn_lightning.generator.c2i.model import GRNC2ITransformer

    return GRNC2ITransformer(size="tiny", variant="ind", channels=4, rounds=4, num_classes=num_classes, grid_size=4,
                             in_context_tokens=4)  # fmt: skip


def _full_state(module, root=None) -> dict[str, torch.Tensor]:
    """Full (unsharded) fp32 copies of the raw and EMA weights, collective under FSDP2 / FSDP1.

    FSDP1: the parameters are gathered through the ROOT wrapper (`trainer.strategy.model`); summoning a nested
    unit first would make it a root and break the real root's lazy initialisation at the next forward."""
    if type(module.model).__name__ == "FullyShardedDataParallel":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        out = {}
        with FSDP.summon_full_params(root, writeback=False):
            for prefix, net in (("model", module.model), ("ema", module.ema)):
                for name, p in net.named_parameters():
                    clean = name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")
                    out[f"{prefix}.{clean}"] = p.detach().float().cpu().clone()
        return out
    out = {}
    for prefix, net in (("model", module.model), ("ema", module.ema)):
        for name, p in net.named_parameters():
            t = p.full_tensor() if hasattr(p, "full_tensor") else p
            out[f"{prefix}.{name.replace('_checkpoint_wrapped_module.', '')}"] = t.detach().float().cpu().clone()
    return out


def _worker(mode: str, phase: str, out_dir: str) -> None:
    import grn_lightning  # noqa: F401
    import lightning as L

    from grn_lightning.generator.c2i.module import C2IModule

    class Snapshot(L.Callback):
        """Writes the full weights right after restore (train start) and at the end of training."""

        def _dump(self, trainer, pl_module, tag: str) -> None:
            state = _full_state(pl_module, trainer.strategy.model)  # collective: every rank calls it, every rank writes its copy
            path = os.path.join(out_dir, f"{mode}-{phase}-{tag}-rank{trainer.global_rank}.pt")
            from grn_lightning.generator.parallelize import is_sharded

            fsdp1 = mode.startswith("fsdp1")
            sharded = [None] if fsdp1 else [is_sharded(pl_module.model), is_sharded(pl_module.ema)]
            encoder = getattr(pl_module, "text_encoder", None)
            encoder_sharded = None if encoder is None or fsdp1 else is_sharded(encoder)
            torch.save({"state": state, "step": trainer.global_step, "sharded": sharded,
                        "encoder_sharded": encoder_sharded}, path)  # fmt: skip

        def on_train_start(self, trainer, pl_module) -> None:
            self._dump(trainer, pl_module, "start")

        def on_train_end(self, trainer, pl_module) -> None:
            self._dump(trainer, pl_module, "end")

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 16, (16, 4, 1, 4, 4), generator=g)
    data = [{"tokens": tokens[i : i + 4], "cls": torch.arange(4) % 3, "valid": torch.ones(4, dtype=torch.bool),
             "caption": ["a cat", "a dog", "", "a long caption about a bird"]} for i in range(0, 16, 4)]  # fmt: skip
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    # "..._bf16" and the 1-GPU FSDP2 modes run the default bf16 MixedPrecisionPolicy (configs H/G and T2X)
    bf16 = "bf16" in mode or mode.startswith("fsdp2") and mode.endswith("gpu1")
    if "t2x" in mode:  # the T2I module shares the sharding, EMA and checkpoint code (generator/module.py)
        from grn_lightning.generator.t2x.model import GRNT2XTransformer
        from grn_lightning.generator.t2x.module import Packing, T2XModule
        from grn_lightning.generator.t2x.text import UMT5TextEncoder

        text = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4, "vocab_size": 384}
        module = T2XModule(
            GRNT2XTransformer(size="tiny", variant="bit", channels=4, rounds=4, text_dim=32),
            text_encoder=UMT5TextEncoder(random_init=text, max_length=32, dtype="float32"),
            corruption=Corruption(ratio_mu=-1.3, ratio_sigma=1.3, condition_dropout=0.0),
            packing=Packing(token_budget=256, pad_multiple=16), ema=EMATracks(decay=0.5),
            optimization=Optimization(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
            parallelism=Parallelism(activation_checkpointing=True, fsdp_bf16_params=bf16),
        )  # fmt: skip
    else:
        module = C2IModule(
            _tiny_transformer(), optimization=Optimization(lr=1e-3), ema=EMATracks(decay=0.5),
            parallelism=Parallelism(activation_checkpointing=(mode == "fsdp2"), fsdp_bf16_params=bf16),
        )  # fmt: skip
    accelerator, precision = "cpu", "32-true"
    if mode.startswith("fsdp2"):
        from lightning.pytorch.strategies import ModelParallelStrategy

        # "fsdp2": sharded (distributed) checkpoint directory; "fsdp2_full": one consolidated file from rank 0.
        one_gpu = mode.endswith("gpu1")  # world size 1 on a GPU: still DTensors, a sharded checkpoint, bf16 compute
        strategy = ModelParallelStrategy(data_parallel_size=1 if one_gpu else 2, tensor_parallel_size=1,
                                         save_distributed_checkpoint=(mode != "fsdp2_full"))  # fmt: skip
        if one_gpu:
            accelerator, precision = "gpu", "bf16-mixed"
    elif mode.startswith("fsdp1_gpu"):
        # GPU only: Lightning FSDPStrategy (FSDP1) with the wrap policy of configs/c2i_fsdp1.yaml.
        from lightning.pytorch.strategies import FSDPStrategy

        from grn_lightning.generator.c2i.model import GRNBlock, GRNC2ITransformer

        strategy = FSDPStrategy(
            auto_wrap_policy={GRNBlock, GRNC2ITransformer}, activation_checkpointing_policy={GRNBlock},
            state_dict_type="sharded",
        )
        accelerator, precision = "gpu", "bf16-mixed"
    else:
        strategy = "ddp"
    ckpt = os.path.join(out_dir, f"{mode}.ckpt")
    trainer = L.Trainer(
        accelerator=accelerator, devices=1 if mode.endswith("gpu1") else 2, strategy=strategy, precision=precision,
        max_steps=STEPS * (2 if phase == "resume" else 1),
        gradient_clip_val=0.1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[Snapshot()], default_root_dir=out_dir, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(module, loader, ckpt_path=ckpt if phase == "resume" else None)
    if phase == "first":
        trainer.save_checkpoint(ckpt)
    if trainer.is_global_zero:
        with open(os.path.join(out_dir, f"{mode}-{phase}.json"), "w") as handle:
            json.dump({"global_step": trainer.global_step}, handle)
    # Tear the process group down before the interpreter exits: left to exit-time destructors, a gloo thread can
    # abort a rank with SIGABRT ("terminate called without an active exception") after all the work has succeeded
    # (a CI run on 2026-12-05).
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _run(mode: str, phase: str, out_dir: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, __file__, mode, phase, out_dir], env=env, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.mark.timeout(400)
@pytest.mark.parametrize("mode", ["fsdp2", "fsdp2_full", "ddp", "fsdp2_t2x"])
def test_two_process_training_and_resume_keeps_ema(tmp_path, mode):
    out = str(tmp_path)
    _run(mode, "first", out)
    _run(mode, "resume", out)
    saved = [torch.load(os.path.join(out, f"{mode}-first-end-rank{r}.pt")) for r in (0, 1)]
    restored = [torch.load(os.path.join(out, f"{mode}-resume-start-rank{r}.pt")) for r in (0, 1)]
    final = [torch.load(os.path.join(out, f"{mode}-resume-end-rank{r}.pt")) for r in (0, 1)]
    assert saved[0]["sharded"] == restored[1]["sharded"] == [mode.startswith("fsdp2")] * 2  # raw + EMA DTensors
    assert saved[0]["step"] == STEPS and restored[0]["step"] == STEPS and final[0]["step"] == 2 * STEPS
    if "t2x" in mode:  # the frozen umT5 is sharded over the ranks too (FSDP2), and the runs did not hang on it
        assert saved[0]["encoder_sharded"] is restored[1]["encoder_sharded"] is True
    for name, value in saved[0]["state"].items():
        assert torch.equal(saved[1]["state"][name], value), f"ranks disagree on {name}"
        assert torch.equal(restored[0]["state"][name], value), f"{name} not restored exactly"
        assert torch.equal(restored[1]["state"][name], value), f"{name} not restored exactly on rank 1"
    # The EMA really moved: it differs from the raw weights and changes between save and the end of the resume.
    ema_keys = [k for k in saved[0]["state"] if k.startswith("ema.blocks.0.attn.") and k.endswith("proj.weight")
                or k == "ema.blocks.0.attn.qkv.weight"]  # C2I fuses qkv, T2X has q/k/v/o_proj
    raw = saved[0]["state"][ema_keys[0].replace("ema.", "model.", 1)]
    assert not torch.equal(saved[0]["state"][ema_keys[0]], raw)
    assert not torch.equal(final[0]["state"][ema_keys[0]], saved[0]["state"][ema_keys[0]])
    if mode == "fsdp2_full":
        # A consolidated FSDP2 checkpoint loads into a plain, unsharded module (evaluation / sampling tools).
        from grn_lightning.eval.loading import load_lightning_checkpoint
        from grn_lightning.generator.c2i.module import C2IModule

        plain = C2IModule(_tiny_transformer())
        load_lightning_checkpoint(plain, os.path.join(out, f"{mode}.ckpt"))
        for name, p in plain.ema.named_parameters():
            assert torch.equal(p, saved[0]["state"][f"ema.{name}"]), name


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("mode", ["fsdp2_bf16", "fsdp2_t2x_bf16"])
def test_two_process_fsdp2_bf16_mixed_precision_resumes_exactly(tmp_path, mode):
    """The default FSDP2 policy of the H/G and T2X configs (bf16 parameters gathered over gloo, fp32 reduction and
    master weights); T2X also shards its frozen text encoder. The fp32 masters and EMA are restored exactly."""
    test_two_process_training_and_resume_keeps_ema(tmp_path, mode)


@pytest.mark.gpu
@pytest.mark.timeout(600)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["fsdp2_gpu1", "fsdp2_t2x_gpu1"])
def test_fsdp2_one_gpu_bf16_sharded_checkpoint_resume_keeps_raw_and_ema(tmp_path, mode):
    """FSDP2 (ModelParallelStrategy, world size 1) with bf16 parameters and bf16-mixed on one GPU: sharded
    checkpoint, resume, raw and EMA weights restored exactly, EMA still moving after the resume."""
    out = str(tmp_path)
    _run(mode, "first", out)
    _run(mode, "resume", out)
    saved = torch.load(os.path.join(out, f"{mode}-first-end-rank0.pt"))
    restored = torch.load(os.path.join(out, f"{mode}-resume-start-rank0.pt"))
    final = torch.load(os.path.join(out, f"{mode}-resume-end-rank0.pt"))
    assert saved["sharded"] == restored["sharded"] == [True, True]
    assert saved["step"] == STEPS and restored["step"] == STEPS and final["step"] == 2 * STEPS
    for name, value in saved["state"].items():
        assert torch.equal(restored["state"][name], value), f"{name} not restored exactly"
    ema = next(k for k in saved["state"] if k.startswith("ema.blocks.0.attn.") and k.endswith("weight"))
    assert not torch.equal(final["state"][ema], saved["state"][ema])


@pytest.mark.gpu
@pytest.mark.timeout(600)
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP1 (FSDPStrategy) needs 2 CUDA devices")
def test_fsdp1_two_gpus_training_and_resume_keeps_ema(tmp_path):
    out = str(tmp_path)
    _run("fsdp1_gpu", "first", out)
    _run("fsdp1_gpu", "resume", out)
    saved = torch.load(os.path.join(out, "fsdp1_gpu-first-end-rank0.pt"))
    restored = torch.load(os.path.join(out, "fsdp1_gpu-resume-start-rank1.pt"))
    assert restored["step"] == STEPS
    for name, value in saved["state"].items():
        assert torch.equal(restored["state"][name], value), f"{name} not restored exactly"


@pytest.mark.gpu
@pytest.mark.timeout(600)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fsdp1_one_gpu_training_checkpoint_and_resume_keeps_ema(tmp_path):
    """Lightning FSDPStrategy on 1 GPU (the issue's single-GPU check): sharded checkpoint, resume, EMA intact."""
    out = str(tmp_path)
    _run("fsdp1_gpu1", "first", out)
    _run("fsdp1_gpu1", "resume", out)
    saved = torch.load(os.path.join(out, "fsdp1_gpu1-first-end-rank0.pt"))
    restored = torch.load(os.path.join(out, "fsdp1_gpu1-resume-start-rank0.pt"))
    final = torch.load(os.path.join(out, "fsdp1_gpu1-resume-end-rank0.pt"))
    assert saved["step"] == STEPS and restored["step"] == STEPS and final["step"] == 2 * STEPS
    assert any(k.startswith("ema.") for k in saved["state"])
    for name, value in saved["state"].items():
        assert torch.equal(restored["state"][name], value), f"{name} not restored exactly"
    ema = next(k for k in saved["state"] if k.startswith("ema.") and "blocks.0.attn.qkv.weight" in k)
    assert not torch.equal(saved["state"][ema], saved["state"][ema.replace("ema.", "model.", 1)])  # EMA != raw
    assert not torch.equal(final["state"][ema], saved["state"][ema])  # and it kept updating after the resume


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bf16_compiled_training_step_learns(tmp_path):
    """bf16-mixed + per-block torch.compile + activation checkpointing on one GPU: the loss falls."""
    import lightning as L

    from grn_lightning.generator.c2i.module import C2IModule

    torch.manual_seed(0)
    tokens = torch.randint(0, 16, (8, 4, 1, 4, 4))
    batch = {"tokens": tokens, "cls": torch.arange(8), "valid": torch.ones(8, dtype=torch.bool)}
    module = C2IModule(_tiny_transformer(num_classes=8), corruption=Corruption(condition_dropout=0.0),
                       optimization=Optimization(lr=3e-3), ema=EMATracks(decay=0.9),
                       parallelism=Parallelism(compile="block", activation_checkpointing=True))  # fmt: skip
    losses = []

    class Log(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=100, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, callbacks=[Log()],
                        default_root_dir=str(tmp_path))  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader([batch] * 100, batch_size=None))
    # one token map per class: memorisable, so the loss falls far below the uniform guess ln 16 = 2.77
    assert sum(losses[-10:]) / 10 < 0.6 * losses[0], losses[::10]
    images_free = module.sample_labels(torch.arange(4, device="cuda"), torch.Generator("cuda").manual_seed(0), steps=4)
    assert images_free.labels.shape == (4, 16, 4)


if __name__ == "__main__":
    _worker(*sys.argv[1:4])
