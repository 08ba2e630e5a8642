"""Victim classifiers: a BatchNorm CNN for the CPU, and ResNet-18 adapted to 32x32 inputs.

Training is seeded and identical for every defence (SGD with Nesterov momentum, a
one-cycle learning rate, label smoothing, random crops with 4-pixel padding and
horizontal flips), so differences between defences come from the data alone.
The CNN reaches 72% natural accuracy on a fifth of the shared CIFAR-10 images
after training 20 epochs on the rest (about 100 s on 2 CPU cores): strong
enough that a Narcissus backdoor holds, so a defence that breaks it is
measured, not a victim too weak to learn it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from pureebm.augment import flip_and_crop
from pureebm.evaluation.config import TrainSettings
from pureebm.langevin import resolve_device


def cnn(num_classes: int, width: int = 32) -> nn.Module:
    """Three stages of two conv3x3-BatchNorm-ReLU layers (width, 2 width, 4 width
    channels), each halving the resolution, then global average pooling."""

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    stages, c_in = [], 3
    for c_out in (width, 2 * width, 4 * width):
        stages += [*block(c_in, c_out), *block(c_out, c_out), nn.MaxPool2d(2)]
        c_in = c_out
    return nn.Sequential(
        *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)
    )


def cnn_bn4(num_classes: int) -> nn.Module:
    """The outside evaluation's victim: conv3x3(3, 32), conv3x3(32, 64), maxpool,
    conv3x3(64, 128), maxpool, conv3x3(128, 256), maxpool, each convolution without
    bias and followed by BatchNorm and ReLU, then global max pooling and a linear layer."""

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(
        *block(3, 32), *block(32, 64), nn.MaxPool2d(2),
        *block(64, 128), nn.MaxPool2d(2),
        *block(128, 256), nn.MaxPool2d(2),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(256, num_classes),
    )  # fmt: skip


def resnet18_cifar(num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool, for 32x32 inputs
    (torchvision comes with the `eval` extra)."""
    import torchvision

    net = torchvision.models.resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    return net


ARCHITECTURES = {
    "cnn": cnn,
    "cnn-wide": lambda num_classes: cnn(num_classes, width=64),
    "cnn-bn4": cnn_bn4,
    "resnet18": resnet18_cifar,
}


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    settings: TrainSettings,
    on_epoch: Callable[[nn.Module, int], None] | None = None,
) -> nn.Module:
    """The victim (or surrogate) of ``settings``, trained on the set; ``on_epoch(net,
    epoch)`` sees the net after each epoch (in eval mode; training resumes after)."""
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    net = ARCHITECTURES[settings.architecture](int(labels.max()) + 1).to(device)
    x, y = to_tensor(images), torch.from_numpy(labels)
    steps = settings.epochs * max(len(x) // settings.batch_size, 1)
    optimizer = torch.optim.SGD(
        net.parameters(),
        lr=settings.lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=settings.weight_decay,
    )
    warmup = max(round(steps / 4), 1)  # one cycle: up linearly for a quarter, then down to 0

    def cycle(step: int) -> float:
        return step / warmup if step < warmup else max(steps - step, 0) / max(steps - warmup, 1)

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cycle)
    net.train()
    for epoch in tqdm(range(settings.epochs), desc=f"train {settings.architecture}", leave=False):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x) - settings.batch_size + 1, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            batch = flip_and_crop(x[idx], generator, pad=4, one_offset=settings.one_offset)
            batch = batch.to(device)
            loss = F.cross_entropy(
                net(batch), y[idx].to(device), label_smoothing=settings.label_smoothing
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if on_epoch is not None:
            on_epoch(net.eval(), epoch + 1)
            net.train()
    return net.eval()


@torch.no_grad()
def predict(net: nn.Module, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    device = next(net.parameters()).device
    outputs = [
        net(to_tensor(images[i : i + batch_size]).to(device)).argmax(1).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs).numpy()
