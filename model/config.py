"""Typed configuration of the networks and their training, with the three named presets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VAEConfig(_Strict):
    channels: int = Field(16, gt=0, description="width of the first convolution; doubles per downsampling")
    downsamples: int = Field(2, ge=1, description="latent at 1/2**downsamples of the input resolution")
    latent_channels: int = Field(64, gt=0)
    blocks: int = Field(2, ge=0, description="residual blocks on each side of the latent")
    norm: Literal["batch", "instance"] = Field("batch", description="instance: the reference's; batch: tiles exactly")
    stem_kernel: int = Field(7, ge=1, description="kernel of the full-resolution first and last convolutions")


class MappingConfig(_Strict):
    channels: int = Field(128, gt=0)
    blocks: int = Field(2, ge=1, description="residual blocks of the local branch, then as many after fusion")
    attention_channels: int = Field(32, gt=0, description="width of theta and phi in the non-local block")
    query_chunk: int = Field(4096, gt=0, description="queries per step of the partial non-local attention")
    key_stride: int = Field(1, ge=1, description="keys from every n-th latent row and column (1: all, as the paper)")
    norm: Literal["batch", "instance"] = "batch"


class ScratchConfig(_Strict):
    channels: int = Field(16, gt=0, description="width of the first U-Net level; doubles per level")
    depth: int = Field(3, ge=1, description="downsamplings of the U-Net")
    threshold: float = Field(0.4, gt=0, lt=1, description="on the sigmoid, as the reference detector")
    scale: int = Field(1, ge=1, description="detect on the photo downscaled by this factor, then upsample the logits")
    reference_size: int | None = Field(
        None, ge=16, description="short side of the photos the detector learned on: a larger photo is also "
        "searched halved, and halved again while its short side stays at least this, each pixel keeping its "
        "most probable level, so that damage is found at the widths it was learned at; None: the photo's "
        "own resolution only")


class DiscriminatorConfig(_Strict):
    channels: int = Field(32, gt=0)
    layers: int = Field(3, ge=1, description="stride-2 layers of each PatchGAN")
    scales: int = Field(2, ge=1, description="image scales of the multi-scale discriminator")


class LossWeights(_Strict):
    kl: float = 1.0
    l1: float = 10.0
    gan: float = 1.0
    latent_gan: float = 1.0
    feature_matching: float = 10.0
    vgg: float = 10.0
    latent_l1: float = 60.0
    # The restore path's output against the clean photo (mapping and direct): latent L1 alone leaves
    # tone and contrast loosely pinned, and PSNR is what archives compare.
    clean_l1: float = 40.0
    # distill: the student's output and latents against the teacher's.
    teacher_l1: float = 40.0
    teacher_latent_l1: float = 10.0
    # vae_a fine-tuned from the init's E_RX: L1 of its latents of synthetic photos to E_RX's, so that
    # the mapping trained on those latents still fits while the real photos' latents move to them.
    anchor_l1: float = 0.0
    # polish: 1 - SSIM of the output's luminance to the clean photo's, beside clean_l1. L1 alone
    # smooths what it cannot place; SSIM rewards the structure kept (issue 20's second measure).
    ssim: float = 0.0

    @model_serializer(mode="wrap")
    def _without_unset_terms(self, serialize):
        # Configs from before these terms keep their JSON, and so their checkpoint folders' names.
        data = serialize(self)
        if isinstance(data, dict):
            for name in ("anchor_l1", "ssim"):
                if getattr(self, name) == 0.0:
                    data.pop(name, None)
        return data


class TrainConfig(_Strict):
    steps: int = Field(2000, gt=0, description="optimizer steps per stage")
    batch_size: int = Field(8, gt=0)
    crop: int = Field(128, ge=16, description="random square crop of each training image")
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = Field(0, ge=0)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    log_every: int = Field(50, gt=0, description="steps between metric logs")
    image_every: int = Field(500, gt=0, description="steps between sample grids")
    checkpoint_every: int = Field(200, gt=0)
    scales: tuple[float, float] = Field((1.0, 1.0), description="each training pair seen at a random scale in "
                                        "this range (log-uniform; the scratch detector learns damage at every scan resolution)")
    vgg_weights: str | None = Field(None, description="local path or URL of VGG19 ImageNet weights; none: VGG loss off")
    weights: LossWeights = Field(default_factory=LossWeights)

    @model_serializer(mode="wrap")
    def _without_default_scales(self, serialize):
        # Configs from before scales keep their JSON, and so their checkpoint folders' names.
        data = serialize(self)
        if isinstance(data, dict) and tuple(self.scales) == (1.0, 1.0):
            data.pop("scales", None)
        return data


class ModelConfig(_Strict):
    """Everything that determines the networks' shapes, plus how to train them."""

    name: str = "default"
    vae: VAEConfig = Field(default_factory=VAEConfig)
    mapping: MappingConfig = Field(default_factory=MappingConfig)
    scratch: ScratchConfig = Field(default_factory=ScratchConfig)
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
    detail: int = Field(0, ge=0, description="width of the detail path, which carries the photo's full resolution "
                        "past the latent to the output (model/restorer.py); 0: none, as restorers before it")
    tone: int = Field(32, ge=1, description="width of the tone correction's thumbnail features (model/tone.py); "
                      "its head is twice as wide")
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_serializer(mode="wrap")
    def _without_fields_at_their_first_value(self, serialize):
        # Configs from before the detail path and the tone width keep their JSON, and so their
        # checkpoint folders' names.
        data = serialize(self)
        if isinstance(data, dict):
            if not self.detail:
                data.pop("detail", None)
            if self.tone == type(self).model_fields["tone"].default:
                data.pop("tone", None)
        return data

    @classmethod
    def load(cls, name_or_path: str) -> "ModelConfig":
        """A preset name (one of PRESETS) or a JSON file of a ModelConfig."""
        if name_or_path in PRESETS:
            return PRESETS[name_or_path].model_copy(deep=True)
        path = Path(name_or_path)
        if not path.is_file():
            raise ValueError(f"model config {name_or_path!r}: neither a preset ({', '.join(PRESETS)}) nor a file")
        return cls.model_validate(json.loads(path.read_text()))


