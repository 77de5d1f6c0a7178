#!/usr/bin/env bash
# `make demo`: every stage end to end on the real demo shards, on CPU, in minutes.
# Environment (set by the Makefile): GRN_DEMO_DATA (demo shards), OUT (outputs), BIN (venv bin folder).
set -euo pipefail
: "${GRN_DEMO_DATA:=data/demo}" "${OUT:=outputs}" "${BIN:=.venv/bin}"
export GRN_DEMO_DATA
mkdir -p "$OUT"

echo "== data: one batch of each kind from the demo shards"
"$BIN/python" - <<'PY'
import os
import grn_lightning  # noqa: F401
from grn_lightning.data.demo import build_demo_data
from grn_lightning.data.datamodule import GRNDataModule

shards = build_demo_data(os.environ["GRN_DEMO_DATA"])
dm = GRNDataModule(kind="mixed", train_shards=shards["images-train"], train_video_shards=shards["videos-train"],
                   resolution=64, num_frames=17, batch_size=8, video_batch_size=2, num_workers=2, video_ratio=0.5)
dm.setup("fit")
batches = iter(dm.train_dataloader())
for _ in range(4):
    batch = dm.on_after_batch_transfer(next(batches), 0)
    print(f"  pixels {tuple(batch['pixels'].shape)}  classes {batch['cls'].tolist()}  '{batch['caption'][0]}'")
PY
