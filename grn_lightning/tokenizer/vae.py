"""Causal 3D VAE and the HBQ tokenizer built on it (SPEC §1-2).

``CausalVAE`` holds ``encoder``, ``conv1`` (1×1×1, 2C→2C, split into mu/logvar), ``conv2`` (1×1×1, C→C, decoder
input) and ``decoder`` under the released names, so released checkpoints load through ``tokenizer/convert.py``.

Two equivalent inference paths (SPEC §2): ``encode``/``decode`` run the whole clip at once (training);
``encode_chunked``/``decode_chunked`` run the release's cached causal loop (frame 0 alone, then chunks of
``temporal_stride`` frames; decoding one latent frame at a time), with memory bounded by the chunk.
"""

from __future__ import annotations

import torch
from torch import nn

from grn_lightning.hbq import HBQ, HBQOutput
from grn_lightning.tokenizer.coders import Decoder3d, Encoder3d
from grn_lightning.tokenizer.layers import CausalConv3d, patchify, unpatchify

# Sizes are a registry (DESIGN.md). "released" reproduces the released tokenizers (SPEC §2: 702,687,612
# parameters for C=16, 705,693,036 for C=64). "tiny" is for tests and CPU demos: 64×64 images -> 4×4 latents.
VAE_PRESETS: dict[str, dict] = {
    "released": dict(dim=160, dec_dim=256, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temporal_downsample=[False, True, True]),
    "tiny": dict(dim=8, dec_dim=8, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temporal_downsample=[False, True, True]),
}

PATCH = 2  # pixel patchify 2×2 (3 -> 12 channels), part of the spatial stride


