"""Trainers of the stages, in plain torch. Each holds its networks and optimizers, takes one
step on a batch, and saves and restores its whole state (networks, optimizers, scaler, step, RNG)
so that a killed run resumes where it stopped. DistributedDataParallel when torch.distributed is up."""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .blocks import ResidualBlock, luminance
from .config import ModelConfig
from .device import autocast
from .discriminators import LatentDiscriminator, MultiscaleDiscriminator
from .engine import Restorer
from .losses import VGGLoss, bce_dice, feature_matching, kl_divergence, lsgan, ssim
from .mapping import Mapping, latent_mask
from .restorer import DetailPath, DirectRestorer, restore_with_latents
from .scratch import ScratchDetector
from .stages import STAGES
from .strength import RestorationStrength, blend
from .tone import ToneCorrection, thumbnail
from .vae import VAE

Batch = dict[str, torch.Tensor]


def _distributed(module: nn.Module, device: torch.device) -> nn.Module:
    if dist.is_available() and dist.is_initialized():
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    return module


@dataclass
class Game:
    """One adversarial game of a step: the discriminator (a module the stage trains) learns to tell
    real from fake, then scores the fake for the generator's `term`. image: a multi-scale image
    discriminator, whose features are also matched (and VGG, when configured); else one score map."""

    discriminator: str
    real: torch.Tensor
    fake: torch.Tensor
    term: str = "gan"
    image: bool = True


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] (C x H x W or B x C x H x W) -> uint8 levels, channels last."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().byte().movedim(-3, -1).cpu().numpy()