PRESETS: dict[str, ModelConfig] = {
    # The reference release: 64 base channels, 64-channel latent at 1/4, mapping 512 wide with 6 blocks.
    "paper": ModelConfig(
        name="paper",
        vae=VAEConfig(channels=64, downsamples=2, latent_channels=64, blocks=4, norm="instance"),
        mapping=MappingConfig(channels=512, blocks=3, attention_channels=64, norm="instance"),
        scratch=ScratchConfig(channels=64, depth=4),
        discriminator=DiscriminatorConfig(channels=64, layers=3, scales=2),
        train=TrainConfig(crop=256, batch_size=8),
    ),
    # What `oldphoto train` trains, and the teacher of what we ship ("light"): VAEs 12 wide at full
    # resolution, 3x3 stems, a 64-wide mapping, and scratch detection at half resolution (about 0.08
    # MFLOP per input pixel; tests/test_model.py).
    "default": ModelConfig(
        name="default",
        vae=VAEConfig(channels=12, stem_kernel=3),
        mapping=MappingConfig(channels=64, blocks=1, key_stride=2),
        scratch=ScratchConfig(channels=8, scale=2),
    ),
    # The restore path that ships, distilled from a trained `default` one (the distill stage): VAEs 8
    # wide with one residual block each side, a 48-wide mapping, the same 64-channel latent; half the
    # FLOPs, 1.3-1.9x faster here (BENCHMARKS.md). Its detector and tone correction are the teacher's.
    "light": ModelConfig(
        name="light",
        vae=VAEConfig(channels=8, stem_kernel=3, blocks=1),
        mapping=MappingConfig(channels=48, blocks=1, key_stride=2),
        scratch=ScratchConfig(channels=8, scale=2, threshold=0.6),
    ),
    # For tests: a few steps in seconds on a CPU.
    "tiny": ModelConfig(
        name="tiny",
        vae=VAEConfig(channels=8, downsamples=2, latent_channels=8, blocks=1),
        mapping=MappingConfig(channels=16, blocks=1, attention_channels=8, query_chunk=64),
        scratch=ScratchConfig(channels=4, depth=2),
        discriminator=DiscriminatorConfig(channels=8, layers=2, scales=2),
        train=TrainConfig(steps=4, batch_size=2, crop=32, log_every=1, image_every=2, checkpoint_every=2),
    ),
}
