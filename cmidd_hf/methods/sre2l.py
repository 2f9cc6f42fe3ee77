"""SRe2L's recover step (Yin et al., NeurIPS 2023): images synthesized from a BatchNorm teacher alone.

Squeeze is any BatchNorm classifier (timm / ``hf-hub:`` / ``local-dir:`` names, or a ``train:`` spec trained
once and cached), resolved like the CMI proxies. Recover optimizes each block of the set from noise:

    loss = CE(teacher(aug(x)), y) + r_bn · Σ_l m_l (‖μ_l(aug(x)) − μ̂_l‖₂ + ‖σ²_l(aug(x)) − σ̂²_l‖₂)

where μ_l, σ²_l are the batch mean and biased variance of the input of BatchNorm layer l, μ̂_l, σ̂²_l its
running statistics, and m_1 = ``first_bn_multiplier``, m_l = 1 after. ``aug`` is, per step and for the whole
batch, a random-resized crop (ImageNet recover only), a horizontal flip (ImageNet only) and a roll by
0..``jitter`` pixels on each axis (as the authors' ``recover/data_synthesis.py`` and
``small_dataset/recover_cifar.py``). Adam with betas (0.5, 0.9), cosine decay of the rate over the block's
iterations, pixels clipped to the valid range after every step. The real images are never read.

Blocks (:mod:`cmidd_hf.engine.blocks`): ``images_per_block`` images of each of ``classes_per_block`` classes
(the authors: 1 image of each of 100 classes per batch). With the class-aware CMI a block needs at least two
images per class (one image per class has a CMI of exactly 0), so the +CMI presets use blocks that hold all
of a class's images: the BN statistics are then matched over those classes jointly, and the CMI pulls each
class's images towards their centroid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ..artifacts.proxies import ProxyError, ProxyPool, ProxyTrainingSpec
from ..artifacts.resolver import ArtifactError, parse_spec
from ..engine.blocks import Block, class_blocks
from ..engine.method import (
    DistillationMethod,
    MethodArtifacts,
    MethodConfig,
    MethodConfigError,
    MethodContext,
    Sharding,
    register_method,
)
from ..engine.parametrization import Parametrization, PixelParametrization
from ..engine.precision import autocast, resolve_precision
from ..engine.seeding import generator
from ..models import create_model

_BATCH_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)


@dataclass
class SRe2LConfig(MethodConfig):
    """SRe2L recover settings (the authors' CIFAR recipe: lr 0.25, r_bn 0.01, jitter 4, 1K iterations)."""

    _argument_group_name: ClassVar[str] = "SRe2L"

    lr_img: float = field(default=0.25, metadata={"help": "Adam learning rate of the images (cosine-decayed)"})
    init: str = field(default="noise", metadata={"help": "initialization (the authors: noise)",
                                                 "choices": ["real", "noise"]})
    teacher: str = field(default="", metadata={
        "help": "the BatchNorm teacher: a timm name, hf-hub:org/name, local-dir:/path, or {train: {arch, "
                "epochs, ...}} (YAML; a flow mapping on the command line) to train it once and cache it"})
    teacher_cache_dir: str = field(default="outputs/proxy-cache", metadata={"help": "where a train: teacher goes"})
    r_bn: float = field(default=0.01, metadata={"help": "weight of the BN-statistics loss"})
    first_bn_multiplier: float = field(default=10.0, metadata={"help": "extra weight of the first BN layer"})
    jitter: int = field(default=4, metadata={"help": "roll by 0..jitter pixels per axis each step"})
    flip: bool = field(default=False, metadata={"help": "random horizontal flip each step (the ImageNet recover)"})
    random_resized_crop: bool = field(default=False, metadata={
        "help": "random-resized crop (scale 0.08-1) each step, as the ImageNet recover"})
    beta1: float = field(default=0.5, metadata={"help": "Adam beta1"})
    beta2: float = field(default=0.9, metadata={"help": "Adam beta2"})
    soft_labels: str = field(default="none", metadata={
        "help": "none: hard labels (a kd evaluation relabels online with the recorded teacher); static: save the "
                "teacher's probabilities at label_temperature as soft labels [N, C]", "choices": ["none", "static"]})
    label_temperature: float = field(default=1.0, metadata={"help": "temperature of static soft labels"})
    classes_per_block: int = field(default=100, metadata={"help": "classes in one block (capped at the dataset's)"})
    images_per_block: int = field(default=1, metadata={
        "help": "images of each class in one block (>= 2 with the CMI term: one image per class has CMI 0)"})

    def validate(self) -> None:
        super().validate()
        if not self.teacher:
            raise MethodConfigError("teacher is empty: name a BatchNorm classifier (a timm name, hf-hub:, "
                                    "local-dir:, or {train: {arch: resnet18_cifar_bn, ...}} in the YAML)")
        try:  # --teacher '{train: {...}}' on the command line
            self.teacher = parse_spec("teacher", self.teacher)
        except ArtifactError as err:
            raise MethodConfigError(str(err)) from None
        if isinstance(self.teacher, Mapping):  # refuse a teacher without BatchNorm before training it
            try:
                arch = ProxyTrainingSpec.from_mapping(self.teacher["train"] or {}).arch
            except ProxyError as err:
                raise MethodConfigError(f"teacher: {err}") from None
            if timm.is_model(arch) and not batch_norm_layers(create_model(arch, num_classes=2)):
                raise MethodConfigError(f"teacher architecture {arch!r} has no BatchNorm layers, and SRe2L matches "
                                        "their statistics; train a BN one (e.g. convnet3_bn, resnet18_cifar_bn)")
        for name in ("jitter",):
            if getattr(self, name) < 0:
                raise MethodConfigError(f"{name}={getattr(self, name)}: must be >= 0")
        for name in ("classes_per_block", "images_per_block"):
            if getattr(self, name) < 1:
                raise MethodConfigError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.r_bn < 0 or self.first_bn_multiplier < 0:
            raise MethodConfigError(f"r_bn={self.r_bn}, first_bn_multiplier={self.first_bn_multiplier}: "
                                    "must be >= 0")
        if self.soft_labels not in ("none", "static"):
            raise MethodConfigError(f"soft_labels={self.soft_labels!r}: choose none or static")
        if not self.label_temperature > 0:
            raise MethodConfigError(f"label_temperature={self.label_temperature}: must be > 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise MethodConfigError(f"beta1={self.beta1}, beta2={self.beta2}: must be in [0, 1)")

    def identity(self) -> dict:
        return {**super().identity(), "teacher": self.teacher if isinstance(self.teacher, str) else dict(self.teacher)}


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _BATCH_NORMS)]


