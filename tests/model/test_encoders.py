"""The encoder registry (model/unet.py ENCODERS): each entry's parts, skips and contract agree."""
from __future__ import annotations

import pytest
import torch

from humanseg_batch.model.unet import ENCODERS, build_unet


@pytest.mark.parametrize("name", sorted(ENCODERS))
@pytest.mark.parametrize("depth", [1, 3])
def test_each_encoder_hands_the_expansive_path_the_skips_it_declares(name, depth):
    model = build_unet(encoder=name, depth=depth, base_width=4, input_height=32, input_width=64).eval()
    spec = ENCODERS[name]
    with torch.no_grad():
        maps = model.contract(torch.randn(1, 3, 32, 64))
    assert [m.shape[1] for m in maps] == spec.skips(model.config)
    # the parts are the state-dict prefixes of the contracting path, and nothing else is
    prefixes = {k.split(".")[0] for k in model.state_dict()}
    assert "head" in prefixes and prefixes - set(model.encoder_parts) <= {"ups", "head"}
    named = {id(p) for n, p in model.named_parameters() if n.split(".")[0] in model.encoder_parts}
    assert {id(p) for p in model.encoder_parameters()} == named and named


def test_a_config_an_encoder_cannot_build_is_refused_by_its_entry():
    with pytest.raises(ValueError, match="3 channels"):
        build_unet(encoder="mobilenetv2", in_channels=1, depth=2, input_height=32, input_width=32)
    build_unet(encoder="unet", in_channels=1, depth=2, input_height=32, input_width=32)