class StageTrainer:
    """Shared machinery: optimizers, mixed precision, state. Subclasses give build() and losses();
    what each stage trains on and yields is declared in model/stages.py."""

    # Cosine decay of the learning rate to zero over config.train.steps (from the step count, so a
    # resumed run follows the same schedule); the other stages keep it constant, as the paper's do.
    decays = False
    # Batch norm keeps its running statistics (eval mode) while the weights train: a fine-tune on a
    # few whole photos a batch would otherwise pull them away from what the path was trained with.
    frozen_statistics = False

    def __init__(self, config: ModelConfig, device: torch.device, dtype: torch.dtype,
                 frozen: dict[str, nn.Module] | None = None, vgg: VGGLoss | None = None):
        declared = {s.trainer: name for name, s in STAGES.items()}
        self.stage = next(declared[c.__name__] for c in type(self).__mro__ if c.__name__ in declared)
        self.config, self.device, self.dtype = config, device, dtype
        self.w = config.train.weights
        self.vgg = vgg.to(device) if vgg is not None else None
        # channels_last: several times faster convolutions on CPUs (oneDNN) and tensor cores alike.
        self.frozen = {k: m.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
                       for k, m in (frozen or {}).items()}
        self.trained: dict[str, nn.Module] = {k: m.to(device, memory_format=torch.channels_last)
                                              for k, m in self.build().items()}
        self.wrapped = {k: _distributed(m, device) for k, m in self.trained.items()}
        self.optimizers = {k: torch.optim.Adam(m.parameters(), lr=config.train.lr, betas=config.train.betas)
                           for k, m in self.trained.items()}
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.step_count = 0

    def build(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], list[Game]]:
        """The generator's terms of one batch (named as their weights in LossWeights), and the
        adversarial games it plays; step() plays them and updates the generator."""
        raise NotImplementedError

    def autocast(self):
        return autocast(self.device, self.dtype)

    def _update(self, name: str, loss: torch.Tensor) -> None:
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)

    def step(self, batch: Batch) -> dict[str, float]:
        for module in self.trained.values():
            module.train(not self.frozen_statistics)
        if self.decays:
            progress = min(self.step_count / self.config.train.steps, 1.0)
            for optimizer in self.optimizers.values():
                for group in optimizer.param_groups:
                    group["lr"] = self.config.train.lr * 0.5 * (1 + math.cos(math.pi * progress))
        batch = {k: v.to(self.device, non_blocking=True, memory_format=torch.channels_last) for k, v in batch.items()}
        terms, games = self.losses(batch)
        metrics = {}
        for game in games:  # each discriminator learns first, then scores the generator
            metrics[game.discriminator.removeprefix("image_")] = self._discriminator_step(game)
            terms |= self._generator_terms(game)
        # A term without a weight in LossWeights is a stage's only loss: it counts once.
        total = sum(getattr(self.w, k, 1.0) * v for k, v in terms.items())
        self._update(self.generator, total)
        self.scaler.update()
        self.step_count += 1
        return {"total": float(total.detach()), **metrics, **{k: float(v.detach()) for k, v in terms.items()}}

    @property
    def generator(self) -> str:
        """The module the stage trains; the others it holds are its discriminators."""
        return next(name for name in self.trained if not name.endswith("discriminator"))

    def _discriminator_step(self, game: Game) -> float:
        """One least-squares update of the game's discriminator on real and fake in one forward pass
        (one pass, so that DistributedDataParallel sees each parameter once per backward)."""
        n = len(game.real)
        with self.autocast():
            scores = self.wrapped[game.discriminator](torch.cat([game.real, game.fake]).detach())
            if game.image:  # the multi-scale discriminator: every scale's features, split alike
                real, fake = [[s[:n] for s in scale] for scale in scores], [[s[n:] for s in scale] for scale in scores]
            else:
                real, fake = scores[:n], scores[n:]
            loss = 0.5 * (lsgan(real, 1.0) + lsgan(fake, 0.0))
        self._update(game.discriminator, loss)
        return float(loss.detach())

    def _generator_terms(self, game: Game) -> dict[str, torch.Tensor]:
        """The generator's GAN term, and for images its discriminator feature matching and VGG terms;
        the discriminator is used unwrapped and frozen here, so that it takes no gradient from them."""
        discriminator = self.trained[game.discriminator].requires_grad_(False)
        with self.autocast():
            fake_scores = discriminator(game.fake)
            terms = {game.term: lsgan(fake_scores, 1.0)}
            if game.image:
                with torch.no_grad():
                    real_features = discriminator(game.real)
                terms["feature_matching"] = feature_matching(fake_scores, real_features)
                if self.vgg is not None:
                    terms["vgg"] = self.vgg(game.fake, game.real)
        discriminator.requires_grad_(True)
        return terms

    # --- state ---
    def state_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "step": self.step_count,
                "modules": {k: m.state_dict() for k, m in self.trained.items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["stage"] != self.stage:
            raise ValueError(f"checkpoint of stage {state['stage']!r} given to the {self.stage!r} trainer")
        for k, m in self.trained.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.step_count = state["step"]

    @torch.no_grad()
    def preview(self, batch: Batch) -> np.ndarray:
        """A grid, one row per sample (at most 4): input | output(s) | target, uint8."""
        batch = {k: v[:4].to(self.device) for k, v in batch.items()}
        for module in self.trained.values():
            module.eval()
        with self.autocast():
            columns = self.preview_columns(batch)
        rows = torch.cat([c.float().expand(-1, 3, -1, -1) if c.shape[1] == 1 else c.float() for c in columns], dim=3)
        grid = torch.cat(list(rows), dim=1)
        return to_uint8(grid)

    def preview_columns(self, batch: Batch) -> list[torch.Tensor]:
        raise NotImplementedError


class VAETrainer(StageTrainer):
    """vae_b: clean photos. KL + L1 reconstruction + image GAN with feature matching (+ VGG)."""

    def build(self) -> dict[str, nn.Module]:
        return {"vae": VAE(self.config.vae), "image_discriminator": MultiscaleDiscriminator(self.config.discriminator)}

    def images(self, batch: Batch) -> torch.Tensor:
        return batch["clean"]

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], list[Game]]:
        x = self.images(batch)
        with self.autocast():
            recon, _, mean, log_variance = self.wrapped["vae"](x)
            terms = {"kl": kl_divergence(mean.float(), log_variance.float()), "l1": nn.functional.l1_loss(recon.float(), x)}
        latent_terms, latent_games = self.latent_losses(mean, batch)
        return terms | latent_terms, [Game("image_discriminator", x, recon), *latent_games]

    def latent_losses(self, mean: torch.Tensor, batch: Batch) -> tuple[dict[str, torch.Tensor], list[Game]]:
        return {}, []

    def preview_columns(self, batch: Batch) -> list[torch.Tensor]:
        x = self.images(batch)
        return [x, self.trained["vae"](x)[0], x]


