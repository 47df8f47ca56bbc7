"""Training-step overhead of `lit-score fit` vs a plain PyTorch loop on the same U-Net, batch and data.

    python benchmarks/overhead.py [--steps 40] [--repeats 3]

A third series runs the Lightning side with the long-run callbacks `lit-score fit` adds to every run
(ResumeState, NonFiniteGuard — one finiteness check of the loss and one of all gradients per step —,
GracefulStop, FinalCheckpoint): its ratio to the bare Lightning side is what exact resume and the NaN checks cost.

Both loops do the same work per step: draw t and ε, the DDPM ε-loss on the digits U-Net of
configs/ddpm/digits.yaml, backward, gradient clipping to 1, Adam. The Lightning side is the real DDPM
module under a Trainer with logging every 10 steps (CSV), the NaN check and no progress bar. Runs alternate
(plain, lit, plain, lit, …) so that machine noise hits both; the ratio of the medians is printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger

from lit_score.data import Digits
from lit_score.models import DDPM
from lit_score.networks import UNet

NET = dict(in_channels=1, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(8,),
           dropout=0.0, resolution=16)


class StepTimer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.steps = warmup, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start is not None:
            self.steps += 1
            self.end = time.perf_counter()


def lit_step_time(data: Digits, steps: int, warmup: int, long_run: bool = False) -> float:
    from lit_score.callbacks import FinalCheckpoint, GracefulStop, NonFiniteGuard, ResumeState

    torch.manual_seed(0)
    model = DDPM(network=UNet(**NET), sample_shape=data.sample_shape)
    timer = StepTimer(warmup)
    extra = [FinalCheckpoint(), ResumeState(), NonFiniteGuard(), GracefulStop()] if long_run else []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(accelerator="cpu", max_steps=warmup + steps, gradient_clip_val=1.0, logger=CSVLogger(tmp),
                             log_every_n_steps=10, enable_progress_bar=False, enable_checkpointing=False,
                             enable_model_summary=False, limit_val_batches=0, callbacks=[timer, *extra])
        trainer.fit(model, datamodule=data)
    return (timer.end - timer.start) / timer.steps


def plain_step_time(data: Digits, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    net = UNet(**NET)
    process = DDPM(network=net, sample_shape=data.sample_shape).process  # the same β table
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    it, done, start = iter(data.train_dataloader()), 0, None
    while done < warmup + steps:
        try:
            x0 = next(it)
        except StopIteration:
            it = iter(data.train_dataloader())
            x0 = next(it)
        x0 = x0[0] if isinstance(x0, (list, tuple)) else x0
        if done == warmup:
            start = time.perf_counter()
        n = torch.randint(1, 1001, (x0.shape[0],))
        t = n.float() / 1000
        eps = torch.randn_like(x0)
        a = process.alpha(t).view(-1, 1, 1, 1)
        s = process.sigma(t).view(-1, 1, 1, 1)
        loss = ((net(a * x0 + s * eps, n.float() - 1) - eps) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        done += 1
    return (time.perf_counter() - start) / steps


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = Digits(image_size=16, batch_size=128)
    data.setup("fit")
    plain, lit, long_run = [], [], []
    for _ in range(args.repeats):
        plain.append(plain_step_time(data, args.steps, args.warmup))
        lit.append(lit_step_time(data, args.steps, args.warmup))
        long_run.append(lit_step_time(data, args.steps, args.warmup, long_run=True))
    p, q, r = statistics.median(plain), statistics.median(lit), statistics.median(long_run)
    print(f"plain PyTorch step: {1000 * p:.1f} ms (runs: {', '.join(f'{1000 * v:.1f}' for v in plain)})")
    print(f"lit-score fit step: {1000 * q:.1f} ms (runs: {', '.join(f'{1000 * v:.1f}' for v in lit)})")
    print(f"lit-score + long-run callbacks: {1000 * r:.1f} ms (runs: {', '.join(f'{1000 * v:.1f}' for v in long_run)})")
    print(f"overhead ratio lit/plain = {q / p:.3f}  (target <= 1.10; batch 128, 16x16 digits U-Net, CPU)")
    print(f"long-run callbacks (resume state, NaN checks, signals) / bare lit = {r / q:.3f}")
