"""Text-conditioned sampling (SPEC §6 for T2I / T2V / I2V): `PromptConditions` rows assembled on the device equal
the training packing of each sample alone, without reading the conditions back to the host; region refinement of
images and clips (`T2XModule.edit_media`, `grn predict --data.source --data.mask`)."""

from __future__ import annotations

import pytest
import torch
from tests.test_c2i_module import real_images, tokenizer  # noqa: F401  (tokenizer: the C = 16 fixture)
from tests.test_t2x_module import GRID, tiny_module

from grn_lightning.generator.sampling.guidance import guided_logits
from grn_lightning.generator.t2x.conditions import PromptConditions
from grn_lightning.generator.t2x.packing import T2XSample, pack_rows

pytestmark = pytest.mark.usefixtures("one_thread")


def _alone(model, state, text, ratio, clean_first=None):
    """One sample packed as in training (no padding, no mask) through the transformer: the reference logits."""
    sample = T2XSample(state, text, ratio, clean_first=clean_first)
    inputs = pack_rows([[sample]]).model_inputs()
    inputs["segment_ids"] = None
    return model(**inputs)[0, : sample.num_visual]


def test_i2v_rows_equal_each_sample_packed_alone(monkeypatch):
    """I2V: the conditional rows carry a clean first frame and a SHORT prompt, the unconditional row no frame and a
    LONGER negative prompt (the case where the longest text and the clean frame come from different templates)."""
    torch.manual_seed(0)
    module = tiny_module()
    torch.nn.init.normal_(module.model.head.proj.weight, std=0.5)
    texts = module.text_encoder.encode(["a cat", "waves", "blurry, low quality, distorted, watermark"], "i2v")
    assert texts[2].shape[0] > max(texts[0].shape[0], texts[1].shape[0])
    g = module.model.groups
    gen = torch.Generator().manual_seed(1)
    first = torch.randint(0, 2, (2, GRID, GRID, g), generator=gen)
    model = PromptConditions(module.model, texts, (2, GRID, GRID), clean_first=first, guide_first_frame=True)
    state = torch.randint(0, 2, (4, 2 * GRID * GRID, g), generator=gen)
    conditions, ratio = torch.tensor([1, 2, 0, 2]), torch.tensor([0.2, 0.2, 0.7, 0.9])

    def no_read_back(*args, **kwargs):
        raise AssertionError("PromptConditions read a tensor back to the host")

    with torch.no_grad():
        monkeypatch.setattr(torch.Tensor, "tolist", no_read_back)
        monkeypatch.setattr(torch.Tensor, "item", no_read_back)
        batched = model(state, conditions, ratio)
        monkeypatch.undo()
        for i, c in enumerate([1, 2, 0, 2]):
            grid_state = state[i].view(2, GRID, GRID, g)
            clean = None if c == 2 else first[c]
            expected = _alone(module.model, grid_state, texts[c], float(ratio[i]), clean).reshape(batched[i].shape)
            torch.testing.assert_close(batched[i], expected, atol=1e-5, rtol=1e-5)
    assert model.padded and model.null_class == 2


@pytest.mark.parametrize("every_row", [False, True])
def test_text_only_i2v_guidance_keeps_each_requests_first_frame_in_its_unconditional_row(every_row):
    """`guide_first_frame=False` (the default): the unconditional branch of request c is the empty caption WITH c's
    first frame, so ℓ = ℓ_u + w·(ℓ_c − ℓ_u) is worked from two samples packed alone; True keeps one frameless null
    row."""
    torch.manual_seed(0)
    module = tiny_module()
    torch.nn.init.normal_(module.model.head.proj.weight, std=0.5)
    texts = module.text_encoder.encode(["a cat", "waves", ""], "i2v")
    g = module.model.groups
    gen = torch.Generator().manual_seed(2)
    first = torch.randint(0, 2, (2, GRID, GRID, g), generator=gen)
    model = PromptConditions(module.model, texts, (2, GRID, GRID), clean_first=first)
    frameless = PromptConditions(module.model, texts, (2, GRID, GRID), clean_first=first, guide_first_frame=True)
    requests = torch.tensor([1, 0])
    assert model.unconditional_of(requests).tolist() == [4, 3]  # after the 3 texts: request 0 → 3, request 1 → 4
    assert frameless.unconditional_of(requests).tolist() == [2, 2]
    state = torch.randint(0, 2, (2, 2 * GRID * GRID, g), generator=gen)
    ratio = torch.tensor([0.3, 0.6])
    with torch.no_grad():
        _, guided = guided_logits(model, state, requests, ratio, model.null_class, 3.0, torch.tensor([True, True]),
                                  every_row=every_row)  # fmt: skip
        for i, c in enumerate(requests.tolist()):
            grid_state = state[i].view(2, GRID, GRID, g)
            cond = _alone(module.model, grid_state, texts[c], float(ratio[i]), first[c])
            uncond = _alone(module.model, grid_state, texts[2], float(ratio[i]), first[c])
            expected = (uncond + 3.0 * (cond - uncond)).reshape(guided[i].shape)
            torch.testing.assert_close(guided[i], expected, atol=1e-4, rtol=1e-4)


# ---- region refinement ("sketch and revise") for T2I / T2V -----------------------------------------------------------
def _edit(module, tokenizer, monkeypatch, pixels, mask, captions, rounds):
    """Run `edit_media`, capturing the labels it decodes; returns (edited labels, source labels)."""
    captured = {}
    monkeypatch.setattr(module, "decode", lambda tokens, grid: captured.update(tokens=tokens, grid=grid) or tokens)
    module.edit_media(captions, pixels, mask, seeds=list(range(len(captions))), rounds=rounds)
    source = module.layout.to_tokens(tokenizer.tokenize(pixels))
    return captured["tokens"], source, captured["grid"]