class CausalVAE(nn.Module):
    """Causal 3D VAE (Wan 2.2-style, SPEC §2). An image is a 1-frame video; clips have T = 1 + 4k frames.

    Args:
        latent_channels: C, channels of the latent (16 for the C2I image tokenizer, 64 for the joint one).
        dim: encoder base width (stage widths dim·[1]+dim_mult).
        dec_dim: decoder base width (stage widths dec_dim·dim_mult reversed, first repeated).
        dim_mult: width multipliers per stage; len(dim_mult) − 1 stages down-sample space by 2.
        num_res_blocks: residual blocks per encoder stage (decoder stages get one more).
        temporal_downsample: per down-sampling stage, whether it also halves time (len(dim_mult) − 1 entries).
        dropout: dropout inside residual blocks.
        middle_attention: apply the middle attention blocks (False = the released no-op; parameters exist either way).
        spatial_downsample: per down-sampling stage, whether it halves space (None: all do, as released). A stage
            with False halves time only, so temporal_downsample must be True there.
    """

    def __init__(
        self,
        latent_channels: int = 16,
        dim: int = 160,
        dec_dim: int = 256,
        dim_mult: list[int] = [1, 2, 4, 4],  # noqa: B006  (never mutated; a list so YAML configs can spell it)
        num_res_blocks: int = 2,
        temporal_downsample: list[bool] = [False, True, True],  # noqa: B006
        dropout: float = 0.0,
        middle_attention: bool = False,
        spatial_downsample: list[bool] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("latent_channels", latent_channels), ("dim", dim), ("dec_dim", dec_dim), ("num_res_blocks", num_res_blocks)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        dim_mult, temporal_downsample = list(dim_mult), [bool(t) for t in temporal_downsample]
        if not dim_mult or any(not isinstance(m, int) or m < 1 for m in dim_mult):
            raise ValueError(f"dim_mult must be a non-empty list of positive ints, got {dim_mult!r}")
        if len(temporal_downsample) != len(dim_mult) - 1:
            raise ValueError(
                f"temporal_downsample needs one entry per down-sampling stage (len(dim_mult) - 1 = {len(dim_mult) - 1}), "
                f"got {temporal_downsample!r}"
            )
        spatial_downsample = [True] * len(temporal_downsample) if spatial_downsample is None else [bool(s) for s in spatial_downsample]
        if len(spatial_downsample) != len(temporal_downsample):
            raise ValueError(
                f"spatial_downsample needs one entry per down-sampling stage ({len(temporal_downsample)}), got {spatial_downsample!r}"
            )
        if any(not s and not t for s, t in zip(spatial_downsample, temporal_downsample)):
            raise ValueError(
                f"a down-sampling stage must halve space or time: spatial_downsample={spatial_downsample}, "
                f"temporal_downsample={temporal_downsample} (drop the stage from dim_mult instead)"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.latent_channels = latent_channels
        self.config = dict(
            latent_channels=latent_channels, dim=dim, dec_dim=dec_dim, dim_mult=dim_mult, num_res_blocks=num_res_blocks,
            temporal_downsample=temporal_downsample, dropout=dropout, middle_attention=middle_attention,
            spatial_downsample=spatial_downsample,
        )  # fmt: skip
        self.spatial_stride = PATCH * 2 ** sum(spatial_downsample)
        self.temporal_stride = 2 ** sum(temporal_downsample)
        self.encoder = Encoder3d(dim, 2 * latent_channels, dim_mult, num_res_blocks, temporal_downsample, dropout, middle_attention,
                                 spatial_downsample=spatial_downsample)  # fmt: skip
        self.conv1 = CausalConv3d(2 * latent_channels, 2 * latent_channels, 1)
        self.conv2 = CausalConv3d(latent_channels, latent_channels, 1)
        self.decoder = Decoder3d(dec_dim, latent_channels, dim_mult, num_res_blocks, temporal_downsample[::-1], dropout, middle_attention,
                                 spatial_upsample=spatial_downsample[::-1])  # fmt: skip

    # ---- shapes -------------------------------------------------------------------------------------------
    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """[C, T', h, w] of the latent of a [3, frames, height, width] clip."""
        return (self.latent_channels, 1 + (frames - 1) // self.temporal_stride, height // self.spatial_stride, width // self.spatial_stride)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected video [B, 3, T, H, W] (an image is T = 1), got shape {tuple(x.shape)}")
        t, h, w = x.shape[2:]
        if (t - 1) % self.temporal_stride:
            raise ValueError(f"frame count must be 1 + {self.temporal_stride}k, got T = {t}")
        if h % self.spatial_stride or w % self.spatial_stride:
            raise ValueError(f"height and width must be multiples of {self.spatial_stride}, got {h}x{w}")

    # ---- full-sequence path (training) ----------------------------------------------------------------------
    def encode_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of x in [-1, 1]; the release uses only mu (KL weight 0)."""
        self._check_input(x)
        mu, logvar = self.conv1(self.encoder(patchify(x, PATCH))).chunk(2, dim=1)
        return mu, logvar

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,T,H,W] in [-1,1] -> mu [B, C, 1+(T−1)/4, H/16, W/16]."""
        return self.encode_moments(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, C, T', h, w] -> x̂ [B, 3, 1+4(T'−1), 16h, 16w]."""
        # HBQ hands over fp32 values; a model cast to bf16 (no autocast) needs its own dtype here
        return unpatchify(self.decoder(self.conv2(z.to(self.conv2.weight.dtype))), PATCH)

    # ---- cached causal path (inference) -----------------------------------------------------------------------
    def encode_chunked(self, x: torch.Tensor) -> torch.Tensor:
        """Same result as :meth:`encode`, computed frame 0 first then ``temporal_stride`` frames at a time."""
        self._check_input(x)
        x = patchify(x, PATCH)
        state: dict = {}
        s = self.temporal_stride
        outs = [self.encoder(x[:, :, :1], state)]
        outs += [self.encoder(x[:, :, t : t + s], state) for t in range(1, x.shape[2], s)]
        return self.conv1(torch.cat(outs, dim=2)).chunk(2, dim=1)[0]

    def decode_chunked(self, z: torch.Tensor) -> torch.Tensor:
        """Same result as :meth:`decode`, one latent frame at a time with per-conv caches."""
        z = self.conv2(z.to(self.conv2.weight.dtype))
        state: dict = {}
        outs = [unpatchify(self.decoder(z[:, :, t : t + 1], state), PATCH) for t in range(z.shape[2])]
        return torch.cat(outs, dim=2)

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts: encoder, decoder, other (conv1 + conv2), total."""
        enc = sum(p.numel() for p in self.encoder.parameters())
        dec = sum(p.numel() for p in self.decoder.parameters())
        other = sum(p.numel() for p in [*self.conv1.parameters(), *self.conv2.parameters()])
        return {"encoder": enc, "decoder": dec, "other": other, "total": enc + dec + other}


class HBQTokenizer(nn.Module):
    """Causal 3D VAE + HBQ (SPEC §1-2): x -> mu -> tanh -> HBQ -> decoder -> x̂.

    Args:
        latent_channels: C (16: C2I image tokenizer; 64: joint image/video tokenizer).
        num_rounds: M, HBQ rounds per latent channel (release 4); ≥ 100 means continuous.
        continuous: skip quantization and decode F = tanh(mu) (paper Table 2 "w/o quant").
        preset: architecture size, one of VAE_PRESETS ("released", "tiny").
        dim: override the preset's encoder base width.
        dec_dim: override the preset's decoder base width.
        dim_mult: override the preset's width multipliers.
        num_res_blocks: override the preset's residual blocks per encoder stage.
        temporal_downsample: override the preset's per-stage temporal down-sampling flags.
        spatial_downsample: per-stage spatial down-sampling flags (None: every stage, as released); a False stage
            halves time only, e.g. stride 4 in space and 4 in time with dim_mult [1, 2, 2].
        dropout: dropout inside residual blocks.
        middle_attention: really apply the middle attention (the release's is a no-op).
        chunked_inference: let tokenize/detokenize use the cached causal loop (bounded memory for long clips).
    """

    def __init__(
        self,
        latent_channels: int = 16,
        num_rounds: int = 4,
        continuous: bool = False,
        preset: str = "released",
        dim: int | None = None,
        dec_dim: int | None = None,
        dim_mult: list[int] | None = None,
        num_res_blocks: int | None = None,
        temporal_downsample: list[bool] | None = None,
        spatial_downsample: list[bool] | None = None,
        dropout: float = 0.0,
        middle_attention: bool = False,
        chunked_inference: bool = True,
    ) -> None:
        super().__init__()
        if preset not in VAE_PRESETS:
            raise ValueError(f"preset must be one of {sorted(VAE_PRESETS)}, got {preset!r}")
        cfg = dict(VAE_PRESETS[preset])
        overrides = dict(dim=dim, dec_dim=dec_dim, dim_mult=dim_mult, num_res_blocks=num_res_blocks, temporal_downsample=temporal_downsample,
                         spatial_downsample=spatial_downsample)  # fmt: skip
        cfg.update({k: v for k, v in overrides.items() if v is not None})
        self.vae = CausalVAE(latent_channels=latent_channels, dropout=dropout, middle_attention=middle_attention, **cfg)
        self.quantizer = HBQ(num_rounds=num_rounds, continuous=continuous)
        self.latent_channels, self.num_rounds = latent_channels, num_rounds
        self.chunked_inference = chunked_inference

    @property
    def continuous(self) -> bool:
        return self.quantizer.continuous

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, HBQOutput]:
        """Training path: (x̂, HBQOutput); the decoder consumes the STE values."""
        q = self.quantizer(self.vae.encode(x))
        return self.vae.decode(q.values), q

    def encode_mu(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode_chunked(x) if self.chunked_inference and x.shape[2] > 1 else self.vae.encode(x)

    def decode_values(self, values: torch.Tensor) -> torch.Tensor:
        """Decode F̂ (or F) [B, C, T', h, w] to pixels."""
        return self.vae.decode_chunked(values) if self.chunked_inference and values.shape[2] > 1 else self.vae.decode(values)

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,T,H,W] in [-1,1] -> int64 index labels [B, C, T', h, w] (round 1 = MSB)."""
        return self.quantizer.tokenize(self.encode_mu(x))

    @torch.no_grad()
    def detokenize(self, index_labels: torch.Tensor) -> torch.Tensor:
        """Index labels [B, C, T', h, w] -> x̂ [B, 3, T, H, W]."""
        return self.decode_values(self.quantizer.index_labels_to_values(index_labels))

    @torch.no_grad()
    def detokenize_bits(self, bit_labels: torch.Tensor) -> torch.Tensor:
        """Round-major bit labels [B, M·C, T', h, w] -> x̂."""
        return self.decode_values(self.quantizer.bit_labels_to_values(bit_labels))

    def num_parameters(self) -> dict[str, int]:
        return self.vae.num_parameters()
