"""The training stages, each declared once: the data it trains on, what it starts from, and which parts
of the restore path its weights become. The trainers (model/train.py), the training tasks and flow,
the restorer's assembly (model/restorer.py) and scheduled retraining all read these declarations, so a
new stage is its trainer plus one entry here. Plain data: the command line reads it without torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# The parts of the restore path, as RestorerNetwork names them: the scratch detector, E_RX (VAE_A's
# encoder), the latent mapping, G_Y (VAE_B's decoder), the detail path past the latent, the tone
# correction of the output and the strength of the whole restoration, in the order they apply. A
# restorer may go without the optional ones.
PARTS = ("scratch", "encoder", "mapping", "decoder", "detail", "tone", "strength")
PATH = ("encoder", "mapping", "decoder")
OPTIONAL_PARTS = ("detail", "tone", "strength")


@dataclass(frozen=True)
class Stage:
    name: str
    trainer: str  # its trainer class in model/train.py
    # restorer part -> (the trainer's module that holds it, the prefix of the part's weights in it)
    parts: dict[str, tuple[str, str]]
    needs: tuple[str, ...] = ("pairs",)  # batches: "pairs" (synthetic), "real" (real old photographs)
    # vaes: VAE_A and VAE_B of the same folder, frozen; restorer: the restorer of the stages before
    # it (init standing in for those missing), frozen, without the parts applied after its own; init:
    # the init restorer when given (a detector or an encoder to fine-tune); teacher: the init
    # restorer, which must be given.
    starts_from: Literal["vaes", "restorer", "init", "teacher"] | None = None
    through: tuple[str, ...] = ()  # parts applied after its own that it learns through, frozen
    optional: bool = False  # a folder may lack it (trained before the stage existed): the restorer goes without
    default: bool = True  # trained by `oldphoto train` when no stages are named
    ablation: bool = False  # its restorer is itself beside the detector; never a part of the triplet's
    doc: str = field(default="", compare=False)

    def trainer_class(self) -> type:
        from . import train  # torch, only where a stage is trained

        return getattr(train, self.trainer)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("vae_a", "VAEATrainer", {"encoder": ("vae", "encoder.")}, needs=("pairs", "real"), starts_from="init",
          doc="VAE of old photographs, with the latent GAN that aligns real and synthetic ones (its encoder "
              "starts from the init's E_RX when one of its shape is given)"),
    Stage("vae_b", "VAETrainer", {"decoder": ("vae", "decoder.")}, doc="VAE of clean photographs"),
    Stage("mapping", "MappingTrainer", {"mapping": ("mapping", "")}, starts_from="vaes",
          doc="latent translation with the partial non-local block, both VAEs frozen"),
    Stage("scratch", "ScratchTrainer", {"scratch": ("detector", "")}, starts_from="init",
          doc="scratch-detection U-Net (fine-tunes the init's detector when one is given)"),
    Stage("distill", "DistillTrainer", {p: ("network", f"{p}.") for p in (*PATH, "detail")}, needs=("pairs", "real"),
          starts_from="teacher", default=False, doc="a lighter restore path learning the init restorer's"),
    Stage("refine", "RefineTrainer", {p: ("network", f"{p}.") for p in ("mapping", "decoder", "detail")},
          starts_from="restorer", optional=True, doc="mapping, G_Y and the detail path fine-tuned end to end, E_RX frozen"),
    Stage("detail", "DetailTrainer", {"detail": ("detail", "")}, starts_from="restorer", optional=True, default=False,
          doc="the detail path alone, the restore path frozen: what of the input to keep, per pixel (the init's, "
              "widened where the config's detail is wider)"),
    Stage("tone", "ToneTrainer", {"tone": ("tone", "")}, starts_from="restorer", optional=True,
          doc="colour transform and light field of the restored photo (goes on from the init's where it has one)"),
    Stage("polish", "PolishTrainer", {p: ("network", f"{p}.") for p in ("mapping", "decoder", "detail")},
          starts_from="restorer", through=("tone",), optional=True, default=False,
          doc="mapping, G_Y and the detail path of a finished restorer fine-tuned on its output as the engine "
              "gives it (its detector's mask, through its tone correction), in L1 and SSIM of the luminance"),
    Stage("strength", "StrengthTrainer", {"strength": ("strength", "")}, starts_from="restorer", optional=True, default=False,
          doc="how much of the restoration each photo gets, judged from crops of it and of the restorer's output"),
    Stage("direct", "DirectTrainer", {p: ("network", f"{p}.") for p in (*PATH, "detail")}, default=False, ablation=True,
          doc="the ablation: the same path trained directly from degraded to clean photographs"),
)}
ORDER = tuple(STAGES)  # dependency order: a stage may start from those before it
DEFAULT = tuple(name for name, s in STAGES.items() if s.default)
REQUIRED = tuple(name for name in DEFAULT if not STAGES[name].optional)  # a triplet restorer needs these


def _in_restorer(stage: Stage, ablation: bool) -> bool:
    """The triplet's restorer takes no ablation's weights; the ablation's takes the triplet's detector."""
    return stage.ablation == ablation or stage.name == "scratch"


def sources(present: set[str], ablation: bool = False, without: tuple[str, ...] = ()) -> dict[str, str]:
    """Which of the present stages supplies each part of the restorer: the last in ORDER that yields
    it (refine's mapping over the mapping stage's, say). ablation: the ablation's path beside the
    detector, no tone or strength; without: optional parts to leave out. Parts that no present stage
    yields are left out."""
    wanted = ("scratch", *PATH, "detail") if ablation else tuple(p for p in PARTS if p not in without)
    found: dict[str, str] = {}
    for name in ORDER:
        if name in present and _in_restorer(STAGES[name], ablation):
            found |= {part: name for part in STAGES[name].parts if part in wanted}
    return found


def applied_after(stage: str) -> tuple[str, ...]:
    """The optional parts applied after the last of a stage's own, less those it learns through: a
    stage that starts from the restorer learns on its output without them (the tone stage's
    restorer has no strength; polish's has its tone correction, but no strength)."""
    after = PARTS[PARTS.index(list(STAGES[stage].parts)[-1]) + 1 :]
    return tuple(part for part in after if part not in STAGES[stage].through)


def first_yielding(part: str, ablation: bool = False) -> str:
    """The stage to train for a part that nothing supplies (vae_a for the encoder, say)."""
    return next(name for name, s in STAGES.items() if part in s.parts and not s.optional and _in_restorer(s, ablation))