class VAEATrainer(VAETrainer):
    """vae_a: synthetic degraded photos and real old photos together, plus the latent adversarial loss
    that makes their latents indistinguishable (closing the domain gap between X and R)."""

    def build(self) -> dict[str, nn.Module]:
        modules = super().build()
        # Fine-tune the init restorer's E_RX when it has this VAE's shape: the latents its mapping and
        # decoder were trained on move only as far as aligning the real photographs takes them. The
        # decoder starts as its G_Y, which already turns such latents into photographs: a random one
        # would pull the encoder's latents far before it learned anything.
        start = self.frozen.get("restorer")
        if start is not None and start.config.vae != self.config.vae:
            start = None
        if self.w.anchor_l1 and start is None:
            raise ValueError(f"anchor_l1 = {self.w.anchor_l1} holds vae_a to the init's E_RX, but no init of this "
                             f"VAE's shape was given (--init a restorer with vae {self.config.vae.model_dump()})")
        if start is not None:
            modules["vae"].encoder.load_state_dict(start.encoder.state_dict())
            modules["vae"].decoder.load_state_dict(start.decoder.state_dict())
        modules["latent_discriminator"] = LatentDiscriminator(self.config.vae.latent_channels, 4 * self.config.discriminator.channels)
        return modules

    def images(self, batch: Batch) -> torch.Tensor:
        return torch.cat([batch["degraded"], batch["real"]])

    def latent_losses(self, mean: torch.Tensor, batch: Batch) -> tuple[dict[str, torch.Tensor], list[Game]]:
        # Real old photos' latents are "real", synthetic ones "fake": the encoder learns to make them alike.
        n = len(batch["degraded"])
        terms = {}
        if self.w.anchor_l1:
            with torch.no_grad(), self.autocast():
                anchor = self.frozen["restorer"].encoder(batch["degraded"])[0]
            terms["anchor_l1"] = nn.functional.l1_loss(mean[:n].float(), anchor.float())
        return terms, [Game("latent_discriminator", real=mean[n:], fake=mean[:n], term="latent_gan", image=False)]


class MappingTrainer(StageTrainer):
    """mapping: VAE_A's encoder and VAE_B frozen; T(E_RX(x), mask) should match E_Y(y) in latent
    space, and decode through G_Y to an image that matches G_Y(E_Y(y)) (GAN, features, VGG) and the
    clean photo itself (clean_l1)."""

    def build(self) -> dict[str, nn.Module]:
        return {"mapping": Mapping(self.config.mapping, self.config.vae.latent_channels),
                "image_discriminator": MultiscaleDiscriminator(self.config.discriminator)}

    def _latents(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.no_grad(), self.autocast():
            z_x = self.frozen["vae_a"].encoder(batch["degraded"])[0].float()
            z_y = self.frozen["vae_b"].encoder(batch["clean"])[0].float()
            target = self.frozen["vae_b"].decoder(z_y).float()
        return z_x, z_y, target, latent_mask(batch["mask"], z_x.shape[-2:])

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], list[Game]]:
        z_x, z_y, target, mask = self._latents(batch)
        with self.autocast():
            z = self.wrapped["mapping"](z_x, mask)
            out = self.frozen["vae_b"].decoder(z)
            terms = {"latent_l1": nn.functional.l1_loss(z.float(), z_y), "clean_l1": nn.functional.l1_loss(out.float(), batch["clean"])}
        return terms, [Game("image_discriminator", target, out)]

    def preview_columns(self, batch: Batch) -> list[torch.Tensor]:
        z_x, _, _, mask = self._latents(batch)
        return [batch["degraded"], self.frozen["vae_b"].decoder(self.trained["mapping"](z_x, mask)), batch["clean"]]


