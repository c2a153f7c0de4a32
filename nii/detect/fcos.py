"""Model builders: torchvision's FCOS on a backbone small enough for 2 CPU cores.

No pretrained weights can be downloaded here, so the backbone is trained from
scratch with the detector. ImageNet backbones (ResNet-50: 4 GFLOPs at 224 px)
cost ~2 s per training batch of 8 on 2 cores; the plain VGG-style backbone
below (five stride-2 stages of 3x3 conv + BatchNorm + ReLU) trains at ~0.8 s
per batch at 320 px, and dense 3x3 convolutions are what CPU kernels run
best. FCOS is anchor-free: no anchor shapes to tune for guns against
wrenches, and fewer hyper-parameters to get wrong from scratch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

__all__ = ["PlainBackbone", "fcos_plain", "for_inference"]

# Pseudo-colour renderings are mostly near-white background; these centre
# and scale the 0-1 RGB input for the first convolution.
IMAGE_MEAN = (0.80, 0.80, 0.80)
IMAGE_STD = (0.25, 0.25, 0.25)


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class PlainBackbone(nn.Sequential):
    """Five stride-2 stages of 3x3 conv-BN-ReLU; stages 2-4 feed the FPN.

    Parameters
    ----------
    widths : sequence of 5 int
        Channels of each stage (strides 2, 4, 8, 16, 32).
    depths : sequence of 5 int
        Convolutions per stage (the first of each has stride 2).
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128, 256), depths: Sequence[int] = (1, 2, 2, 3, 3)):
        if len(widths) != 5 or len(depths) != 5:
            raise ValueError("widths and depths need one entry per stage (5)")
        stages, c_in = [], 3
        for width, depth in zip(widths, depths):
            stages.append(nn.Sequential(_conv(c_in, width, 2), *(_conv(width, width, 1) for _ in range(depth - 1))))
            c_in = width
        super().__init__(*stages)


def fcos_plain(
    num_classes: int,
    *,
    widths: Sequence[int] = (16, 32, 64, 128, 256),
    depths: Sequence[int] = (1, 2, 2, 3, 3),
    fpn_channels: int = 64,
    head_convs: int = 2,
    min_size: int | Sequence[int] = 320,
    max_size: int = 448,
    score_thresh: float = 0.05,
    detections_per_img: int = 50,
) -> FCOS:
    """FCOS with a :class:`PlainBackbone` and a narrow FPN and head.

    Parameters
    ----------
    num_classes : int
        Threat classes, without background (labels 1..num_classes).
    widths, depths : sequences of int
        Backbone stages (see :class:`PlainBackbone`).
    fpn_channels, head_convs : int
        FPN width and convolutions per head branch (torchvision's default
        256 and 4 cost 20x more at P3 than the backbone does).
    min_size, max_size : int
        Images are resized so their short side is ``min_size`` (a random one
        of several while training) and their long side at most ``max_size``.
    score_thresh, detections_per_img
        Candidates kept per image at inference.
    """
    backbone = BackboneWithFPN(
        PlainBackbone(widths, depths),
        return_layers={"2": "p3", "3": "p4", "4": "p5"},
        in_channels_list=list(widths[2:]),
        out_channels=fpn_channels,
        extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels),
    )
    # One "anchor" per location: FCOS uses the generator only for locations
    # and strides (8..128); the sizes set nothing else.
    anchors = AnchorGenerator(sizes=tuple((8 * 2**i,) for i in range(5)), aspect_ratios=((1.0,),) * 5)
    sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
    return FCOS(
        backbone,
        num_classes=num_classes + 1,
        min_size=sizes,
        max_size=max_size,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
        anchor_generator=anchors,
        head=FCOSHead(fpn_channels, 1, num_classes + 1, num_convs=head_convs),
        score_thresh=score_thresh,
        detections_per_img=detections_per_img,
    )


def for_inference(model: nn.Module) -> nn.Module:
    """The trained ``model`` made ready to run: evaluation mode, BatchNorm
    folded into the convolution before it, weights in channels-last layout.

    The outputs are the same to float rounding (scores within ~1e-7); on 2
    CPU cores the shipped detector runs ~25% faster (oneDNN's convolutions
    prefer channels-last, and a folded BatchNorm is one pass fewer per
    layer). The model is changed in place and returned; its state dict no
    longer has the BatchNorm entries, so load weights before this.
    """
    model.eval()
    for block in model.modules():
        if isinstance(block, nn.Sequential):
            for i in range(len(block) - 1):
                if isinstance(block[i], nn.Conv2d) and isinstance(block[i + 1], nn.BatchNorm2d):
                    block[i] = fuse_conv_bn_eval(block[i], block[i + 1])
                    block[i + 1] = nn.Identity()
    return model.to(memory_format=torch.channels_last)


def best_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def training_device(device: str | None) -> torch.device:
    """Where a recipe trains: ``device``, or the best there is when None.

    Raises
    ------
    ValueError
        ``"cuda"`` on a machine without a CUDA GPU: said before any data is
        loaded, not when the first batch moves.
    """
    if device is None:
        return best_device()
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this machine has no CUDA GPU (leave --device out to use what there is)")
    return torch.device(device)
