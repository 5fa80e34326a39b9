"""EfficientNet-B0 (Tan & Le 2019) from timm, its stem stride set to 1 for 32x32 input.

With the stock stride-2 stem a 32x32 image shrinks to 1x1 after the stages; stride 1
keeps a 2x2 final map, the usual CIFAR adaptation.
"""
import timm

from models._registry import register_model

# The family recipe (lr at batch 128): kuangliu/pytorch-cifar trains EfficientNet-B0 with the same
# SGD recipe as its ResNets.
RECIPE = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=128, label_smoothing=0.0)


# cpu_bf16=False: its depthwise convolutions train slower under bf16 on the CPU (tools.train_bench:
# 37 against 51 images/s on an AMX Xeon, README), so amp=auto keeps it fp32 there.
@register_model(recipe=RECIPE, cpu_bf16=False)
def efficientnet_b0(in_chans: int = 3, img_size: int = 32, drop_rate: float = 0.2, drop_path_rate: float = 0.2):
    net = timm.create_model("efficientnet_b0", pretrained=False, num_classes=0, in_chans=in_chans,
                            drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    net.conv_stem.stride = (1, 1)
    return net
