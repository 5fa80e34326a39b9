"""Vision Transformers (Dosovitskiy et al. 2021) from timm, sized for 32x32 input with 4x4 patches."""
import timm

from models._registry import register_model

# The family recipe (lr at batch 128): omihub777/ViT-CIFAR (small ViTs from scratch on CIFAR): AdamW
# lr 1e-3, weight decay 5e-5, batch 128, 5 warmup epochs, label smoothing 0.1.
RECIPE = dict(optimizer="adamw", lr=1e-3, momentum=0.9, weight_decay=5e-5, batch_size=128, label_smoothing=0.1)


def _create_vit(variant: str, in_chans: int, img_size: int, drop_path_rate: float, **size):
    if img_size % 4:
        raise ValueError(f"ViT with 4x4 patches needs img_size divisible by 4, got {img_size}")
    return timm.create_model(variant, pretrained=False, num_classes=0, img_size=img_size, patch_size=4,
                             in_chans=in_chans, drop_path_rate=drop_path_rate, **size)


@register_model(recipe=RECIPE)
def vit_tiny(in_chans: int = 3, img_size: int = 32, drop_path_rate: float = 0.1):
    """ViT-Ti: 12 blocks, width 192, 3 heads; 64 tokens at 32x32."""
    return _create_vit("vit_tiny_patch16_224", in_chans, img_size, drop_path_rate)


@register_model(recipe=RECIPE)
def vit_small(in_chans: int = 3, img_size: int = 32, drop_path_rate: float = 0.1):
    """ViT-S: 12 blocks, width 384, 6 heads."""
    return _create_vit("vit_small_patch16_224", in_chans, img_size, drop_path_rate)


@register_model(recipe=RECIPE)
def vit_cpu(in_chans: int = 3, img_size: int = 32, drop_path_rate: float = 0.0):
    """A ViT for 32x32 images on a 2-core CPU: 6 blocks, width 128, 4 heads, MLP ratio 2, 4x4 patches (64
    tokens): ~52 M multiply-adds an image forward against ViT-Ti's ~345 M, so an epoch of CIFAR-100 takes
    minutes here rather than a quarter of an hour."""
    return _create_vit("vit_tiny_patch16_224", in_chans, img_size, drop_path_rate, embed_dim=128, depth=6,
                       num_heads=4, mlp_ratio=2.0)
