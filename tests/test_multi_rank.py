"""Multi-rank behaviour on CPU (gloo), the CPU-runnable part of the "multi-GPU runs" issue:

1. FSDP2 sharded checkpoints: saved by 2 ranks, resumed on 2 and on 1 rank (weights, EMA and step exact), and
   consolidated into one file by tools/consolidate_checkpoint.py for machines without a process group.
2. GenerationMetrics with entropy-guided (adaptive) steps: 2 DDP ranks give the gFID / IS (and images) of 1 rank.
3. GRNDataModule dataloaders with 2 workers under 2 ranks: disjoint training records from the training shards
   only; evaluation sees every record once with equal batch counts per rank.
4. TokenizerModule (manual optimisation, two optimisers) under DDP: both ranks identical after every step.

Distributed workers are this file run as a script (`python tests/test_multi_rank.py <job> ...`); Lightning
re-launches it once per rank (as tests/test_c2i_distributed.py does) and the tests compare what the ranks wrote.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import grn_lightning  # noqa: F401  (torchvision compatibility before lightning)
import lightning as L
import pytest
import torch

from grn_lightning.generator.c2i.module import C2IModule

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3  # optimiser steps before the checkpoint (and again after the resume)
EMA_DECAY = 0.5  # fast EMA: it visibly moves in a few steps
ADAPTIVE = {"t0": 2, "k": 24.0, "b": -9.5, "t_min": 3, "t_max": 9}  # spreads tiny-model entropies over 3..9 steps
GEN_SAMPLES, GEN_BATCH = 6, 2  # 3 global batches: rank 0 gets two, rank 1 one plus a filler batch


# ---- shared helpers ------------------------------------------------------------------------------------------
def _run_job(*args: str, timeout: int = 240) -> None:
    """Run a worker job of this file in a fresh interpreter (one thread per rank); fails with its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _tiny_c2i(**kwargs) -> C2IModule:
    """The tiny C2I generator of tests/test_c2i_distributed.py (4x4 token grid, 4 channels, 3 classes)."""
    from grn_lightning.generator.c2i.model import GRNC2ITransformer
    from grn_lightning.generator.options import EMATracks, Optimization, Parallelism

    transformer = GRNC2ITransformer(size="tiny", variant="ind", channels=4, rounds=4, num_classes=3, grid_size=4,
                                    in_context_tokens=4)  # fmt: skip
    args = dict(optimization=Optimization(lr=1e-3), ema=EMATracks(decay=EMA_DECAY),
                parallelism=Parallelism(fsdp_bf16_params=False))  # fmt: skip
    return C2IModule(transformer, **{**args, **kwargs})


def _token_batches(count: int = 4) -> list[dict]:
    """Fixed random index-label batches [4, C=4, 1, 4, 4] with class ids."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 16, (4 * count, 4, 1, 4, 4), generator=g)
    return [{"tokens": tokens[i : i + 4], "cls": torch.arange(4) % 3, "valid": torch.ones(4, dtype=torch.bool)}
            for i in range(0, 4 * count, 4)]  # fmt: skip


def _full_weights(module: C2IModule) -> dict[str, torch.Tensor]:
    """Full (unsharded) copies of the raw and EMA weights; collective under FSDP2 (every rank must call it)."""
    out = {}
    for prefix, net in (("model", module.model), ("ema", module.ema)):
        for name, p in net.named_parameters():
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            out[f"{prefix}.{name}"] = full.detach().float().cpu().clone()
    return out


def _quiet_trainer(root: str, **kwargs) -> L.Trainer:
    args = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, default_root_dir=root)  # fmt: skip
    return L.Trainer(**{**args, **kwargs})


# ---- 1. sharded checkpoints across world sizes + consolidation -----------------------------------------------
class _WeightSnapshots(L.Callback):
    """Saves the full weights at train start (right after a restore), after the first step and at train end."""

    def __init__(self, out_dir: str, tag: str):
        self.out_dir, self.tag, self.batches = out_dir, tag, 0

    def _dump(self, trainer: L.Trainer, module: C2IModule, when: str) -> None:
        from grn_lightning.generator.parallelize import is_sharded

        weights = _full_weights(module)  # collective: all ranks, before the rank-local write
        record = {"weights": weights, "step": trainer.global_step, "world": trainer.world_size,
                  "sharded": [is_sharded(module.model), is_sharded(module.ema)]}  # fmt: skip
        torch.save(record, os.path.join(self.out_dir, f"{self.tag}-{when}-rank{trainer.global_rank}.pt"))

    def on_train_start(self, trainer, pl_module) -> None:
        self._dump(trainer, pl_module, "start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1  # batch_idx does not restart at 0: a resume continues mid-epoch
        if self.batches == 1:
            self._dump(trainer, pl_module, "step1")

    def on_train_end(self, trainer, pl_module) -> None:
        self._dump(trainer, pl_module, "end")


def _sharded_job_setup(ranks: int):
    """One thread, seed 0, and the FSDP2 strategy over `ranks` data-parallel ranks that saves sharded checkpoints."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    torch.set_num_threads(1)
    torch.manual_seed(0)
    return ModelParallelStrategy(data_parallel_size=ranks, tensor_parallel_size=1, save_distributed_checkpoint=True)


