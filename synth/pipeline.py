"""DegradationPipeline: a typed, seeded recipe of operations that records exactly what it applied.

A config is a list of stages applied in order (the capture of the picture, the ageing of the print,
damage to it, the final scan); each stage holds operations, each applied with its probability, in
random order when the stage says `shuffle` (as the paper's recipe does). An operation's parameters
are fixed values, ranges `[lo, hi]` sampled uniformly (integers when both ends are integers), or
`{"choice": [...]}`. All randomness comes from the one generator handed in, so a sample is rebuilt
exactly from (source image, seed, config); the record lists the operations with the values drawn.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from . import ageing, blur, compression, damage, noise
from ._util import Image, Mask, check_image
from .corruptions import NAMES as CORRUPTION_NAMES
from .corruptions import corruption

# name -> (function, returns a mask)
OPERATIONS: dict[str, tuple[Callable[..., Any], bool]] = {
    "gaussian_blur": (blur.gaussian_blur, False),
    "defocus_blur": (blur.defocus_blur, False),
    "motion_blur": (blur.motion_blur, False),
    "gaussian_noise": (noise.gaussian_noise, False),
    "poisson_noise": (noise.poisson_noise, False),
    "speckle_noise": (noise.speckle_noise, False),
    "salt_pepper_noise": (noise.salt_pepper_noise, False),
    "film_grain": (noise.film_grain, False),
    "jpeg": (compression.jpeg, False),
    "resample": (compression.resample, False),
    "fade": (ageing.fade, False),
    "tone": (ageing.tone, False),
    "uneven_illumination": (ageing.uneven_illumination, False),
    "vignette": (ageing.vignette, False),
    "halftone": (ageing.halftone, False),
    "silvering": (ageing.silvering, False),
    "corruption": (corruption, False),
    "scratches": (damage.scratches, True),
    "cracks": (damage.cracks, True),
    "folds": (damage.folds, True),
    "dust": (damage.dust, True),
    "paper_texture": (damage.paper_texture, True),
    "tears": (damage.tears, True),
    "foxing": (damage.foxing, True),
    "flaking": (damage.flaking, True),
}

ParamSpec = bool | int | float | str | list[Any] | dict[str, list[Any]]


def _check_param(name: str, spec: Any) -> None:
    if isinstance(spec, list):
        if len(spec) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec):
            raise ValueError(f"parameter {name}: a range must be [lo, hi] numbers, got {spec!r}")
        if spec[0] > spec[1]:
            raise ValueError(f"parameter {name}: range {spec!r} has lo > hi")
    elif isinstance(spec, dict) and (set(spec) != {"choice"} or not spec["choice"]):
        raise ValueError(f"parameter {name}: expected {{'choice': [...]}} with at least one value, got {spec!r}")


def sample_param(spec: ParamSpec, rng: np.random.Generator) -> Any:
    if isinstance(spec, list):
        lo, hi = spec
        if isinstance(lo, int) and isinstance(hi, int):
            return int(rng.integers(lo, hi + 1))
        return float(rng.uniform(lo, hi))
    if isinstance(spec, dict):
        choices = spec["choice"]
        return choices[int(rng.integers(len(choices)))]
    return spec


class Op(BaseModel):
    """One operation with its probability, or a choice of exactly one of several (`one_of`)."""

    model_config = ConfigDict(extra="forbid")
    op: str | None = None
    one_of: list[Op] | None = None
    p: float = Field(1.0, ge=0.0, le=1.0)
    params: dict[str, ParamSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Op:
        if (self.op is None) == (self.one_of is None):
            raise ValueError("an operation names either `op` or `one_of`, not both or neither")
        if self.op is not None:
            if self.op not in OPERATIONS:
                raise ValueError(f"unknown operation {self.op!r}; known: {', '.join(sorted(OPERATIONS))}")
            signature = inspect.signature(OPERATIONS[self.op][0])
            accepted = list(signature.parameters)[2:]  # after (image, rng)
            unknown = set(self.params) - set(accepted)
            if unknown:
                raise ValueError(f"operation {self.op}: unknown parameters {sorted(unknown)}; accepted: {accepted}")
            missing = [n for n in accepted if signature.parameters[n].default is inspect.Parameter.empty
                       and n not in self.params]
            if missing:
                raise ValueError(f"operation {self.op}: missing parameters {missing}")
            for name, spec in self.params.items():
                _check_param(name, spec)
        return self


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    ops: list[Op]
    shuffle: bool = False


class DegradationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grayscale: float = Field(0.25, ge=0.0, le=1.0, description="share of samples (clean and degraded) made grayscale")
    untouched: float = Field(0.0, ge=0.0, le=1.0, description="share of samples left undegraded, so that a "
                             "restorer learns to leave a good print as it is")
    stages: list[Stage]

    @model_serializer(mode="wrap")
    def _without_unset_untouched(self, serialize):
        # Recipes from before `untouched` existed keep their fingerprints, and so their data sets.
        data = serialize(self)
        if not self.untouched:
            data.pop("untouched", None)
        return data

    @classmethod
    def load(cls, name_or_path: str | Path) -> DegradationConfig:
        """A named preset ('default', 'v2', 'corruptions') or a JSON file."""
        if str(name_or_path) in PRESETS:
            return PRESETS[str(name_or_path)]
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"degradation config {name_or_path!r}: neither a preset "
                                    f"({', '.join(PRESETS)}) nor a file")
        return cls.model_validate(json.loads(path.read_text()))


@dataclass
class Degraded:
    clean: Image  # the source after the sample-level choices (grayscale); the training target
    degraded: Image
    mask: Mask
    record: dict[str, Any]


class DegradationPipeline:
    def __init__(self, config: DegradationConfig | None = None):
        self.config = config or PRESETS["default"]

    def __call__(self, image: Image, rng: np.random.Generator) -> Degraded:
        check_image(image)
        gray = bool(rng.random() < self.config.grayscale)
        if gray and image.ndim == 3:
            image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        clean = image
        mask = np.zeros(image.shape[:2], bool)
        applied: list[dict[str, Any]] = []
        if self.config.untouched and rng.random() < self.config.untouched:  # no draw at 0: data sets stay as they were
            return Degraded(clean, image, mask, {"grayscale": gray, "ops": applied})
        for stage in self.config.stages:
            order = rng.permutation(len(stage.ops)) if stage.shuffle else range(len(stage.ops))
            for index in order:
                op = stage.ops[index]
                if rng.random() >= op.p:
                    continue
                while op.one_of is not None:
                    op = op.one_of[int(rng.integers(len(op.one_of)))]
                params = {name: sample_param(spec, rng) for name, spec in op.params.items()}
                function, has_mask = OPERATIONS[op.op]
                result = function(image, rng, **params)
                if has_mask:
                    image, op_mask = result
                    mask |= op_mask
                else:
                    image = result
                applied.append({"stage": stage.name, "op": op.op, "params": params})
        return Degraded(clean, image, mask, {"grayscale": gray, "ops": applied})


def _op(op: str, p: float = 1.0, /, **params: ParamSpec) -> Op:
    return Op(op=op, p=p, params=params)


DEFAULT = DegradationConfig(
    grayscale=0.25,
    stages=[
        Stage(name="capture", shuffle=True, ops=[
            Op(p=0.7, one_of=[
                _op("gaussian_blur", sigma=[0.4, 2.5]),
                _op("defocus_blur", radius=[0.8, 3.0]),
                _op("motion_blur", length=[2.0, 8.0], angle=[0.0, 180.0]),
            ]),
            _op("resample", 0.5, scale=[0.35, 1.0], down={"choice": ["bilinear", "bicubic"]},
                up={"choice": ["bilinear", "bicubic", "nearest"]}),
            Op(p=0.6, one_of=[
                _op("gaussian_noise", sigma=[2.0, 20.0], gray={"choice": [True, False]}),
                _op("speckle_noise", sigma=[3.0, 25.0]),
                _op("poisson_noise", peak=[15.0, 200.0], gray={"choice": [True, False]}),
                _op("salt_pepper_noise", amount=[0.0, 0.005]),
            ]),
        ]),
        Stage(name="print", ops=[
            _op("film_grain", 0.5, strength=[3.0, 14.0], size=[1.0, 2.5]),
            _op("fade", 0.6, contrast=[0.55, 0.95], lift=[0.0, 0.2]),
            _op("tone", 0.5, color={"choice": ["sepia", "sepia", "yellow", "cyan"]}, strength=[0.3, 0.9]),
            _op("uneven_illumination", 0.35, strength=[0.05, 0.25]),
            _op("vignette", 0.3, strength=[0.1, 0.5]),
            _op("halftone", 0.05, cell=[3.0, 6.0], angle=[0.0, 90.0], strength=[0.3, 0.8]),
            _op("paper_texture", 0.4, strength=[0.02, 0.06], scale=[1.5, 3.0]),
        ]),
        Stage(name="damage", ops=[
            _op("scratches", 0.6, count=[1, 8], width=[1.0, 2.0], bright=0.85, length=[0.3, 1.2],
                curvature=[0.0, 0.006]),
            # Up to 3.5 px at the 256 px of a training crop: real cracked prints show wide ones.
            _op("cracks", 0.35, count=[1, 3], branches=[2, 10], width=[1.0, 3.5], length=[0.2, 0.7],
                jaggedness=[0.2, 0.6], flakes=[0.0, 0.5]),
            _op("folds", 0.12, count=[1, 2], width=[1.0, 2.5], shading=[0.04, 0.15]),
            _op("dust", 0.6, specks=[3, 60], blotches=[0, 2], hairs=[0, 3], bright=[0.4, 0.9], size=[0.5, 1.2]),
        ]),
        Stage(name="scan", ops=[_op("jpeg", 0.7, quality=[40, 95])]),
    ],
)

# The paper's v2 recipe: four operations in random order, each with probability 0.7.
V2 = DegradationConfig(
    grayscale=0.1,
    stages=[Stage(name="v2", shuffle=True, ops=[
        _op("gaussian_blur", 0.7, sigma=[1.0, 5.0]),
        Op(p=0.7, one_of=[
            _op("gaussian_noise", sigma=[5.0, 50.0]),
            _op("speckle_noise", sigma=[5.0, 50.0]),
            _op("salt_pepper_noise", amount=[0.0, 0.01]),
        ]),
        _op("resample", 0.7, scale=[0.5, 1.0], down="bicubic", up={"choice": ["nearest", "bilinear"]}),
        _op("jpeg", 0.7, quality=[40, 100]),
    ])],
)

# One of imagecorruptions' 19 corruptions at a random severity.
CORRUPTIONS = DegradationConfig(
    grayscale=0.0,
    stages=[Stage(name="corruption", ops=[
        _op("corruption", name={"choice": list(CORRUPTION_NAMES)},
            severity=[1, 5]),
    ])],
)

# What restorers train on: the default recipe, with a share of samples left as they are.
TRAINING = DEFAULT.model_copy(update={"untouched": 0.15})

# Training with what real archive prints show beside the default's damage: tears and missing
# corners, foxing, emulsion flaking, silvering, and wide cracks with a shadowed edge.
ARCHIVE = TRAINING.model_copy(update={"stages": [
    *DEFAULT.stages[:1],
    DEFAULT.stages[1].model_copy(update={"ops": [*DEFAULT.stages[1].ops, _op("silvering", 0.08, strength=[0.2, 0.6])]}),
    DEFAULT.stages[2].model_copy(update={"ops": [
        *DEFAULT.stages[2].ops,
        _op("cracks", 0.15, count=[1, 2], branches=[4, 12], width=[3.0, 6.0], length=[0.3, 0.8], jaggedness=[0.2, 0.5],
            flakes=[0.2, 0.6], relief=[0.2, 0.7]),
        _op("tears", 0.08, count=[1, 2], size=[0.1, 0.3], roughness=[1.5, 4.0]),
        _op("foxing", 0.15, spots=[5, 40], size=[1.5, 5.0], strength=[0.3, 0.7]),
        _op("flaking", 0.15, patches=[1, 4], size=[3.0, 10.0]),
    ]}),
    *DEFAULT.stages[3:],
]})

PRESETS: dict[str, DegradationConfig] = {"default": DEFAULT, "v2": V2, "corruptions": CORRUPTIONS, "training": TRAINING,
                                         "archive": ARCHIVE}
