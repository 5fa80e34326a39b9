"""Backbone registry: `register_model`, `create_model`, `list_models` (`MODELS` is the table).

A backbone is an `nn.Module` with `num_features` whose forward maps
(B, in_chans, img_size, img_size) -> (B, num_features). All are built from scratch.
Every module of this package is imported, so a new backbone is one new file.
"""
from common.registry import import_submodules
from models._registry import MODELS, create_model, list_models, model_entry, register_model

import_submodules(__name__)

__all__ = ["MODELS", "create_model", "list_models", "register_model", "model_entry"]