def _checkpoint_job(phase: str, world: str, out_dir: str, resume_from: str = "") -> None:
    """phase "save": 2 ranks train STEPS steps and save a sharded checkpoint; "resume": `world` ranks continue it
    (`resume_from`, default `<out_dir>/sharded.ckpt`)."""
    ranks = int(world)
    strategy = _sharded_job_setup(ranks)
    tag = f"{phase}{ranks}"
    trainer = _quiet_trainer(
        out_dir, devices=ranks, strategy=strategy, max_steps=STEPS * (1 if phase == "save" else 2),
        gradient_clip_val=0.1, callbacks=[_WeightSnapshots(out_dir, tag)],
    )  # fmt: skip
    sharded = os.path.join(out_dir, "sharded.ckpt")
    loader = torch.utils.data.DataLoader(_token_batches(), batch_size=None)
    trainer.fit(_tiny_c2i(), loader, ckpt_path=(resume_from or sharded) if phase == "resume" else None)
    if phase == "save":
        trainer.save_checkpoint(sharded)


def _load(out: Path, name: str) -> dict:
    return torch.load(out / name, weights_only=False)


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory) -> Path:
    """A folder holding `sharded.ckpt/` (2-rank FSDP2 distributed checkpoint after STEPS steps) and snapshots."""
    out = tmp_path_factory.mktemp("sharded")
    _run_job("checkpoint", "save", "2", str(out))
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world", [2, 1])
def test_sharded_checkpoint_resumes_on_two_and_one_ranks(sharded_run, world):
    """2 ranks save a sharded FSDP2 checkpoint; `world` ranks (ModelParallelStrategy with 1 device for world 1)
    resume it: step counter, raw and EMA weights restored exactly, and the EMA continues from the restored values."""
    shards = sorted(p.name for p in (sharded_run / "sharded.ckpt").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]  # really sharded, by 2 ranks
    _run_job("checkpoint", "resume", str(world), str(sharded_run))
    saved = [_load(sharded_run, f"save2-end-rank{r}.pt") for r in (0, 1)]
    for name, value in saved[0]["weights"].items():
        assert torch.equal(saved[1]["weights"][name], value), f"the saving ranks disagree on {name}"
    for rank in range(world):
        restored = _load(sharded_run, f"resume{world}-start-rank{rank}.pt")
        first = _load(sharded_run, f"resume{world}-step1-rank{rank}.pt")
        final = _load(sharded_run, f"resume{world}-end-rank{rank}.pt")
        assert restored["world"] == world and restored["sharded"] == [True, True]  # FSDP2 on this world size
        assert (restored["step"], first["step"], final["step"]) == (STEPS, STEPS + 1, 2 * STEPS)
        assert restored["weights"].keys() == saved[0]["weights"].keys()
        for name, value in saved[0]["weights"].items():
            assert torch.equal(restored["weights"][name], value), f"{name} not restored exactly on rank {rank}"
        for name in (n for n in saved[0]["weights"] if n.startswith("ema.")):
            raw = name.replace("ema.", "model.", 1)
            # First step after the resume: ema <- ema_restored + (1 - decay) (raw_new - ema_restored), i.e. the
            # EMA continued from the checkpoint (not re-initialised from the raw weights).
            expected = torch.lerp(restored["weights"][name], first["weights"][raw], 1.0 - EMA_DECAY)
            torch.testing.assert_close(first["weights"][name], expected, rtol=0, atol=1e-6, msg=name)
    qkv = "ema.blocks.0.attn.qkv.weight"
    assert not torch.equal(saved[0]["weights"][qkv], saved[0]["weights"][qkv.replace("ema.", "model.", 1)])
    assert not torch.equal(final["weights"][qkv], saved[0]["weights"][qkv])  # EMA kept updating after resume