def test_t2i_region_edit_keeps_every_unmasked_token(tokenizer, monkeypatch):
    """64² photos on a 4×4 token grid (stride 16). Pixel masks → token regions by hand: image 0 regenerates its top
    half (pixel rows 0–31 → token rows 0–1: tokens 0–7), image 1 the pixel square 20–43 (tokens rows/cols 1–2:
    tokens 5, 6, 9, 10). CFG (T2X default w 4) and 2 rounds: every other token equals the source bit for bit."""
    torch.manual_seed(0)
    module = tiny_module(tokenizer)
    torch.nn.init.normal_(module.ema.head.proj.weight, std=0.5)
    pixels = real_images()[:2]
    mask = torch.zeros(2, 64, 64, dtype=torch.bool)
    mask[0, :32] = True
    mask[1, 20:44, 20:44] = True
    edited, source, grid = _edit(module, tokenizer, monkeypatch, pixels, mask, ["a red apple", "a blue sky"], rounds=2)
    assert grid == (1, GRID, GRID) and edited.shape == source.shape
    region = torch.zeros(2, 16, dtype=torch.bool)
    region[0, :8] = True
    region[1, [5, 6, 9, 10]] = True
    assert torch.equal(edited[~region], source[~region])
    assert not torch.equal(edited[region], source[region])


def test_t2v_region_edit_on_a_clip_and_steps_of_the_rounds(tokenizer, monkeypatch):
    """A 5-frame clip (2 latent frames): the mask applies to every latent frame. Steps: round 1 runs the 6 cosine
    steps; round 2 revises from the first kept fraction ≥ 0.5: (1 − cos(π/2·i/5))·0.95 = 0, .046, .181, .392, .656,
    .95 → i = 4, 2 more steps: 8 network evaluations per request."""
    torch.manual_seed(0)
    module = tiny_module(tokenizer)
    torch.nn.init.normal_(module.ema.head.proj.weight, std=0.5)
    clip = real_images()[:1].expand(-1, -1, 5, -1, -1).contiguous()
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, :, 48:] = True  # the right token column
    results = []
    original = module.edit_labels
    monkeypatch.setattr(module, "edit_labels", lambda *a, **k: results.append(original(*a, **k)) or results[-1])
    edited, source, grid = _edit(module, tokenizer, monkeypatch, clip, mask, ["waves"], rounds=2)
    assert grid == (2, GRID, GRID)
    region = torch.zeros(2, GRID, GRID, dtype=torch.bool)
    region[:, :, 3] = True
    region = region.reshape(1, -1)
    assert torch.equal(edited[~region], source[~region]) and not torch.equal(edited[region], source[region])
    assert results[0].steps.tolist() == [8]


def test_predict_requests_edit_a_source_image_or_clip_under_a_mask(tmp_path, tokenizer):
    import numpy as np
    from PIL import Image

    from grn_lightning.generator.t2x.predict import T2XPromptRequests
    from grn_lightning.generator.writers import to_uint8, write_mp4

    photo = real_images()[:1, :, 0]  # [1, 3, 64, 64]
    Image.fromarray(to_uint8(photo)[0].numpy()).save(tmp_path / "photo.png")
    write_mp4(tmp_path / "clip.mp4", photo[0][:, None].expand(-1, 20, -1, -1), fps=16)
    grey = np.zeros((64, 64), np.uint8)
    grey[:, 40:] = 255  # white right part: regenerate
    Image.fromarray(grey).save(tmp_path / "mask.png")
    common = dict(prompts=["a cat"], height=64, width=64, mask=str(tmp_path / "mask.png"))
    batch = T2XPromptRequests(samples_per_prompt=2, source=str(tmp_path / "photo.png"), edit_rounds=2,
                              **common).requests()[0]  # fmt: skip
    assert batch["source"].shape == (2, 3, 1, 64, 64) and batch["rounds"] == 2
    assert batch["mask"].shape == (2, 64, 64) and batch["mask"][:, :, 40:].all() and not batch["mask"][:, :, :40].any()
    torch.testing.assert_close(batch["source"][0, :, 0], photo[0], atol=1 / 127.5 + 1e-6, rtol=0)  # 8-bit PNG
    assert batch["names"] == ["edit_prompt000_000", "edit_prompt000_001"]
    module = tiny_module(tokenizer)
    assert module.predict_step(batch, 0)["media"].shape == (2, 3, 1, 64, 64)
    clip = T2XPromptRequests(frames=5, source=str(tmp_path / "clip.mp4"), **common).requests()[0]
    assert clip["source"].shape == (1, 3, 5, 64, 64)
    assert module.predict_step(clip, 0)["media"].shape == (1, 3, 5, 64, 64)
    with pytest.raises(ValueError, match="go together"):
        T2XPromptRequests(prompts=["a cat"], source=str(tmp_path / "photo.png"))
    with pytest.raises(ValueError, match="clip file"):
        T2XPromptRequests(frames=5, source=str(tmp_path / "photo.png"), **common)
    with pytest.raises(ValueError, match="exclude"):
        T2XPromptRequests(frames=5, source=str(tmp_path / "clip.mp4"), first_frame=str(tmp_path / "photo.png"), **common)
