"""Training speed of the `paper` and `default` configurations at 256x256: samples/s of the mapping
stage (the heaviest: frozen VAEs, mapping, discriminator) in fp32 and bf16 autocast, channels_last.
Inference speed is in benchmarks/restore.py.

    .venv/bin/python benchmarks/train.py [--steps N] [--batch-size B]
"""

from __future__ import annotations

import argparse
import time

import torch

from oldphoto.model.config import ModelConfig
from oldphoto.model.device import cpu_has_fast_bf16
from oldphoto.model.train import MappingTrainer
from oldphoto.model.vae import VAE


def batch(size: int, count: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(count, 1, size, size)
    mask[..., size // 3 : size // 3 + 3, :] = 1
    return {"clean": torch.rand(count, 3, size, size, generator=g) * 2 - 1,
            "degraded": torch.rand(count, 3, size, size, generator=g) * 2 - 1, "mask": mask}


def training_rate(config: ModelConfig, dtype: torch.dtype, steps: int, batch_size: int) -> float:
    trainer = MappingTrainer(config, torch.device("cpu"), dtype, frozen={"vae_a": VAE(config.vae), "vae_b": VAE(config.vae)})
    data = batch(256, batch_size)
    trainer.step(data)  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        trainer.step(data)
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per measurement")
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    fast = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, fast bf16: {cpu_has_fast_bf16()}")

    for name in ("default", "paper"):
        config = ModelConfig.load(name)
        for dtype in (torch.float32, torch.bfloat16):
            if name == "paper" and dtype != fast:
                # bf16 emulated (no AVX-512 BF16 / AMX): over 10 minutes a step of the paper's network.
                print(f"train mapping stage, {name:7s} {str(dtype)[6:]:8s}: skipped, bf16 is emulated on this CPU")
                continue
            rate = training_rate(config, dtype, args.steps, args.batch_size)
            print(f"train mapping stage, {name:7s} {str(dtype)[6:]:8s} 256x256 batch {args.batch_size}: "
                  f"{rate:7.3f} samples/s ({args.steps} timed steps)", flush=True)


if __name__ == "__main__":
    main()
