"""3D rotary positions of the T2I/T2V/I2V GRN (SPEC §5): (time, height, width) per token.

Layout of one head (head_dim 128 → 64 rotary pairs):
- pairs are split over the axes as time n_t = 64 // 3 = 21, height n_h = 21, width n_w = 64 − 2·21 = 22, in that
  order along the pair index; within an axis, pair j rotates with inv_freq_j = θ^(−j/n_axis), θ = 10000.
- pair j acts on the *adjacent* features (x[2j], x[2j+1]) (interleaved layout; the released tables are applied
  that way, so released checkpoints need it; the C2I model's `layers.apply_rope` uses rotate-half instead).

Positions (all integers):
- text token k: (k, 0, 0), k < 512;  the ratio token: (512, 0, 0);
- visual frame f, row i, column j: (600 + f, round(i·span_h/ph), round(j·span_w/pw)); I2V puts the clean first
  frame at f = 0 and the noisy (predicted) frames at f + 1;
- span_h, span_w normalise every grid to one canvas (NaViT-like): canvas height 225 rows at the extreme aspect
  ratio h/w = 3 (so area 225·75); for the bucket's template ratio r (data/buckets.py; never the rounded grid's),
  span_w = sqrt(area / r), span_h = r·span_w, both truncated to integers as the release does
  (`integer_spans=False` keeps the fractions, SPEC's literal formula).
The rounding of i·span_h/ph is done in float32 like the release so positions match it bit for bit.
"""

from __future__ import annotations

import math

import torch

from grn_lightning.data.buckets import nearest_aspect_ratio

TEXT_MAX_LEN = 512  # umT5 caption tokens per sample (release text_maxlen)
RATIO_TIME = 512  # time position of the ratio token
VISUAL_TIME = 600  # time position of the first latent frame (the release reserves 0..599 for 1-D tokens)
CANVAS_HEIGHT = 225  # rows of the release's height table (1800 // 8)
CANVAS_MAX_RATIO = 3.0  # the extreme h/w the canvas is sized for


def rope3d_pairs(head_dim: int) -> tuple[int, int, int]:
    """(time, height, width) rotary pairs of a head: 21/21/22 for head_dim 128."""
    if head_dim % 2 != 0 or head_dim < 6:
        raise ValueError(f"3D RoPE needs an even head_dim >= 6, got {head_dim}")
    pairs = head_dim // 2
    former = pairs // 3
    return former, former, pairs - 2 * former


def rope3d_frequencies(
    head_dim: int, theta: float = 10000.0, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inv_freq float32 [head_dim/2], axis int64 [head_dim/2]): the frequency and the axis (0 t, 1 h, 2 w) of every
    rotary pair, in pair order."""
    freqs, axes = [], []
    for axis, n in enumerate(rope3d_pairs(head_dim)):
        # 1 / θ^(j/n) in float32, the release's arithmetic (a float64 table would differ in the last bits)
        freqs.append(1.0 / (theta ** (torch.arange(n, device=device).float() / n)))
        axes.append(torch.full((n,), axis, dtype=torch.long, device=device))
    return torch.cat(freqs), torch.cat(axes)


def rope3d_angles(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """int [..., 3] (t, h, w) positions → float32 [..., head_dim/2] rotation angles pos[axis_j] · inv_freq_j."""
    if positions.shape[-1] != 3:
        raise ValueError(f"positions must end in (t, h, w), got shape {tuple(positions.shape)}")
    inv_freq, axis = rope3d_frequencies(head_dim, theta, positions.device)
    return positions.float()[..., axis] * inv_freq


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., L, head_dim] by angles a broadcastable to [..., L, head_dim/2], given as cos a, sin a (once per
    forward: `layers.rotary_cos_sin`); pair j = (x[2j], x[2j+1]).

    out_2j = x_2j cos a_j − x_2j+1 sin a_j,  out_2j+1 = x_2j+1 cos a_j + x_2j sin a_j, in float32, cast back.
    """
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.flatten(-2).to(x.dtype)


def canvas_spans(
    aspect_ratio: float,
    canvas_height: int = CANVAS_HEIGHT,
    max_ratio: float = CANVAS_MAX_RATIO,
    integer_spans: bool = True,
) -> tuple[float, float]:
    """(span_h, span_w) of the canvas for aspect ratio r = h/w: span_w = sqrt(area / r), span_h = r·span_w with
    area = canvas_height · canvas_height / max_ratio (225·75). Ratios beyond [1/max_ratio, max_ratio] are refused:
    their spans would leave the canvas the release's tables cover."""
    r = float(aspect_ratio)
    if not (1.0 / max_ratio - 1e-9 <= r <= max_ratio + 1e-9):
        raise ValueError(f"aspect ratio h/w={r} is outside the canvas range [1/{max_ratio:g}, {max_ratio:g}]")
    area = canvas_height * (canvas_height / max_ratio)
    span_w = math.sqrt(area / r)
    span_h = r * span_w
    if integer_spans:
        return float(int(span_h)), float(int(span_w))
    return span_h, span_w


def grid_axis_positions(n: int, span: float) -> torch.Tensor:
    """int64 [n]: round(i · span / n) for i < n, in float32 with round-half-to-even (the release's arithmetic)."""
    return (torch.arange(n, dtype=torch.float32) * (span / n)).round().long()


def visual_positions(
    frames: int,
    height: int,
    width: int,
    aspect_ratio: float | None = None,
    time_offset: int = 0,
    integer_spans: bool = True,
) -> torch.Tensor:
    """int64 [frames·height·width, 3] positions of a latent grid, tokens in (t, h, w) order.

    aspect_ratio: the bucket's template h/w used for the canvas (SPEC §5); None: the template ratio nearest to the
        grid's height / width (`nearest_aspect_ratio`), never the grid's own ratio, which for the 3:1 bucket at
        0.06M (28 x 9) lies outside the canvas.
    time_offset: added to the frame index (I2V noisy frames: 1), on top of VISUAL_TIME.
    """
    if min(frames, height, width) < 1:
        raise ValueError(f"grid (t, h, w) = {(frames, height, width)} must be positive")
    if aspect_ratio is None:
        aspect_ratio = nearest_aspect_ratio(height, width)
    span_h, span_w = canvas_spans(aspect_ratio, integer_spans=integer_spans)
    if height > span_h or width > span_w:
        # denser than the canvas: neighbouring rows/columns would share positions (the release asserts this too)
        raise ValueError(f"grid {height}x{width} exceeds the canvas span {span_h:g}x{span_w:g} at this aspect ratio")
    t = torch.arange(frames) + VISUAL_TIME + time_offset
    h = grid_axis_positions(height, span_h)
    w = grid_axis_positions(width, span_w)
    grid = torch.stack(torch.meshgrid(t, h, w, indexing="ij"), dim=-1)
    return grid.reshape(-1, 3)


def text_positions(length: int) -> torch.Tensor:
    """int64 [length, 3]: caption token k at (k, 0, 0)."""
    if not 0 <= length <= TEXT_MAX_LEN:
        raise ValueError(f"text length {length} must be in 0..{TEXT_MAX_LEN}")
    pos = torch.zeros(length, 3, dtype=torch.long)
    pos[:, 0] = torch.arange(length)
    return pos


def ratio_position() -> torch.Tensor:
    """int64 [1, 3]: the ratio token at (512, 0, 0)."""
    return torch.tensor([[RATIO_TIME, 0, 0]], dtype=torch.long)
