"""Frozen umT5 text encoder for the T2I / T2V / I2V generator (SPEC section 5).

SPEC section 5: "Text: umT5-XXL last hidden states (4096-d) -> linear -> D; captions prefixed with a task tag
(`<T2I>`, `<T2V>`, `<I2V>`)", at most 512 text tokens. This file holds the frozen encoder half (caption -> one
[L, 4096] fp32 tensor per caption); the trainable linear projection to D belongs to the generator.

transformers is an optional dependency (`pip install 'grn-lightning[text]'`) and is imported only inside functions
(DESIGN.md: no import-time work); weights are only ever read from a local folder (no downloads).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

__all__ = ["TASK_TAGS", "UMT5TextEncoder", "tag_caption"]

TASK_TAGS: dict[str, str] = {"t2i": "<T2I>", "t2v": "<T2V>", "i2v": "<I2V>"}
_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tag_caption(caption: str, task: str) -> str:
    """Prefix ``caption`` with the tag of ``task`` ("t2i" -> "<T2I> caption"); an empty caption gives the tag."""
    if task not in TASK_TAGS:
        raise ValueError(f"unknown task {task!r}; allowed tasks: {', '.join(TASK_TAGS)}")
    return f"{TASK_TAGS[task]} {caption}".strip()


def _transformers():
    try:
        import transformers
    except ImportError as err:  # optional extra: say how to get it instead of a bare ModuleNotFoundError
        raise ImportError("the text encoder needs transformers: pip install 'grn-lightning[text]'") from err
    return transformers


def _dtype_kwarg(transformers, dtype: torch.dtype) -> dict:
    # transformers 4.56 renamed from_pretrained's `torch_dtype` to `dtype` (the old name is deprecated).
    from packaging.version import Version

    name = "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"
    return {name: dtype}


def _load_tokenizer(transformers, folder: Path):
    # transformers 5 maps model_type "umt5" to its `tokenizers` backend and ignores a tokenizer_config.json that
    # declares ByT5Tokenizer (the byte-level tokenizer of random_init folders saved by save_pretrained), so honour
    # that declaration here; the real umT5-XXL folder goes through AutoTokenizer.
    config_file = folder / "tokenizer_config.json"
    declared = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.exists() else None
    if declared == "ByT5Tokenizer":
        return transformers.ByT5Tokenizer.from_pretrained(folder, local_files_only=True)
    return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)


class UMT5TextEncoder(nn.Module):
    """Frozen umT5 encoder: captions -> per-caption last hidden states [L_i, width] (float32).

    Args:
        path: the umT5-XXL folder in Hugging Face layout (config.json, weights, tokenizer files), or a folder that
            holds it as ``umt5-xxl`` (e.g. the ``$GRN_WEIGHTS`` directory). Resolved with
            ``grn_lightning.weights.resolve_weight("umt5_xxl", path)``; nothing is ever downloaded: a missing folder
            raises ``MissingWeightsError`` naming the places searched and the fetch command. Exclusive with
            ``random_init``.
        random_init: ``UMT5Config`` keyword arguments (e.g. ``{"d_model": 64, "d_kv": 16, "d_ff": 128,
            "num_layers": 2, "num_heads": 4, "vocab_size": 384}``) to build a RANDOM-INITIALISED umT5 encoder with
            the byte-level ``ByT5Tokenizer`` (no vocabulary file needed; vocab_size must be >= 384). Same structure
            as umT5, no trained weights: for tests and the CPU demo only. Exclusive with ``path``.
        seed: seed of the ``random_init`` weights (two constructions with one seed are identical; the global RNG
            is left untouched).
        max_length: captions (tag included) are truncated to this many tokens, EOS kept (SPEC: <= 512).
        dtype: compute dtype of the encoder, one of "float32", "bfloat16", "float16" (umT5 is known to overflow
            in float16; prefer bfloat16 on GPU). Features are returned as float32 whatever the compute dtype.
        cache_size: LRU cache of tagged caption -> CPU float32 features, so repeated captions (the empty caption of
            classifier-free guidance, small datasets) are encoded once; 0 disables it.

    The encoder is frozen (``requires_grad`` False) and always in eval mode (``train()`` is a no-op), so Lightning
    cannot turn dropout on. Its weights are ordinary submodule parameters: a LightningModule that must keep them
    out of optimisers / checkpoints / FSDP units should hold this module unregistered (as for the frozen tokenizer).
    """

    def __init__(
        self,
        path: str | None = None,
        random_init: dict | None = None,
        seed: int = 0,
        max_length: int = 512,
        dtype: str = "bfloat16",
        cache_size: int = 1024,
    ) -> None:
        super().__init__()
        if (path is None) == (random_init is None):
            raise ValueError("UMT5TextEncoder: give exactly one of `path` (umT5 folder) or `random_init` (config)")
        if dtype not in _DTYPES:
            raise ValueError(f"UMT5TextEncoder: dtype={dtype!r}; allowed values: {', '.join(_DTYPES)}")
        if max_length < 1:
            raise ValueError(f"UMT5TextEncoder: max_length must be >= 1, got {max_length}")
        if cache_size < 0:
            raise ValueError(f"UMT5TextEncoder: cache_size must be >= 0, got {cache_size}")
        self.max_length, self.cache_size = max_length, cache_size
        transformers = _transformers()
        if random_init is not None:
            with torch.random.fork_rng(devices=[]):  # deterministic init without disturbing the caller's RNG
                torch.manual_seed(seed)
                self.encoder = transformers.UMT5EncoderModel(transformers.UMT5Config(**random_init))
            self.encoder.to(_DTYPES[dtype])
            self.tokenizer = transformers.ByT5Tokenizer()
        else:
            from grn_lightning.weights import resolve_weight

            folder = resolve_weight("umt5_xxl", path)
            self.encoder = transformers.UMT5EncoderModel.from_pretrained(
                folder, local_files_only=True, **_dtype_kwarg(transformers, _DTYPES[dtype])
            )
            self.tokenizer = _load_tokenizer(transformers, folder)
        self.encoder.requires_grad_(False)
        self.eval()
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def width(self) -> int:
        """Hidden size of the encoder (4096 for umT5-XXL)."""
        return int(self.encoder.config.d_model)

    def train(self, mode: bool = True) -> UMT5TextEncoder:
        # Frozen feature extractor: stay in eval mode whatever Lightning asks (dropout would make features random).
        return super().train(False)

    @torch.no_grad()
    def encode(self, captions: list[str], task: str | list[str] = "t2i") -> list[torch.Tensor]:
        """Encode captions: one float32 tensor [L_i, width] per caption (real tokens only, EOS included).

        Args:
            captions: raw captions (without task tag).
            task: one task for all captions, or one per caption ("t2i", "t2v", "i2v").

        Returns:
            list of [L_i, width] float32 tensors on the encoder's device, 1 <= L_i <= max_length.
        """
        tasks = [task] * len(captions) if isinstance(task, str) else list(task)
        if len(tasks) != len(captions):
            raise ValueError(f"encode: {len(tasks)} tasks for {len(captions)} captions")
        tagged = [tag_caption(c, t) for c, t in zip(captions, tasks)]
        device = next(self.encoder.parameters()).device
        found: dict[str, torch.Tensor] = {}
        for text in tagged:
            if text in self._cache:
                self._cache.move_to_end(text)  # LRU: a hit makes the entry most recent
                found[text] = self._cache[text]
        todo = list(dict.fromkeys(t for t in tagged if t not in found))  # unique, in order: encode duplicates once
        if todo:
            batch = self.tokenizer(todo, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            # Right padding (T5 convention) + attention mask: the real tokens are the first L_i positions and
            # never attend to padding, so a caption's features do not depend on its batch mates. The lengths are
            # read on the host, before the copy (reading them off the device would wait for the GPU).
            lengths = batch.attention_mask.sum(dim=1).tolist()
            batch = batch.to(device)
            hidden = self.encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
            for text, row, n in zip(todo, hidden, lengths):
                found[text] = row[:n].float()
                if self.cache_size:  # a copy: a view would keep the whole padded batch alive in the cache
                    self._cache[text] = found[text].to("cpu", copy=True)
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        # Copies: a caller editing a returned tensor in place must not corrupt the cache or another caption.
        return [found[text].to(device, copy=True) for text in tagged]

    def shard(self, mesh) -> None:
        """Shard the encoder's weights over a data-parallel FSDP2 mesh (`parallelize.shard_frozen_encoder`). The
        caption cache is switched off: a rank whose captions all hit the cache would skip the forward, and the
        other ranks would wait for its all-gathers forever."""
        from grn_lightning.generator import parallelize

        self.cache_size = 0
        self.clear_cache()
        parallelize.shard_frozen_encoder(self.encoder, self.encoder.encoder.block, mesh)

    def clear_cache(self) -> None:
        """Drop every cached caption (e.g. after replacing the encoder's weights)."""
        self._cache.clear()