def _consolidate_tool():
    path = ROOT / "tools" / "consolidate_checkpoint.py"
    spec = importlib.util.spec_from_file_location("consolidate_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _EmaAtValidationStart(L.Callback):
    def on_validation_start(self, trainer, pl_module) -> None:
        self.ema = {n: p.detach().clone() for n, p in pl_module.ema.named_parameters()}


class _AdamMomentsAtTrainStart(L.Callback):
    """exp_avg of every raw weight, by name, right after a restore."""

    def on_train_start(self, trainer, pl_module) -> None:
        state = trainer.optimizers[0].state
        self.step = trainer.global_step
        self.exp_avg = {f"model.{n}": state[p]["exp_avg"].clone() for n, p in pl_module.model.named_parameters()}


@pytest.mark.timeout(300)
def test_consolidated_checkpoint_loads_without_distributed_setup(sharded_run, tmp_path, capsys):
    """tools/consolidate_checkpoint.py (its CLI) turns the sharded folder into one file with the keys of an
    unsharded module; every single-process loading path gets the saved weights back exactly."""
    saved = _load(sharded_run, "save2-end-rank0.pt")["weights"]
    output = tmp_path / "c2i.ckpt"
    cmd = [sys.executable, str(ROOT / "tools" / "consolidate_checkpoint.py"), str(sharded_run / "sharded.ckpt"),
           "--output", str(output)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and f"wrote {output}" in proc.stdout, proc.stderr[-3000:]

    checkpoint = torch.load(output, map_location="cpu", weights_only=False)
    plain = _tiny_c2i()
    assert set(checkpoint["state_dict"]) == set(plain.state_dict())  # model.*, ema.*: unsharded names
    assert checkpoint["global_step"] == STEPS and len(checkpoint["optimizer_states"]) == 1
    assert not any(hasattr(v, "to_local") for v in checkpoint["state_dict"].values())  # plain tensors, no DTensor

    loaded = C2IModule.load_from_checkpoint(str(output))  # hyper-parameters from the file
    assert loaded.ema_options.decay == EMA_DECAY and loaded.hparams.ema["decay"] == EMA_DECAY
    from grn_lightning.eval.loading import load_lightning_checkpoint

    load_lightning_checkpoint(plain, output)
    for module in (loaded, plain):
        for name, value in _full_weights(module).items():
            assert torch.equal(value, saved[name]), name
    # `grn validate --ckpt_path` path: a one-device Trainer restores the file into a fresh module.
    at_start = _EmaAtValidationStart()
    trainer = _quiet_trainer(str(tmp_path), devices=1, callbacks=[at_start])
    loader = torch.utils.data.DataLoader(_token_batches(1), batch_size=None)
    (results,) = trainer.validate(_tiny_c2i(), loader, ckpt_path=str(output), verbose=False)
    assert math.isfinite(results["val/loss"])
    for name, value in at_start.ema.items():
        assert torch.equal(value, saved[f"ema.{name}"]), name
    # `grn fit --ckpt_path` on one device without a strategy: the name-keyed optimiser state lands on the right
    # parameters (optimizer.load_state_dict matches the param_groups' names by position).
    moments = _AdamMomentsAtTrainStart()
    trainer = _quiet_trainer(str(tmp_path), devices=1, max_steps=STEPS + 1, callbacks=[moments])
    trainer.fit(_tiny_c2i(), torch.utils.data.DataLoader(_token_batches(), batch_size=None), ckpt_path=str(output))
    stored = checkpoint["optimizer_states"][0]["state"]
    assert moments.step == STEPS and moments.exp_avg.keys() == stored.keys()
    for name, value in moments.exp_avg.items():
        assert torch.equal(value, stored[name]["exp_avg"]) and value.abs().sum() > 0, name

    tool = _consolidate_tool()
    with pytest.raises(SystemExit) as exit_info:
        tool.main(["--help"])
    assert exit_info.value.code == 0 and "sharded" in capsys.readouterr().out
    assert tool.main([str(tmp_path)]) == 2  # a folder that is not a sharded checkpoint
    assert "not a sharded Lightning checkpoint" in capsys.readouterr().err
    assert tool.main([str(output)]) == 2 and "already a full" in capsys.readouterr().err
    assert tool.main([str(sharded_run / "sharded.ckpt"), "--output", str(output)]) == 2  # never overwrites silently
    assert "exists" in capsys.readouterr().err


# ---- 2. GenerationMetrics with adaptive steps: 2 ranks == 1 rank ---------------------------------------------
class _StepRecordingC2I(C2IModule):
    """C2IModule that keeps the per-sample step counts of its sampler runs (shows that adaptive steps vary)."""

    def sample_labels(self, class_ids, generator=None, **overrides):
        result = super().sample_labels(class_ids, generator, **overrides)
        self.sampled_steps = getattr(self, "sampled_steps", []) + result.steps.tolist()
        return result


def _generation_module() -> _StepRecordingC2I:
    """Tiny C2I with a tiny random HBQ tokenizer (64² images), weights scaled up so that the predictions' entropy
    differs between samples; identical in every process (seeded), the EMA equal to the raw weights."""
    from grn_lightning.tokenizer.vae import HBQTokenizer

    torch.manual_seed(0)
    tokenizer = HBQTokenizer(preset="tiny", latent_channels=4, num_rounds=4)
    from grn_lightning.generator.c2i.model import GRNC2ITransformer

    transformer = GRNC2ITransformer(size="tiny", channels=4, rounds=4, num_classes=3, grid_size=4, in_context_tokens=4)
    module = _StepRecordingC2I(transformer, tokenizer=tokenizer)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    module.ema.load_state_dict(module.model.state_dict())
    return module


def _generation_job(world: str, reference: str, out_dir: str) -> None:
    """One validation run with GenerationMetrics (adaptive sampling) on `world` CPU processes."""
    from grn_lightning.eval.callbacks import GenerationMetrics

    torch.set_num_threads(1)
    ranks = int(world)
    callback = GenerationMetrics(
        num_samples=GEN_SAMPLES, batch_size=GEN_BATCH, reference_stats=reference, sampling={"adaptive": ADAPTIVE},
        seed=7, is_splits=2, random_init=True, grid_size=0, save_dir=os.path.join(out_dir, "png"), show_progress=False,
    )  # fmt: skip
    trainer = _quiet_trainer(out_dir, devices=ranks, strategy="ddp" if ranks > 1 else "auto", callbacks=[callback],
                             use_distributed_sampler=False)  # fmt: skip
    module = _generation_module()
    loader = torch.utils.data.DataLoader(_token_batches(1), batch_size=None)
    (results,) = trainer.validate(module, loader, verbose=False)
    record = {"results": results, "steps": module.sampled_steps}
    with open(os.path.join(out_dir, f"gen-rank{trainer.global_rank}.json"), "w") as handle:
        json.dump(record, handle)


def _reference_stats(path: Path) -> None:
    """gFID reference statistics: random-init Inception features of real photos (scikit-image)."""
    import numpy as np
    from skimage import data

    from grn_lightning.eval.features import InceptionFeatureExtractor
    from grn_lightning.eval.metrics import save_reference_stats

    photos = [getattr(data, name)()[:256, :256] for name in ("astronaut", "chelsea", "coffee", "rocket")]
    images = torch.stack([torch.from_numpy(p.copy()).permute(2, 0, 1).float() / 127.5 - 1 for p in photos])
    features = InceptionFeatureExtractor(random_init=True)(images).pool.double()
    save_reference_stats(path, features.mean(0).numpy(), np.cov(features.numpy().T))


@pytest.mark.timeout(300)
def test_generation_metrics_with_adaptive_steps_match_on_one_and_two_ranks(tmp_path):
    """A validation run with GenerationMetrics and entropy-guided steps on 1 process and on 2 DDP processes (rank 0
    makes two batches, rank 1 one and a filler batch, with different step counts; nobody waits in a collective
    before compute()): same gFID and IS, because every sample is the same image on both world sizes."""
    reference = tmp_path / "ref.npz"
    _reference_stats(reference)
    runs = {}
    for world in (1, 2):
        out = tmp_path / f"world{world}"
        out.mkdir()
        _run_job("generation", str(world), str(reference), str(out))
        runs[world] = [json.loads((out / f"gen-rank{r}.json").read_text()) for r in range(world)]
    steps = [s for rank in runs[1] + runs[2] for s in rank["steps"]]
    assert len(set(steps)) > 1 and ADAPTIVE["t_min"] <= min(steps) and max(steps) <= ADAPTIVE["t_max"]
    one = runs[1][0]["results"]
    assert runs[2][0]["results"] == runs[2][1]["results"]  # compute() synced: both ranks log the global numbers
    # The protocol file (rank 0) keeps the float64 values; the logged ones are float32, too coarse for IS - 1 ~ 1e-5
    # (a random-init Inception scores every image almost alike).
    (single,), (double,) = (json.loads((tmp_path / f"world{w}" / "metrics_protocol.json").read_text()) for w in (1, 2))
    assert (single["world_size"], double["world_size"]) == (1, 2)
    assert single["metrics"]["gfid"] > 0 and single["metrics"]["is"] > 1.0
    assert double["metrics"]["gfid"] == pytest.approx(single["metrics"]["gfid"], rel=1e-4)
    assert double["metrics"]["is"] - 1 == pytest.approx(single["metrics"]["is"] - 1, rel=1e-4)
    assert double["metrics"]["is_std"] == pytest.approx(single["metrics"]["is_std"], rel=1e-4)
    assert runs[2][0]["results"]["val/gen_gfid"] == pytest.approx(one["val/gen_gfid"], rel=1e-4)
    # Why they agree: sample i is the same image whichever rank made it (PNGs are named by global index).
    names = sorted(p.name for p in (tmp_path / "world1" / "png").iterdir())
    assert names == [f"{i:06d}.png" for i in range(GEN_SAMPLES)]
    for name in names:
        assert (tmp_path / "world2" / "png" / name).read_bytes() == (tmp_path / "world1" / "png" / name).read_bytes()


def test_class_balanced_batches_are_the_same_global_batches_on_any_world_size():
    """The unit of sampling noise is the global batch: every world size deals out the same batches (one filler row
    for a rank without one), and every rank makes the same number of sampler calls."""
    from grn_lightning.eval.evaluators import class_balanced_batches

    reference = [(n, ids.tolist(), idx.tolist()) for n, ids, _, idx in class_balanced_batches(10, 5, 3)]
    assert [len(idx) for _, _, idx in reference] == [3, 3, 3, 1]
    for world in (2, 3, 5):
        shares = [class_balanced_batches(10, 5, 3, rank, world) for rank in range(world)]
        assert len({len(share) for share in shares}) == 1
        real = sorted((n, ids.tolist(), idx.tolist()) for share in shares for n, ids, ok, idx in share if ok.all())
        assert real == reference
        fillers = [ok for share in shares for _, _, ok, _ in share if not ok.all()]
        assert len(fillers) == -(-4 // world) * world - 4 and all(ok.tolist() == [False] for ok in fillers)


# ---- 3. data: 2 ranks x 2 workers through the real GRNDataModule loaders --------------------------------------
def _fingerprint(pixels: torch.Tensor) -> str:
    return hashlib.sha1(pixels.contiguous().numpy().tobytes()).hexdigest()


def _split_fingerprints(pattern: str, resolution: int) -> dict[str, str]:
    """{pixel fingerprint: key} of every record of a split, decoded alone (and flipped: training may flip)."""
    from grn_lightning.data.records import SampleSpec, decode_record
    from grn_lightning.data.splits import expand_shards
    from grn_lightning.data.streams import SkipCounter, iterate_records

    spec = SampleSpec(kind="image", resolution=resolution)
    table = {}
    for record in iterate_records(expand_shards(pattern), SkipCounter()):
        sample = decode_record(record, spec, rng=None)
        for pixels in (sample["pixels"], sample["pixels"].flip(-1)):
            table[_fingerprint(pixels)] = sample["key"]
    return table


def _as_rank(monkeypatch, rank: int, world: int = 2) -> None:
    """RANK / WORLD_SIZE as torchrun sets them; forked DataLoader workers inherit them."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def _data_module(demo_data: dict, **kwargs):
    from grn_lightning.data.datamodule import GRNDataModule

    args = dict(kind="image", train_shards=demo_data["images-train"], val_shards=demo_data["images-val"], resolution=32,
                batch_size=4, val_batch_size=3, num_workers=2, shuffle_buffer=8, prefetch_factor=2)  # fmt: skip
    return GRNDataModule(**{**args, **kwargs})


def test_training_loaders_of_two_ranks_with_two_workers_are_disjoint_and_train_only(demo_data, monkeypatch):
    """Records are identified by their decoded pixels (demo keys repeat across splits): each rank's records are in
    the train split only, distinct, from both of its workers' shards, and the ranks share none."""
    from grn_lightning.data.splits import expand_shards

    train = _split_fingerprints(demo_data["images-train"], 32)
    held_out = {**_split_fingerprints(demo_data["images-val"], 32), **_split_fingerprints(demo_data["images-test"], 32)}
    assert not train.keys() & held_out.keys()  # the fingerprints tell the splits apart (keys alone repeat)
    shard_of = _record_shards(expand_shards(demo_data["images-train"]))
    seen: dict[int, list[tuple[str, str]]] = {}
    for rank in (0, 1):
        _as_rank(monkeypatch, rank)
        dm = _data_module(demo_data)
        dm.setup("fit")
        iterator = iter(dm.train_dataloader())
        # 8 batches alternate over the 2 workers: 16 records per worker, fewer than a shard holds (no repeats yet).
        batches = [next(iterator) for _ in range(8)]
        seen[rank] = [(_fingerprint(p), k) for b in batches for p, k in zip(b["pixels"], b["key"])]
        del iterator
    for rank, records in seen.items():
        assert all(train.get(fp) == key for fp, key in records), "a training record that is not in the train split"
        assert not {fp for fp, _ in records} & held_out.keys(), "a validation / test record in training"
        keys = [key for _, key in records]
        assert len(keys) == len(set(keys)) == 32, f"rank {rank} repeats records within its first pass"
        # both workers delivered: the rank's records come from its two shards (4 readers over 4 shards)
        assert len({shard_of[k] for k in keys}) == 2
    assert not {k for _, k in seen[0]} & {k for _, k in seen[1]}, "the two ranks share training records"
    assert {shard_of[k] for _, k in seen[0] + seen[1]} == set(shard_of.values())  # all 4 shards are read


def _record_shards(urls: list[str]) -> dict[str, str]:
    """{key: shard} over the training shards (keys are unique within one split)."""
    from grn_lightning.data.streams import SkipCounter, iterate_records

    owner = {}
    for url in urls:
        for record in iterate_records([url], SkipCounter()):
            owner[record["__key__"]] = url
    assert len(owner) == 192
    return owner


def test_evaluation_loaders_of_two_ranks_with_two_workers_read_every_record_once(demo_data, monkeypatch):
    """The validation loaders (2 workers each, batches of 3 that do not divide a worker's share) of both ranks:
    equal batch counts, every validation record exactly once."""
    val_keys = set(_split_fingerprints(demo_data["images-val"], 32).values())
    assert len(val_keys) == 32
    counts, keys = {}, collections.Counter()
    for rank in (0, 1):
        _as_rank(monkeypatch, rank)
        dm = _data_module(demo_data)
        dm.setup("validate")
        batches = list(dm.val_dataloader())
        counts[rank] = len(batches)
        for batch in batches:
            assert batch["pixels"].shape[1:] == (3, 1, 32, 32)
            keys.update(k for k, ok in zip(batch["key"], batch["valid"].tolist()) if ok)
    assert counts[0] == counts[1] == 6  # 16 records per rank, 8 per worker, batches of 3: 3 + 3 + 2 per worker
    assert sorted(keys.elements()) == sorted(val_keys)  # every record exactly once, over both ranks


# ---- 4. tokenizer under DDP: identical ranks after every step -------------------------------------------------
class _PhotoClips(torch.utils.data.IterableDataset):
    """Real photo crops, different on each rank: even steps images [2,3,1,32,32], odd steps 5-frame pans
    [2,3,5,32,32]. The rank is read when iterating (the process group exists by then; no loader workers)."""

    def __iter__(self):
        from skimage import data

        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        photos = [torch.from_numpy(getattr(data, n)()[:256, :256].copy()).permute(2, 0, 1).float() / 127.5 - 1
                  for n in ("astronaut", "chelsea", "coffee", "rocket")]  # fmt: skip
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own crops: local gradients differ
        step = 0
        while True:
            frames = 1 if step % 2 == 0 else 5
            clips = []
            for _ in range(2):
                photo = photos[int(torch.randint(len(photos), (1,), generator=g))]
                y, x = (int(v) for v in torch.randint(0, 200, (2,), generator=g))
                clips.append(torch.stack([photo[:, y : y + 32, x + 4 * t : x + 4 * t + 32] for t in range(frames)], 1))
            yield {"pixels": torch.stack(clips), "valid": torch.ones(2, dtype=torch.bool)}
            step += 1


def _parameter_digest(net: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, p in net.named_parameters():
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _StepDigests(L.Callback):
    """Digests of the generator (tokenizer) and discriminator parameters and of the rank's batch, at train start
    and after every step."""

    def __init__(self):
        self.rows: list[dict] = []

    def _row(self, trainer, module, batch) -> dict:
        return {"step": trainer.global_step, "generator": _parameter_digest(module.tokenizer),
                "discriminator": _parameter_digest(module.discriminator),
                "batch": _fingerprint(batch["pixels"].cpu()) if batch is not None else None,
                "frames": int(batch["pixels"].shape[2]) if batch is not None else None}  # fmt: skip

    def on_train_start(self, trainer, pl_module) -> None:
        self.rows.append(self._row(trainer, pl_module, None))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.rows.append(self._row(trainer, pl_module, batch))


def _tokenizer_job(steps: str, out_dir: str) -> None:
    from grn_lightning.tokenizer.discriminator import PatchDiscriminator
    from grn_lightning.tokenizer.losses import TokenizerLoss
    from grn_lightning.tokenizer.module import TokenizerModule
    from grn_lightning.tokenizer.vae import HBQTokenizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    adamw = lambda params: torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)  # noqa: E731
    module = TokenizerModule(
        tokenizer=HBQTokenizer(preset="tiny", latent_channels=16, num_rounds=4),
        discriminator=PatchDiscriminator(base_channels=8, num_layers=2),
        loss=TokenizerLoss("image", perceptual_weight=0.0, random_backbone=True),
        optimizer=adamw, disc_optimizer=adamw, ema_decay=None, num_logged_samples=0,
    )  # fmt: skip
    digests = _StepDigests()
    trainer = _quiet_trainer(out_dir, devices=2, strategy="ddp_find_unused_parameters_true", max_steps=int(steps),
                             use_distributed_sampler=False, limit_val_batches=0, callbacks=[digests])  # fmt: skip
    loader = torch.utils.data.DataLoader(_PhotoClips(), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    d_steps = sorted({int(s["step"]) for s in trainer.optimizers[1].state.values()})
    record = {"rows": digests.rows, "manual": not module.automatic_optimization, "d_steps": d_steps}
    with open(os.path.join(out_dir, f"tok-rank{trainer.global_rank}.json"), "w") as handle:
        json.dump(record, handle)


@pytest.mark.timeout(300)
def test_tokenizer_ddp_ranks_hold_identical_weights_after_every_step(tmp_path):
    """Manual optimisation (generator + discriminator in one backward), mixed image / video batches, so some
    parameters are unused on image steps: no unused-parameter error, and after EVERY step both optimisers left
    identical parameters on both ranks although each rank trained on its own crops."""
    steps = 4
    _run_job("tokenizer", str(steps), str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"tok-rank{r}.json").read_text()) for r in (0, 1))
    assert r0["manual"] and r0["d_steps"] == r1["d_steps"] == [steps]
    assert [row["step"] for row in r0["rows"]] == list(range(steps + 1))
    assert [row["frames"] for row in r0["rows"][1:]] == [1, 5, 1, 5]
    for a, b in zip(r0["rows"], r1["rows"]):
        assert a["generator"] == b["generator"], f"generator weights differ between ranks at step {a['step']}"
        assert a["discriminator"] == b["discriminator"], f"discriminator weights differ at step {a['step']}"
        assert a["batch"] is None or a["batch"] != b["batch"]  # the ranks really saw different data
    for net in ("generator", "discriminator"):  # and every step changed the weights
        assert len({row[net] for row in r0["rows"]}) == steps + 1, net


def _final_checkpoint_job(out_dir: str) -> None:
    """2 FSDP2 ranks, a sharded `last.ckpt` every 2 steps, 3 steps: FinalCheckpoint (always on in `grn fit`) rewrites
    the folder at step 3; the weights at train end are dumped for comparison."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from grn_lightning.training.preemption import FinalCheckpoint

    strategy = _sharded_job_setup(2)
    checkpoint = ModelCheckpoint(dirpath=out_dir, every_n_train_steps=2, save_last=True, save_top_k=0)
    trainer = _quiet_trainer(out_dir, devices=2, strategy=strategy, max_steps=3, enable_checkpointing=True,
                             callbacks=[checkpoint, FinalCheckpoint(), _WeightSnapshots(out_dir, "final")])  # fmt: skip
    trainer.fit(_tiny_c2i(), torch.utils.data.DataLoader(_token_batches(), batch_size=None))


@pytest.mark.timeout(300)
def test_final_checkpoint_rewrites_a_sharded_last_ckpt_at_the_final_step(tmp_path):
    """FSDP2 (sharded folder checkpoints, every rank writes): `last.ckpt` saved at step 2 is rewritten at step 3, and
    resuming it on one rank restores the weights the two ranks ended with."""
    _run_job("final", str(tmp_path))
    last = tmp_path / "last.ckpt"
    assert sorted(p.name for p in last.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    assert torch.load(last / "meta.pt", weights_only=False)["global_step"] == 3
    _run_job("checkpoint", "resume", "1", str(tmp_path), str(last))
    ended = _load(tmp_path, "final-end-rank0.pt")["weights"]
    restored = _load(tmp_path, "resume1-start-rank0.pt")["weights"]
    for name, value in ended.items():
        torch.testing.assert_close(restored[name], value, rtol=0, atol=0, msg=f"{name} not restored from last.ckpt")


JOBS = {"checkpoint": _checkpoint_job, "generation": _generation_job, "tokenizer": _tokenizer_job,
        "final": _final_checkpoint_job}

if __name__ == "__main__":
    JOBS[sys.argv[1]](*sys.argv[2:])
