"""Router training throughput on this machine (MiniLM, max_length 128, batch 32).

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false python -m benchmarks.train_speed [--n 256] [--epochs 2] [--threads 0]

Three recipes, each a real ``train_router`` run on N synthetic prompts long enough to be
truncated to 128 tokens (the worst case for the encoder):

  (a) head-only (lora_r=0): pooled embeddings cached once, only the head trains;
  (b) LoRA r=8 on the top 2 of 6 layers, lower 4 layers' output cached once (fp16);
  (c) LoRA r=8 on all 6 layers, no cache: full forward/backward every step.

"epoch ex/s" is training throughput once the cache exists (examples per second over the
epochs); "end-to-end ex/s" includes tokenising and building the cache, amortised over the
given number of epochs. Ratios are against (c).

Measured 2026-11-23 on the 2-core AMD EPYC dev box, shared with other test runs (load 5-8,
so absolute numbers are pessimistic; the ratios are the claim):

  N=256, epochs=2            epoch ex/s  vs (c)   end-to-end ex/s  vs (c)
  (a) head-only, cached           380.2  165.3x              16.3    7.1x
  (b) LoRA top 2, cached            6.4    2.8x               4.9    2.1x
  (c) LoRA all 6, no cache          2.3    1.0x               2.3    1.0x
  N=128, epochs=2: (a) 353.3 (98x), (b) 7.3 (2.0x), (c) 3.6 ex/s per epoch
"""

from __future__ import annotations

import argparse
import platform
from dataclasses import dataclass, replace

import numpy as np
import torch

from router.model import Router, RouterConfig
from router.training import TrainConfig, train_router
from store.settings import default_backbone

WORDS = ("router expert loss prompt encoder adapter database kernel recipe garden history physics "
         "theorem poem contract invoice protein galaxy market weather").split()


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=160)) for _ in range(n)]


@dataclass(frozen=True)
class Speed:
    """One recipe's throughput: examples per second per epoch and end to end, seconds spent caching."""

    name: str
    epoch: float
    e2e: float
    cache_s: float
    seconds: float


def run(name: str, config: RouterConfig, train: TrainConfig, texts: list[str], targets: np.ndarray) -> Speed:
    router = Router.from_config(config)
    report = train_router(router, texts, targets, train)
    return Speed(name=name, epoch=report.train_examples_per_second, e2e=report.examples_per_second,
                 cache_s=report.cache_seconds, seconds=report.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="training prompts (default 256)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = default_backbone()
    experts = [f"e{i}" for i in range(9)]
    texts = prompts(args.n)
    rng = np.random.default_rng(1)
    targets = rng.uniform(0, 1, size=(args.n, len(experts)))
    targets[rng.uniform(size=targets.shape) < 0.5] = np.nan
    targets[:, 0] = rng.uniform(0, 1, size=args.n)  # every row has at least one observation
    train = TrainConfig(epochs=args.epochs, batch_size=32, val_share=0.0)
    base = RouterConfig(backbone=backbone, expert_names=experts, max_length=128)
    rows = [
        run("(a) head-only, cached embeddings", replace(base, lora_r=0), train, texts, targets),
        run("(b) LoRA top 2 layers, cached", replace(base, lora_r=8, lora_layers=2), train, texts, targets),
        run("(c) LoRA all 6 layers, no cache", replace(base, lora_r=8, lora_layers=6),
            replace(train, cache=False), texts, targets),
    ]
    ref_epoch, ref_e2e = rows[2].epoch, rows[2].e2e
    print(f"MiniLM-L6, max_length 128 (all prompts truncated to 128 tokens), batch 32, N={args.n}, "
          f"epochs={args.epochs}, torch threads={torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'recipe':36} {'epoch ex/s':>11} {'vs (c)':>7} {'end-to-end ex/s':>16} {'vs (c)':>7} {'cache s':>8}")
    for r in rows:
        print(f"{r.name:36} {r.epoch:11.1f} {r.epoch / ref_epoch:6.1f}x {r.e2e:16.1f} "
              f"{r.e2e / ref_e2e:6.1f}x {r.cache_s:8.1f}")


if __name__ == "__main__":
    main()
