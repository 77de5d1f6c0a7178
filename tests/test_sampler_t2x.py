"""Text-conditioned sampling (SPEC §6 for T2I / T2V / I2V): `PromptConditions` rows assembled on the device equal
the training packing of each sample alone, without reading the conditions back to the host."""

from __future__ import annotations

import pytest
import torch
from test_t2x_module import GRID, tiny_module

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
    model = PromptConditions(module.model, texts, (2, GRID, GRID), clean_first=first)
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

