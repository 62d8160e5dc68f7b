"""Training and inference speed of the `paper` and `default` configurations at 256x256.

Training: samples/s of the mapping stage (the heaviest: frozen VAEs, mapping, discriminator) in fp32
and bf16 autocast, channels_last. Inference: the `paper` restore path with a scratch mask at 256 and
512, our way (channels_last, bf16 where the CPU runs it fast, else fp32) beside the plain way (fp32,
default memory layout), in the same run.

    .venv/bin/python benchmarks/train.py [--steps N] [--batch-size B] [--part all|train|inference]
"""

from __future__ import annotations

import argparse
import time

import torch

from oldphoto.model.config import ModelConfig
from oldphoto.model.device import cpu_has_fast_bf16
from oldphoto.model.restorer import RestorerNetwork
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


@torch.inference_mode()
def inference_seconds(network: RestorerNetwork, size: int, dtype: torch.dtype, channels_last: bool, repeats: int) -> float:
    x, mask = batch(size, 1)["degraded"], batch(size, 1)["mask"]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(repeats + 1):  # the first call is warm-up
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            network.detect(x)
            network(x, mask)
        times.append(time.perf_counter() - started)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per measurement")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--part", choices=["all", "train", "inference"], default="all")
    args = parser.parse_args()
    torch.manual_seed(0)
    fast = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, fast bf16: {cpu_has_fast_bf16()}")

    for name in ("default", "paper") if args.part in ("all", "train") else ():
        config = ModelConfig.load(name)
        for dtype in (torch.float32, torch.bfloat16):
            if name == "paper" and dtype != fast:
                # bf16 emulated (no AVX-512 BF16 / AMX): over 10 minutes a step of the paper's network.
                print(f"train mapping stage, {name:7s} {str(dtype)[6:]:8s}: skipped, bf16 is emulated on this CPU")
                continue
            rate = training_rate(config, dtype, args.steps, args.batch_size)
            print(f"train mapping stage, {name:7s} {str(dtype)[6:]:8s} 256x256 batch {args.batch_size}: "
                  f"{rate:7.3f} samples/s ({args.steps} timed steps)", flush=True)

    network = RestorerNetwork(ModelConfig.load("paper")).eval()
    for size in (256, 512) if args.part in ("all", "inference") else ():
        plain = inference_seconds(network, size, torch.float32, False, 2)
        network.fast()
        ours = inference_seconds(network, size, fast, True, 2)
        network.to(memory_format=torch.contiguous_format)
        print(f"inference paper {size}x{size} with scratch mask: plain (fp32, NCHW) {plain:6.2f} s, "
              f"ours ({str(fast)[6:]}, channels_last) {ours:6.2f} s = {plain / ours:.2f}x", flush=True)


if __name__ == "__main__":
    main()