class ScratchTrainer(StageTrainer):
    """scratch: the U-Net learns the synthetic damage masks from the grayscale degraded photo."""

    def build(self) -> dict[str, nn.Module]:
        # Fine-tune the init restorer's detector when it has this training's shape; else a new detector
        # (a wider one beside an existing restore path, say). Settings that are not weights may differ.
        start = self.frozen.get("restorer")
        shape = ("channels", "depth", "scale")
        if start is None or any(getattr(start.config.scratch, k) != getattr(self.config.scratch, k) for k in shape):
            return {"detector": ScratchDetector(self.config.scratch)}
        return {"detector": copy.deepcopy(start.scratch).requires_grad_(True)}

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], list[Game]]:
        with self.autocast():
            logits = self.wrapped["detector"](luminance(batch["degraded"]))
        return {"bce_dice": bce_dice(logits, batch["mask"])}, []

    def preview_columns(self, batch: Batch) -> list[torch.Tensor]:
        logits = self.trained["detector"](luminance(batch["degraded"]))
        return [batch["degraded"], torch.sigmoid(logits.float()) * 2 - 1, batch["mask"] * 2 - 1]


class DirectTrainer(StageTrainer):
    """direct (the ablation): degraded photo and its true mask straight to the clean photo, with the
    mapping's image terms (clean L1, GAN, feature matching, VGG)."""

    def build(self) -> dict[str, nn.Module]:
        return {"network": DirectRestorer(self.config), "image_discriminator": MultiscaleDiscriminator(self.config.discriminator)}

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], list[Game]]:
        with self.autocast():
            out = self.wrapped["network"](batch["degraded"], batch["mask"])
            terms = {"clean_l1": nn.functional.l1_loss(out.float(), batch["clean"])}
        return terms, [Game("image_discriminator", batch["clean"], out)]

    def preview_columns(self, batch: Batch) -> list[torch.Tensor]:
        return [batch["degraded"], self.trained["network"](batch["degraded"], batch["mask"]), batch["clean"]]


class RefinedPath(nn.Module):
    """The part of the restore path that refine trains: the latent mapping, G_Y, and the detail path
    where the restorer has one (or the config asks for one)."""

    def __init__(self, mapping: nn.Module, decoder: nn.Module, detail: nn.Module | None):
        super().__init__()
        self.mapping, self.decoder, self.detail = mapping, decoder, detail

    def forward(self, image: torch.Tensor, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        restored = self.decoder(self.mapping(z, latent_mask(mask, z.shape[-2:])))
        return restored if self.detail is None else self.detail(image, restored, mask)


class RefineTrainer(StageTrainer):
    """refine: the restore path of the trained stages, fine-tuned end to end on the clean photo. VAE_A's
    encoder stays frozen, so real photographs' latents stay where vae_a put them beside the synthetic
    ones (the domain alignment the method rests on); the mapping and G_Y, trained apart with G_Y fixed,
    are fitted to each other. Clean L1 (and VGG), no GAN: this stage is for fidelity, and its learning
    rate decays to zero."""

    decays = True

    def build(self) -> dict[str, nn.Module]:
        path = self.frozen["restorer"]
        # The restorer's detail path, widened where the config asks (it starts restoring as before), or
        # a new one (it starts as the identity) where the restorer has none and the config asks.
        detail = (path.detail.widened(self.config.detail) if path.detail is not None else
                  DetailPath(self.config.detail) if self.config.detail else None)
        return {"network": RefinedPath(copy.deepcopy(path.mapping), copy.deepcopy(path.decoder), detail).requires_grad_(True)}

    def _restore(self, batch: Batch, network: nn.Module) -> torch.Tensor:
        with torch.no_grad(), self.autocast():
            z_x = self.frozen["restorer"].encoder(batch["degraded"])[0]
        with self.autocast():
            return network(batch["degraded"], z_x, batch["mask"])

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], list[Game]]:
        out = self._restore(batch, self.wrapped["network"]).float()
        terms = {"clean_l1": nn.functional.l1_loss(out, batch["clean"])}
        if self.vgg is not None:
            terms["vgg"] = self.vgg(out, batch["clean"])
        return terms, []

    def preview_columns(self, batch: Batch) -> list[torch.Tensor]:
        return [batch["degraded"], self._restore(batch, self.trained["network"]), batch["clean"]]


