"""The restore path as one module: scratch detector, E_RX (VAE_A's encoder), mapping, G_Y (VAE_B's
decoder), and the tone correction and the restoration's strength when trained; saved and loaded as
a bundle of plain tensors and the config (safe with weights_only)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .blocks import conv, luminance
from .config import ModelConfig
from .mapping import Mapping, latent_mask
from .scratch import ScratchDetector
from .stages import OPTIONAL_PARTS, ORDER, PATH, STAGES, first_yielding, sources
from .strength import RestorationStrength
from .tone import ToneCorrection
from .vae import Decoder, Encoder

BUNDLE_FORMAT = "oldphoto-restorer/1"
ScratchMode = Literal["auto", "on", "off"]


class DetailPath(nn.Module):
    """The photo's full resolution carried past the latent. A latent at 1/4 resolution cannot hold fine
    texture, and a print that needs no repair must come back as it was: from the input, the decoded
    restoration and the damage mask, a small U-Net (full, 1/2 and 1/4 resolution, so that it judges
    grain and blur over a neighbourhood, not a pixel) gives per pixel how much of the input to keep,
    in [0, 1], and a correction. Its last layer starts at zero: added to a trained restore path, the
    path restores as before until trained."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.inlet = conv(7, c)
        self.down = nn.ModuleList([conv(c, 2 * c, stride=2), conv(2 * c, 2 * c, stride=2)])
        self.middle = conv(2 * c, 2 * c)
        self.up = nn.ModuleList([conv(2 * c, 2 * c), conv(2 * c, c)])  # at 1/4 and 1/2, then upsampled
        self.outlet = conv(c, 4)  # keep, and a correction per channel
        nn.init.zeros_(self.outlet.weight)
        nn.init.zeros_(self.outlet.bias)

    def forward(self, image: torch.Tensor, restored: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        restored = restored.to(image.dtype)
        mask = torch.zeros_like(image[:, :1]) if mask is None else mask.to(image.dtype)
        # In place, on tensors no backward needs: full-resolution passes are memory-bound (measured
        # in the engine on a 12 MP photo: this path 2.57 -> 2.40 s, bf16 on CPU).
        def act(x: torch.Tensor) -> torch.Tensor:
            return nn.functional.leaky_relu_(x, 0.2)
        full = act(self.inlet(torch.cat([image, restored, mask], 1)))
        half = act(self.down[0](full))
        quarter = act(self.middle(act(self.down[1](half))))
        half = act(upsampled(self.up[0](quarter)).add_(half))
        full = act(upsampled(self.up[1](half)).add_(full))
        keep, correction = self.outlet(full).split([1, 3], 1)
        # clamp, not a sigmoid: a print left alone keeps exactly its pixels, and zero keeps none.
        return (restored + keep.clamp(0, 1) * (image - restored) + correction).clamp(-1, 1)

    @torch.no_grad()
    def widened(self, channels: int) -> "DetailPath":
        """A detail path as wide or wider that computes exactly what this one does, to train on from
        there (as wide: a copy): each layer holds this one's weights in its first channels; the new
        channels' inputs start at random, so that they learn, and what they feed into the old at zero."""
        if channels < self.inlet.out_channels:
            raise ValueError(f"a detail path can only be widened: {channels} < {self.inlet.out_channels} channels")
        wide = DetailPath(channels)
        for old, new in zip(self.modules(), wide.modules()):
            if isinstance(old, nn.Conv2d):
                out, into = old.weight.shape[:2]
                new.weight[:out] = 0
                new.weight[:out, :into] = old.weight
                new.bias[:out] = old.bias
        return wide


def upsampled(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def restore_with_latents(path: nn.Module, image: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The encoder's latent, the mapping's, and the restored image of a restore path (encoder,
    mapping, decoder, and the detail path where it has one); mask None: the mapping's local branch only."""
    mean, _ = path.encoder(image)
    mapped = path.mapping(mean, None if mask is None else latent_mask(mask, mean.shape[-2:]))
    restored = path.decoder(mapped)
    if path.detail is not None:
        restored = path.detail(image, restored, mask)
    return mean, mapped, restored


class RestorerNetwork(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.scratch = ScratchDetector(config.scratch)
        self.encoder = Encoder(config.vae)
        self.mapping = Mapping(config.mapping, config.vae.latent_channels)
        self.decoder = Decoder(config.vae)
        self.detail = DetailPath(config.detail) if config.detail else None
        self.tone: ToneCorrection | None = None  # applied by the engine to the whole output (model/tone.py)
        self.strength: RestorationStrength | None = None  # and then this (model/strength.py)
        self.multiple = 2**config.vae.downsamples

    def with_tone(self, spatial: bool = True) -> "RestorerNetwork":
        """spatial False: the global transform only, as bundles made before the light field have it."""
        self.tone = ToneCorrection(self.config.tone, spatial=spatial)
        return self

    def with_strength(self) -> "RestorerNetwork":
        self.strength = RestorationStrength()
        return self

    def fast(self) -> "RestorerNetwork":
        """channels_last weights: several times faster convolutions on CPUs (oneDNN) and GPUs."""
        return self.to(memory_format=torch.channels_last)

    def folded(self) -> "RestorerNetwork":
        """A copy for inference with every batch norm folded into the convolution before it: the
        same function, one memory pass less per layer."""
        network = copy.deepcopy(self).eval()
        for module in network.modules():
            if isinstance(module, nn.Sequential):
                for i in range(len(module) - 1):
                    if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                        module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                        module[i + 1] = nn.Identity()
        return network.fast()

    def detect(self, image: torch.Tensor) -> torch.Tensor:
        """Damage mask (B x 1 x H x W, 0/1) of images in [-1, 1]."""
        return (torch.sigmoid(self.scratch(luminance(image)).float()) > self.config.scratch.threshold).float()

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1], H and W multiples of 2**downsamples; mask None: the local branch only."""
        return restore_with_latents(self, image, mask)[2]

    def bundle(self) -> dict[str, Any]:
        return {"format": BUNDLE_FORMAT, "config": self.config.model_dump_json(),
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()}}

    @classmethod
    def from_bundle(cls, bundle: dict[str, Any]) -> "RestorerNetwork":
        if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"not an oldphoto restorer bundle (expected format {BUNDLE_FORMAT!r})")
        return cls.from_weights(ModelConfig.model_validate_json(bundle["config"]), bundle["state_dict"])

    @classmethod
    def from_weights(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> "RestorerNetwork":
        """The network for inference; with the tone correction and the strength the weights carry, if
        any (the light field only where they have one: weights made before it have the global transform)."""
        network = cls(config)
        if any(k.startswith("tone.") for k in weights):
            network.with_tone(spatial=any(k.startswith("tone.field.") for k in weights))
        if any(k.startswith("strength.") for k in weights):
            network.with_strength()
        network.load_state_dict(weights)
        return network.eval().fast()



class DirectRestorer(nn.Module):
    """The ablation: the restore path's encoder, mapping and decoder, of the same compute, trained end
    to end from degraded to clean photographs instead of through the two VAEs' latent spaces. Its
    weights load into a RestorerNetwork (same names) beside a scratch detector."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.encoder = Encoder(config.vae)
        self.mapping = Mapping(config.mapping, config.vae.latent_channels)
        self.decoder = Decoder(config.vae)
        self.detail = DetailPath(config.detail) if config.detail else None

    forward = RestorerNetwork.forward


def assemble_restorer(present: set[str], load: Callable[[str], dict[str, Any]], init: RestorerNetwork | None = None,
                      ablation: bool = False, without: tuple[str, ...] = (), where: str = "the checkpoint folder") -> RestorerNetwork:
    """The restorer of one folder's stage checkpoints: present, the stages trained there; load(stage),
    a stage's saved state. Each part comes from the stage that supplies it (stages.sources); init,
    a restorer, supplies the parts that no stage there does, with its settings for them (a
    distilled path keeps its teacher's detector and threshold). ablation: the ablation's path
    beside the detector. without: optional parts to leave out."""
    chosen = sources(present, ablation, without)
    if not chosen and init is None:
        raise FileNotFoundError(f"{where} holds no trained stage (and no init restorer was given)")
    configs = {name: ModelConfig.model_validate_json(load(name)["config"]) for name in set(chosen.values())}
    weights: dict[str, torch.Tensor] = {}
    part_configs: dict[str, ModelConfig] = {}
    for part in sources(set(ORDER), ablation, without):  # every part such a restorer can have
        if part in chosen:
            module, prefix = STAGES[chosen[part]].parts[part]
            state = load(chosen[part])["trainer"]["modules"][module]
            weights |= {f"{part}.{k.removeprefix(prefix)}": v for k, v in state.items() if k.startswith(prefix)}
            part_configs[part] = configs[chosen[part]]
        elif init is not None and (held := {k: v for k, v in init.state_dict().items() if k.startswith(f"{part}.")}):
            weights |= held
            part_configs[part] = init.config
        elif part not in OPTIONAL_PARTS:
            stage = first_yielding(part, ablation)
            raise FileNotFoundError(f"{where} has no {stage} checkpoint: the restorer needs its {stage} stage trained")
    networks = {part_configs[p].model_dump_json(include={"vae", "mapping"}) for p in PATH}
    if len(networks) > 1:
        raise ValueError(f"the init restorer has networks of another configuration than {where}")
    base = next((configs[chosen[p]] for p in ("scratch", *PATH, "tone") if p in chosen), None) or init.config
    path = part_configs["encoder"]
    config = base.model_copy(update={"scratch": part_configs["scratch"].scratch, "vae": path.vae, "mapping": path.mapping,
                                     "detail": part_configs["detail"].detail if "detail" in part_configs else 0,
                                     "tone": part_configs["tone"].tone if "tone" in part_configs else base.tone})
    return RestorerNetwork.from_weights(config, weights)
