"""Backbone registry: `register_model`, `create_model`, `list_models`.

A backbone is an `nn.Module` with `num_features` whose forward maps
(B, in_chans, img_size, img_size) -> (B, num_features). All are built from scratch.
"""
from models._registry import create_model, list_models, model_entry, register_model
from models import cnn, efficientnet, resnet, vit  # noqa: F401  (fill the registry)

__all__ = ["create_model", "list_models", "register_model", "model_entry"]
