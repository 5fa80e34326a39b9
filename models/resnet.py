"""ResNet-18 (He et al. 2016) with the CIFAR stem: 3x3 stride-1 first conv, no max-pool.

torchvision's ResNet with its stem swapped, so the residual blocks are the standard ones.
"""
from torch import nn
from torchvision.models import resnet18 as tv_resnet18

from models._registry import register_model

# The family recipe (lr at batch 128): He et al. 2016's CIFAR recipe as kuangliu/pytorch-cifar runs
# it: SGD lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, cosine schedule.
RECIPE = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=128, label_smoothing=0.0)


class _Backbone(nn.Module):
    def __init__(self, net: nn.Module, num_features: int):
        super().__init__()
        self.net, self.num_features = net, num_features

    def forward(self, x):
        return self.net(x)


@register_model(recipe=RECIPE)
def resnet18(in_chans: int = 3, img_size: int = 32) -> nn.Module:
    net = tv_resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()  # the head is ours
    return _Backbone(net, 512)
