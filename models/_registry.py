from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from common.registry import Registry

MODELS = Registry("model", requires=("recipe",), reserved={"in_chans": "the dataset (its image channels)",
                                     "img_size": "the dataset (its image size)"})
register_model = MODELS.register
list_models = MODELS.list
model_entry = MODELS.get


def create_model(name: str, in_chans: int = 3, img_size: int = 32, pretrained: str | None = None,
                 **options) -> nn.Module:
    """Build backbone `name`; `pretrained` is a local state-dict file (nothing is downloaded)."""
    model = MODELS.create(name, {"in_chans": in_chans, "img_size": img_size}, options)
    if pretrained:
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained={pretrained!r}: weights are loaded only from a local file, and there is none there "
                "(headsweep never downloads weights)")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model