class PolishTrainer(RefineTrainer):
    """polish: the parts refine trains, of a finished restorer, fine-tuned on its output as the engine
    gives it: with its own detector's mask, then through its tone correction (frozen), so that the
    path learns what the tone makes of it. L1 and SSIM of the luminance against the clean photo."""

    frozen_statistics = True

    def _restore(self, batch: Batch, network: nn.Module) -> torch.Tensor:
        path = self.frozen["restorer"]
        with torch.no_grad(), self.autocast():
            mask = path.detect(batch["degraded"])
            z = path.encoder(batch["degraded"])[0]
        with self.autocast():
            out = network(batch["degraded"], z, mask).float()
        return out if path.tone is None else path.tone(thumbnail(batch["degraded"]), out)

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], list[Game]]:
        out, clean = self._restore(batch, self.wrapped["network"]), batch["clean"].float()
        return {"clean_l1": nn.functional.l1_loss(out, clean), "ssim": 1 - ssim(evaluated_luma(out), evaluated_luma(clean))}, []


def evaluated_luma(image: torch.Tensor) -> torch.Tensor:
    """BT.601 Y on a 0-1 scale of images in [-1, 1], as the evaluation measures it (model/metrics.py)."""
    return (16 + 219 * (luminance(image) + 1) / 2) / 255


class DetailTrainer(StageTrainer):
    """detail: the restore path frozen; its detail path (the init's, or a new one as wide as the
    config's detail) learns the clean photo from the input and the decoded restoration. The mask is
    the restorer's own detector's, as at inference, so that it learns to leave alone what the
    detector marks on an undamaged print. The pairs' share of undamaged photos teaches it to keep
    a good print's pixels."""

    decays = True

    def build(self) -> dict[str, nn.Module]:
        path = self.frozen["restorer"]
        if not self.config.detail:
            raise ValueError("the detail stage needs the config's detail (the detail path's width) above 0")
        return {"detail": DetailPath(self.config.detail) if path.detail is None else path.detail.widened(self.config.detail)}

    def _decoded(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The detector's mask and the restore path's output before the detail path."""
        path = self.frozen["restorer"]
        with torch.no_grad(), self.autocast():
            mask = path.detect(batch["degraded"])
            z = path.encoder(batch["degraded"])[0]
            return mask, path.decoder(path.mapping(z, latent_mask(mask, z.shape[-2:])))

    def _restore(self, batch: Batch, detail: nn.Module) -> torch.Tensor:
        mask, decoded = self._decoded(batch)
        with self.autocast():
            return detail(batch["degraded"], decoded, mask)

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], list[Game]]:
        return {"clean_l1": nn.functional.l1_loss(self._restore(batch, self.wrapped["detail"]).float(), batch["clean"])}, []

    def preview_columns(self, batch: Batch) -> list[torch.Tensor]:
        return [batch["degraded"], self._decoded(batch)[1], self._restore(batch, self.trained["detail"]), batch["clean"]]


@torch.no_grad()
def inherit_weights(student: nn.Module, teacher: nn.Module) -> None:
    """Start a narrower, shallower network from a trained one: each tensor takes the teacher's first
    channels (the same ones in every layer, so residual sums stay aligned), and a sequence with fewer
    residual blocks takes the teacher's first blocks, its other layers matched in order."""
    for name, tensor in [*student.named_parameters(recurse=False), *student.named_buffers(recurse=False)]:
        source = getattr(teacher, name)
        tensor.copy_(source[tuple(slice(0, n) for n in tensor.shape)] if tensor.ndim else source)
    if isinstance(student, nn.Sequential):
        def split(sequence: nn.Sequential) -> tuple[list[nn.Module], list[nn.Module]]:
            return [m for m in sequence if isinstance(m, ResidualBlock)], [m for m in sequence if not isinstance(m, ResidualBlock)]
        (student_blocks, student_rest), (teacher_blocks, teacher_rest) = split(student), split(teacher)
        if len(student_blocks) > len(teacher_blocks) or len(student_rest) != len(teacher_rest):
            raise ValueError("the student's layers do not follow the teacher's: it may only be narrower and have fewer blocks")
        pairs = [*zip(student_blocks, teacher_blocks), *zip(student_rest, teacher_rest)]
    else:
        pairs = [(child, getattr(teacher, name, None)) for name, child in student.named_children()]
    for student_child, teacher_child in pairs:
        if teacher_child is not None:  # a part the teacher lacks (a detail path) keeps its own start
            inherit_weights(student_child, teacher_child)


class StudentPath(DirectRestorer):
    """The restore path being distilled, with its latents (one forward, as DistributedDataParallel wants)."""

    forward = restore_with_latents


class DistillTrainer(StageTrainer):
    """distill: this config's restore path, lighter than the teacher's (the init restorer), trained
    to do what the teacher does: its output and both latents (the encoder's, the mapping's) on the
    synthetic pairs and on real old photographs, where the teacher's detector gives the mask, plus
    the clean photo's L1 on the pairs. The latents keep the student in the teacher's latent spaces,
    and the real photographs carry over how the teacher treats them (the domain that vae_a aligned).
    The student starts from the teacher's weights (inherit_weights); the rate decays to zero."""

    decays = True

    def build(self) -> dict[str, nn.Module]:
        teacher = self.frozen["teacher"]
        if teacher.config.vae.latent_channels != self.config.vae.latent_channels:
            raise ValueError("the student's latent needs as many channels as the teacher's, whose latents it learns")
        student = StudentPath(self.config)
        inherit_weights(student, teacher)
        return {"network": student}

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], list[Game]]:
        teacher = self.frozen["teacher"]
        with torch.no_grad(), self.autocast():
            real_mask = teacher.detect(batch["real"])
            images = torch.cat([batch["degraded"], batch["real"]])
            masks = torch.cat([batch["mask"], real_mask])
            targets = [t.float() for t in restore_with_latents(teacher, images, masks)]
        with self.autocast():
            mean, mapped, out = (t.float() for t in self.wrapped["network"](images, masks))
        n = len(batch["degraded"])
        l1 = nn.functional.l1_loss
        terms = {"clean_l1": l1(out[:n], batch["clean"]), "teacher_l1": l1(out, targets[2]),
                 "teacher_latent_l1": l1(mean, targets[0]) + l1(mapped, targets[1])}
        return terms, []

    def preview_columns(self, batch: Batch) -> list[torch.Tensor]:
        teacher = self.frozen["teacher"]
        return [batch["degraded"], restore_with_latents(teacher, batch["degraded"], batch["mask"])[2],
                self.trained["network"](batch["degraded"], batch["mask"])[2], batch["clean"]]


