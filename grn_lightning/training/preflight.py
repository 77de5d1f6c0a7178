"""Before `grn fit` starts: the training shards must carry what the stage learns from.

Unlabelled shards reached C2I as class -1 and failed inside the first step without naming a shard; shards without
captions trained T2I on empty prompts without a word (issue 15). The first records of the first training shard are
read here (a few KB, before any model work) and a stage whose labels are missing stops with the shard and the fix.
"""

from __future__ import annotations

import itertools

import lightning as L

from grn_lightning.errors import GRNUserError

RECORDS_READ = 16  # enough to see a labelled shard's labels; a shard labelled only in part fails later, per batch


def _first_records(urls: list[str]) -> list[dict]:
    from grn_lightning.data.streams import SkipCounter, iterate_records

    return list(itertools.islice(iterate_records(urls[:1], SkipCounter()), RECORDS_READ))


def _labels(record: dict, caption_source: str) -> tuple[int, str]:
    """(class id or -1, caption or "") as the training reader reads them."""
    from grn_lightning.data.records import record_labels

    try:
        return record_labels(record, caption_source)
    except Exception:  # noqa: BLE001  (a broken record is the reader's business: it is skipped and counted there)
        return -1, ""


def required_labels(module: L.LightningModule) -> str | None:
    """"cls" for C2I, "caption" for T2I/T2V (unless the run allows uncaptioned shards), else None."""
    from grn_lightning.generator.c2i.module import C2IModule
    from grn_lightning.generator.t2x.module import T2XModule

    if isinstance(module, C2IModule):
        return "cls"
    if isinstance(module, T2XModule):
        return "caption"
    return None


def check_training_labels(module: L.LightningModule, datamodule: L.LightningDataModule, allow_uncaptioned: bool) -> None:
    """GRNUserError when none of the first records of a training shard set carries the stage's labels."""
    need = required_labels(module)
    hparams = getattr(datamodule, "hparams", {})
    if need is None or (need == "caption" and (allow_uncaptioned or hparams.get("kind") == "tokens")):
        return  # T2X token shards may carry cached text states instead of captions
    from grn_lightning.data.splits import expand_shards

    for option in ("train_shards", "train_video_shards"):
        if hparams.get(option) is None:
            continue
        urls = expand_shards(hparams[option])
        records = _first_records(urls)
        if not records:
            continue  # an empty shard is the data module's error, with its own message
        labels = [_labels(record, hparams.get("caption_source", "txt")) for record in records]
        if need == "cls" and all(cls < 0 for cls, _ in labels):
            raise GRNUserError(
                f"data.{option}: the first {len(records)} records of {urls[0]} carry no class (a `cls` member or a "
                "json \"cls\"), and class-to-image training needs one per image. Write labelled shards with "
                "`python tools/make_shards.py --class-folder <root with one folder per class> ...`, or a --manifest "
                "whose lines hold \"cls\"."
            )
        if need == "caption" and not any(caption.strip() for _, caption in labels):
            raise GRNUserError(
                f"data.{option}: the first {len(records)} records of {urls[0]} carry no caption, and text-to-image/"
                "video training would learn from empty prompts. Write captions into the shards (make_shards.py "
                "--image-folder with <stem>.txt sidecars, or a --manifest with \"caption\"), or pass "
                "`--allow_uncaptioned true` to train on them on purpose."
            )
