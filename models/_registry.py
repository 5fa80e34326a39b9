from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tuning.registry import Registry, check_kwargs

_MODELS = Registry("model")
register_model = _MODELS.register
list_models = _MODELS.list
model_entry = _MODELS.get


def create_model(name: str, in_chans: int = 3, img_size: int = 32, pretrained: str | None = None,
                 **kwargs) -> nn.Module:
    """Build backbone `name`; `pretrained` is a local state-dict file (nothing is downloaded)."""
    fn = _MODELS.get(name)
    check_kwargs(fn, kwargs, f"model {name!r}")
    model = fn(in_chans=in_chans, img_size=img_size, **kwargs)
    if pretrained:
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained={pretrained!r}: weights are loaded only from a local file, and there is none there "
                "(headsweep never downloads weights)")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model