class ToneTrainer(StageTrainer):
    """tone: the restore path frozen; the tone correction of its output (from thumbnails of the
    degraded photo and the output) should bring the output to the clean photo, in mean squared error.
    The restore path is given its own detector's mask, as at inference: the output the tone
    correction learns on is the one it corrects. It goes on from the restorer's tone correction
    where that has a light field and the config's width (a restore path changed under it needs a
    fine-tune, not a new start), else it starts as the identity; the rate decays to zero."""

    decays = True

    def build(self) -> dict[str, nn.Module]:
        tone, width = self.frozen["restorer"].tone, self.config.tone
        if tone is not None and tone.field is not None and tone.features[0].out_channels == width:
            return {"tone": copy.deepcopy(tone).requires_grad_(True)}
        return {"tone": ToneCorrection(width)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        tone = state["modules"]["tone"]
        if not any(k.startswith("field.") for k in tone):
            # Trained before the light field existed: it goes on from there with the field at the
            # identity, and Adam starts afresh (its moments were for the old parameters only).
            state = state | {"modules": {"tone": self.trained["tone"].state_dict() | tone},
                             "optimizers": {"tone": self.optimizers["tone"].state_dict()}}
        super().load_state_dict(state)

    def _restored(self, batch: Batch) -> torch.Tensor:
        path = self.frozen["restorer"]
        with torch.no_grad(), self.autocast():
            return path(batch["degraded"], path.detect(batch["degraded"])).float()

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], list[Game]]:
        corrected = self.wrapped["tone"](thumbnail(batch["degraded"]), self._restored(batch))
        return {"mse": nn.functional.mse_loss(corrected, batch["clean"])}, []

    def preview_columns(self, batch: Batch) -> list[torch.Tensor]:
        restored = self._restored(batch)
        return [batch["degraded"], restored, self.trained["tone"](thumbnail(batch["degraded"]), restored), batch["clean"]]


