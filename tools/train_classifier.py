#!/usr/bin/env python
"""Train the small classifier that judges generated samples (grn_lightning/eval/classifier.py) on real train images.

    python tools/train_classifier.py --train "data/fashion_mnist/shards/images-train-{000000..000010}.tar" \
        --test "data/fashion_mnist/shards/images-test-{000000..000001}.tar" --out outputs/repro/classifier.pt

Half of each batch is shown as a moving-clip frame (item shrunk and shifted, `shrink_and_shift`) so the same network
judges images and clip frames. Reports (and saves with the weights, as JSON next to them): test accuracy on real
images and on shrunk/shifted test items, and the Fréchet floor: classifier features of real train vs real test images.
"""

from __future__ import annotations

import argparse
import json
import time

import grn_lightning  # noqa: F401  (torchvision compatibility first)
import numpy as np
import torch

from grn_lightning.data.fashion_mnist import ITEM_SIZE
from grn_lightning.eval.classifier import SmallClassifier, save_classifier, shrink_and_shift
from grn_lightning.eval.real_media import iterate_real
from grn_lightning.eval.sample_judges import features_frechet


def evaluate(model: SmallClassifier, shards: str, limit: int | None, item: int, canvas_item: int,
             device: torch.device) -> tuple[dict, np.ndarray]:  # fmt: skip
    model.eval()
    hits, shifted_hits, features = [], [], []
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for batch in iterate_real(shards, limit=limit):
            images = batch["pixels"][:, :, 0].to(device)
            logits, feats = model(images)
            hits += (logits.argmax(1).cpu() == batch["cls"]).tolist()
            features.append(feats.cpu().numpy())
            shifted = model(shrink_and_shift(images, item, canvas_item, generator))[0]
            shifted_hits += (shifted.argmax(1).cpu() == batch["cls"]).tolist()
    return {"accuracy": float(np.mean(hits)), "shifted_accuracy": float(np.mean(shifted_hits)), "count": len(hits)}, np.concatenate(features)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="real training image shards (brace pattern)")
    parser.add_argument("--test", required=True, help="real test image shards (brace pattern)")
    parser.add_argument("--out", required=True, help="output .pt (metrics also go to <out>.json)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--item", type=int, default=ITEM_SIZE,
                        help=f"item size in clip frames (Moving Fashion-MNIST: {ITEM_SIZE})")  # fmt: skip
    parser.add_argument("--canvas-item", type=int, default=28, help="item size in the training images (28 in 32)")
    parser.add_argument("--floor-samples", type=int, default=10000, help="train images in the Fréchet floor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (0: torch's default). A judge trained on 1 and one on 2 threads differ in "
                             "floating-point order and read generated samples up to 0.05 apart: pin it so that every "
                             "run of a recipe gets the same judge")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu or cuda (make repro REPRO_SETTING=gpu)")
    parser.add_argument("--num-workers", type=int, default=1,
                        help="loader processes (a GPU step of this small network waits on one: use several there)")
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")

    from grn_lightning.data.datamodule import GRNDataModule

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()
    data = GRNDataModule(kind="image", train_shards=args.train, resolution=32, batch_size=args.batch_size,
                         num_workers=args.num_workers, shuffle_buffer=2000, random_flip=True, seed=args.seed)  # fmt: skip
    data.setup("fit")
    device = torch.device(args.device)
    model = SmallClassifier(args.num_classes, args.width).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(args.seed)
    model.train()
    for step, batch in enumerate(data.train_dataloader()):
        if step >= args.steps:
            break
        batch = data.on_after_batch_transfer(batch, 0)
        images, labels = batch["pixels"][:, :, 0].to(device), batch["cls"].to(device)
        half = images.shape[0] // 2
        images = torch.cat([images[:half], shrink_and_shift(images[half:], args.item, args.canvas_item, generator)])
        loss = torch.nn.functional.cross_entropy(model(images)[0], labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    test, test_features = evaluate(model, args.test, None, args.item, args.canvas_item, device)
    train, train_features = evaluate(model, args.train, args.floor_samples, args.item, args.canvas_item, device)
    metrics = {
        "test_accuracy": test["accuracy"], "test_shifted_accuracy": test["shifted_accuracy"], "test_count": test["count"],
        "train_accuracy": train["accuracy"], "frechet_floor_train_vs_test": features_frechet(train_features, test_features),
        "floor_train_count": train["count"], "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
        "threads": torch.get_num_threads(),
        "train_seconds": round(time.time() - started, 1),
    }  # fmt: skip
    save_classifier(args.out, model.cpu(), metrics)
    with open(args.out + ".json", "w") as handle:
        json.dump(metrics, handle, indent=1)
    print(json.dumps(metrics, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