class BatchNormStatisticsLoss:
    """Σ_l m_l (‖μ_l − μ̂_l‖₂ + ‖σ²_l − σ̂²_l‖₂) over the BN layers of ``model`` during one forward pass.

    Forward hooks read each BN layer's input (batch mean over N, H, W and biased variance, in fp32) while
    ``recording`` is on, so other uses of the model (a ``kd`` evaluation with it as the teacher) pay nothing."""

    def __init__(self, model: nn.Module, first_multiplier: float) -> None:
        self.layers = batch_norm_layers(model)
        self.weights = [first_multiplier] + [1.0] * (len(self.layers) - 1)
        self.terms: list[torch.Tensor | None] = [None] * len(self.layers)
        self.recording = False
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]

    def _hook(self, index: int):
        def hook(module: nn.Module, inputs, _output) -> None:
            if not self.recording:
                return
            x = inputs[0].float()
            mean = x.mean(dim=(0, 2, 3))
            var = x.var(dim=(0, 2, 3), unbiased=False)
            self.terms[index] = (torch.linalg.vector_norm(module.running_var.float() - var)
                                 + torch.linalg.vector_norm(module.running_mean.float() - mean))
        return hook

    def collect(self) -> torch.Tensor:
        """The weighted sum of the terms of the last forward pass (then forgotten)."""
        if any(t is None for t in self.terms):
            raise RuntimeError("a BatchNorm layer of the teacher was not run in the last forward pass")
        total = sum(w * t for w, t in zip(self.weights, self.terms, strict=True))
        self.terms = [None] * len(self.layers)
        return total

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def random_resized_crop_box(height: int, width: int, gen: torch.Generator, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) as ``torchvision.transforms.RandomResizedCrop.get_params``, drawn from ``gen``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(3, generator=gen, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w, h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@register_method
class SRe2L(DistillationMethod):
    """SRe2L recover (+ the class-aware CMI within each block). Sharding: blocks, one process each."""

    name = "sre2l"
    config_class = SRe2LConfig
    sharding = Sharding.CLASS

    @classmethod
    def resolve_artifacts(cls, config: SRe2LConfig, data, progress: bool = True,
                          compile: bool = True) -> MethodArtifacts:
        """The teacher, through the proxies' resolver (trained once and cached for a train: spec, eagerly as
        every proxy, so ``compile`` does not apply); refused without BatchNorm layers."""
        pool = ProxyPool.from_pretrained([config.teacher], data, cache_dir=config.teacher_cache_dir,
                                         dataset_id=data.name, progress=progress)
        teacher, name = pool[0], pool.names[0]
        if not batch_norm_layers(teacher):
            raise MethodConfigError(f"teacher {name!r} has no BatchNorm layers, and SRe2L matches their statistics; "
                                    "use a BN classifier (e.g. resnet18_cifar_bn, convnet3_bn, timm/resnet18.a1_in1k)")
        return MethodArtifacts(items={"teacher": teacher}, provenance={"teacher": pool.provenance[0]})

    def __init__(self, config: SRe2LConfig, context: MethodContext) -> None:
        super().__init__(config, context)
        teacher = context.artifacts.get("teacher")
        if teacher is None:
            raise MethodConfigError("SRe2L needs its teacher: build it with the artifacts of SRe2L.resolve_artifacts")
        if context.iterations < 1:
            raise MethodConfigError(f"iterations={context.iterations}: SRe2L needs >= 1 iteration per block")
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.bn_loss = BatchNormStatisticsLoss(self.teacher, config.first_bn_multiplier)
        real = context.real
        self.num_classes, self.image_shape = real.num_classes, real.image_shape
        self.low = (-real.mean / real.std).to(self.device)
        self.high = ((1 - real.mean) / real.std).to(self.device)
        self.precision = resolve_precision(context.precision, self.device)
        self.block: Block | None = None

    # ------------------------------------------------------------------ blocks

    def blocks(self) -> list[Block]:
        c = self.config
        return class_blocks(self.num_classes, self.context.ipc, min(c.classes_per_block, self.num_classes),
                            min(c.images_per_block, self.context.ipc))

    def init_block(self, block: Block) -> Parametrization:
        """Noise (standard normal in normalized space, as the authors) drawn from (seed, block), or the
        block's share of the real images ``init=real`` draws for the whole set."""
        self.block = block
        if self.config.init == "noise":
            shape = (block.size, *self.image_shape)
            images = torch.randn(shape, generator=generator(self.seed, "sre2l-init", block.index))
        else:
            real = self.context.real
            images = torch.cat([real.sample(c, self.context.ipc, generator(self.seed, "init", c))
                                [block.first:block.first + block.per_class] for c in block.classes])
        return PixelParametrization(images, len(block.classes), class_ids=block.classes,
                                    label_classes=self.num_classes)

    # ------------------------------------------------------------------ engine hooks

    def make_optimizer(self, synthetic: Parametrization):
        c, iterations = self.config, self.context.iterations
        optimizer = torch.optim.Adam(synthetic.parameters(), lr=c.lr_img, betas=(c.beta1, c.beta2), eps=1e-8)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda it: 0.5 * (1 + math.cos(math.pi * it / iterations)))
        return optimizer, scheduler

    def augment(self, images: torch.Tensor, step: int) -> torch.Tensor:
        """The step's crop, flip and roll, one draw for the whole batch (from seed, block, step)."""
        c = self.config
        gen = generator(self.seed, "sre2l-aug", self.block.index, step)
        height, width = images.shape[-2:]
        if c.random_resized_crop:
            top, left, h, w = random_resized_crop_box(height, width, gen)
            images = TF.resized_crop(images, top, left, h, w, [height, width], antialias=True)
        if c.flip and bool(torch.rand((), generator=gen) < 0.5):
            images = images.flip(-1)
        if c.jitter:
            dy, dx = (int(v) for v in torch.randint(0, c.jitter + 1, (2,), generator=gen))
            images = torch.roll(images, shifts=(dy, dx), dims=(2, 3))
        return images

    def losses(self, synthetic: Parametrization, classes: Sequence[int], step: int,
               substep: int) -> dict[str, torch.Tensor]:
        images, labels = synthetic.decode(classes)
        self.bn_loss.recording = True
        try:
            with autocast(self.device, self.precision):
                logits = self.teacher(self.augment(images, step)).float()
        finally:
            self.bn_loss.recording = False
        bn = self.bn_loss.collect()
        return {"ce_loss": F.cross_entropy(logits, labels), "bn_loss": self.config.r_bn * bn}

    def after_image_step(self, synthetic: Parametrization, step: int, substep: int) -> None:
        """Clip every pixel to the valid range (normalized [-mean/std, (1-mean)/std])."""
        with torch.no_grad():
            for parameter in synthetic.parameters():
                parameter.copy_(torch.maximum(torch.minimum(parameter, self.high), self.low))

    @torch.no_grad()
    def final_labels(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``soft_labels: static``: softmax(teacher(x) / label_temperature) of every image (un-augmented)."""
        if self.config.soft_labels == "none":
            return labels
        rows = []
        for start in range(0, len(images), 500):
            with autocast(self.device, self.precision):
                logits = self.teacher(images[start:start + 500].to(self.device)).float()
            rows.append(F.softmax(logits / self.config.label_temperature, dim=1).cpu())
        return torch.cat(rows)

    def regularizer_draw(self, step: int, substep: int) -> tuple[int, ...]:
        """Proxies drawn per (block, step), so blocks do not all see the same proxy sequence."""
        return (self.block.index, step)

    def describe(self) -> dict:
        out = super().describe()
        out["teacher"] = self.config.teacher if isinstance(self.config.teacher, str) else dict(self.config.teacher)
        return out