class StrengthTrainer(StageTrainer):
    """strength: the whole restorer frozen, run by the engine on each batch as it runs at inference
    (detection, tone, the original's colours); the strength, from the input and that output, should
    bring their blend to the clean photo, in mean squared error. The pairs' share of undamaged photos
    teaches it to leave a good print alone. Goes on from the restorer's strength where it has one."""

    decays = True

    def build(self) -> dict[str, nn.Module]:
        restorer = copy.deepcopy(self.frozen["restorer"])
        strength, restorer.strength = restorer.strength, None  # the engine's output is the unblended one
        self.engine = Restorer(restorer, str(self.device), "auto")
        return {"strength": copy.deepcopy(strength).requires_grad_(True) if strength is not None else RestorationStrength()}

    def _restored(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The engine's output and damage mask of the batch's degraded photos."""
        images = to_uint8(batch["degraded"].float())
        with torch.autocast(self.device.type, enabled=False):  # the engine chooses its own precision (preview runs under autocast)
            results = self.engine.restore_many(list(images))
        restored = torch.from_numpy(np.stack([r for r, _, _ in results])).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        mask = torch.from_numpy(np.stack([m for _, m, _ in results]))[:, None].float()
        return restored.to(self.device), mask.to(self.device)

    @staticmethod
    def _blended(batch: Batch, restored: torch.Tensor, mask: torch.Tensor, strength: nn.Module) -> torch.Tensor:
        degraded = batch["degraded"].float()
        return blend(degraded, restored, mask, strength(degraded, restored))

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], list[Game]]:
        blended = self._blended(batch, *self._restored(batch), self.wrapped["strength"])
        return {"mse": nn.functional.mse_loss(blended, batch["clean"].float())}, []

    def preview_columns(self, batch: Batch) -> list[torch.Tensor]:
        restored, mask = self._restored(batch)  # the engine once per preview, not once per column
        return [batch["degraded"], restored, self._blended(batch, restored, mask, self.trained["strength"]), batch["clean"]]


def check_ranks_agree(trainer: StageTrainer) -> None:
    """Under DistributedDataParallel every rank must end with the same weights (gradients are
    averaged, so the updates are the same): a rank that trained apart is an error, not a checkpoint."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    sums = torch.stack([p.detach().double().sum() for m in trainer.trained.values() for p in m.parameters()])
    sums = sums.to(trainer.device)
    gathered = [torch.empty_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    differing = [rank for rank, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
    if differing:
        raise RuntimeError(f"{trainer.stage}: ranks {differing} ended with weights other than rank 0's")


def save_state(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_state(data: bytes) -> dict[str, Any]:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def train_loop(trainer: StageTrainer, next_batch: Callable[[], Batch], steps: int, *,
               on_metrics: Callable[[int, dict[str, float]], None] = lambda step, metrics: None,
               on_preview: Callable[[int, np.ndarray], None] = lambda step, grid: None,
               on_checkpoint: Callable[[int], None] = lambda step: None) -> None:
    """Steps from trainer.step_count up to steps, calling back to log, preview and checkpoint."""
    t = trainer.config.train
    started, done_since = time.perf_counter(), 0
    while trainer.step_count < steps:
        batch = next_batch()
        metrics = trainer.step(batch)
        done_since += 1
        step = trainer.step_count
        if step % t.log_every == 0 or step == steps:
            seconds = time.perf_counter() - started
            metrics["samples_per_second"] = done_since * len(next(iter(batch.values()))) / max(seconds, 1e-9)
            metrics["lr"] = trainer.optimizers[next(iter(trainer.optimizers))].param_groups[0]["lr"]
            on_metrics(step, metrics)
            started, done_since = time.perf_counter(), 0
        if step % t.image_every == 0 or step == steps:
            on_preview(step, trainer.preview(batch))
        if step % t.checkpoint_every == 0 or step == steps:
            on_checkpoint(step)
