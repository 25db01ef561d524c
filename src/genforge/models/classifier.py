"""A small image classifier, p(y | x): the feature space of genforge's fast domain metrics.

It is trained by the same trainer as every generative family (`genforge train configs/mnist/classifier.yaml`) and
read from its checkpoint by `genforge eval --classifier RUN`. Its penultimate layer (global-average-pooled conv
features) is the space of the fast Fréchet distance; its predictions give mode coverage and, for conditional
generators, the accuracy of the class each sample was asked for. As a model of labels given images it "samples"
labels: `sample(n, cond=images)` draws one label per image from the softmax.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from genforge.config import ModelSection
from genforge.errors import UserError


class ClassifierConfig(ModelSection):
    family: Literal["classifier"] = "classifier"
    image_size: int = Field(default=28, ge=8, le=256)  # input height = width
    channels: Literal[1, 3] = 1  # input channels
    num_classes: int = Field(default=10, ge=2)  # output classes; must match the data
    width: int = Field(default=32, ge=1)  # channels of the first conv stage; stages double it (32, 64, 128)
    dropout: float = Field(default=0.25, ge=0, lt=1)  # on the pooled features, before the last linear layer

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"debug": {"width": 4}}

    def adapt_to_data(self, dataset: Any) -> "ClassifierConfig":
        c, h, w = dataset.image_shape
        if (c, h, w) != (self.channels, self.image_size, self.image_size):
            raise UserError(f"data set {dataset.name} has images of shape {(c, h, w)} but the classifier takes "
                            f"{(self.channels, self.image_size, self.image_size)}; set data.image_size/channels")
        if dataset.labels is None or dataset.num_classes != self.num_classes:
            raise UserError(f"`model.num_classes` ({self.num_classes}) must equal the classes of {dataset.name} "
                            f"({dataset.num_classes if dataset.labels is not None else 'unlabelled'})")
        return self


class Classifier(nn.Module):
    Config = ClassifierConfig
    output_kind: ClassVar[Literal["label"]] = "label"
    conditioning: ClassVar[Literal["image"]] = "image"  # `cond` of sample(): the images to label

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        w = config.width
        layers: list[nn.Module] = []
        c_in = config.channels
        for i, c_out in enumerate((w, 2 * w, 4 * w)):  # 28 -> 14 -> 7 -> 7
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(4 * w, config.num_classes)

    def features(self, images: Tensor) -> Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, 4*width) pooled features: the fast metrics' feature space."""
        return self.body(images).mean(dim=(2, 3))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(images)))  # (N, num_classes) logits

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"model": list(self.parameters())}

    def loss(self, batch: dict[str, Tensor], group: str = "model") -> dict[str, Tensor]:
        logits = self(batch["image"])
        labels = batch["label"]
        accuracy = (logits.argmax(1) == labels).float().mean().detach()
        return {"loss": F.cross_entropy(logits, labels), "accuracy": accuracy}

    @torch.no_grad()
    def sample(self, n: int, *, cond: Any = None, generator: torch.Generator | None = None, **options: Any) -> Tensor:
        """One label per image of `cond` ((n, C, H, W) in [-1, 1]), drawn from p(y | x)."""
        if options:
            raise UserError(f"classifier sampling takes no options; got {', '.join(sorted(options))}")
        if not isinstance(cond, Tensor) or cond.ndim != 4 or len(cond) != n:
            raise UserError(f"a classifier samples labels for given images: pass cond=(n={n}, C, H, W) images")
        was_training = self.training
        self.eval()
        try:
            probs = F.softmax(self(cond).float(), dim=1)
        finally:
            self.train(was_training)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
        """(features (N, 4*width), predicted classes (N,)) in eval mode, in batches."""
        was_training = self.training
        self.eval()
        feats, preds = [], []
        try:
            for start in range(0, len(images), batch_size):
                x = images[start : start + batch_size]
                f = self.features(x)
                feats.append(f)
                preds.append(self.head(f).argmax(1))
        finally:
            self.train(was_training)
        return torch.cat(feats), torch.cat(preds)
