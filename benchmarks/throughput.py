"""Training and sampling throughput of the DDPM U-Net: a plain PyTorch loop against lit-score, and what bf16,
channels-last and torch.compile buy (issue 8). Every figure is printed as a ratio to the plain fp32 loop of one run.

    python benchmarks/throughput.py                       # CPU: the digits U-Net (16x16, batch 64), small step counts
    python benchmarks/throughput.py --size cifar10        # CUDA: DDPM's CIFAR-10 U-Net (35.7M, 32x32, batch 128)

| series | what |
|---|---|
| (a) plain fp32 | a hand-written loop: draw n and ε, the ε-loss, backward, clip 1, Adam — no Lightning |
| (b) lit-score fp32 | the real ``DDPM`` module under a ``Trainer`` (logging every 10 steps, no progress bar) |
| (c) lit-score bf16-mixed | (b) with ``precision="bf16-mixed"`` |
| (d) (c) + channels-last + compile | (c) with ``lit_score.callbacks.Performance(channels_last=True, compile=True)`` |
| sampling | images/s of DPM-Solver++ (2M, 20 NFE) with the fp32 model, and under bf16 autocast |

Targets (issue 8): (b)/(a) ≥ 0.97; on a GPU (d)/(a) ≥ 1.5. Series alternate across ``--repeats`` so machine noise hits
all of them; the medians are compared. The data are random images in [−1, 1] held in memory (throughput does not
depend on their content), so nothing downloads. Peak memory is CUDA's ``max_memory_allocated`` (n/a on CPU).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger

from lit_score.callbacks import Performance
from lit_score.data.base import GenerativeDataModule, TensorData
from lit_score.models import DDPM
from lit_score.networks import UNet
from lit_score.samplers import DPMSolver

SIZES = {
    "digits": ({"in_channels": 1, "base_channels": 32, "channel_mult": (1, 2, 2), "num_res_blocks": 1,
                "attention_resolutions": (8,), "dropout": 0.0, "resolution": 16}, (1, 16, 16), 64),
    "cifar10": ({"in_channels": 3, "resolution": 32}, (3, 32, 32), 128),  # DDPM's defaults: 35.7M parameters
}


class RandomImages(GenerativeDataModule):
    """``count`` random images of ``shape`` in [−1, 1], in memory."""

    def __init__(self, shape: tuple[int, ...], count: int, batch_size: int) -> None:
        super().__init__(batch_size=batch_size, num_workers=0, val_size=0)
        self.shape, self.count = tuple(shape), count

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape

    def setup(self, stage: str | None = None) -> None:
        x = torch.rand((self.count, *self.shape), generator=torch.Generator().manual_seed(0)) * 2 - 1
        self.train_dataset = self.val_dataset = self.reference_dataset = TensorData(x)


class StepTimer(pl.Callback):
    """Seconds per optimizer step after ``warmup`` steps (compilation and allocator warm-up excluded)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            _sync()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start is not None:
            self.steps += 1
            _sync()
            self.end = time.perf_counter()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def lit_step(size: str, steps: int, warmup: int, precision: str,
             performance: Performance | None) -> tuple[float, float]:
    """(seconds per step, peak MiB) of the DDPM module under a Trainer."""
    net_args, shape, batch = SIZES[size]
    torch.manual_seed(0)
    data = RandomImages(shape, batch * 4, batch)
    model = DDPM(network=UNet(**net_args), sample_shape=shape)
    timer = StepTimer(warmup)
    callbacks = [timer] + ([performance] if performance is not None else [])
    _peak_reset()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(accelerator="auto", devices=1, max_steps=warmup + steps, gradient_clip_val=1.0,
                             precision=precision, logger=CSVLogger(tmp), log_every_n_steps=10,
                             enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                             limit_val_batches=0, callbacks=callbacks)
        trainer.fit(model, datamodule=data)
    return (timer.end - timer.start) / timer.steps, _peak()


def plain_step(size: str, steps: int, warmup: int) -> tuple[float, float]:
    """(seconds per step, peak MiB) of the same work in a hand-written fp32 loop."""
    net_args, shape, batch = SIZES[size]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    data = RandomImages(shape, batch * 4, batch)
    data.setup()
    net = UNet(**net_args).to(device)
    process = DDPM(network=UNet(**net_args), sample_shape=shape).process.to(device)  # DDPM's β table
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    loader = data.train_dataloader()
    it, done, start = iter(loader), 0, None
    _peak_reset()
    while done < warmup + steps:
        try:
            x0 = next(it)
        except StopIteration:
            it = iter(loader)
            x0 = next(it)
        x0 = x0.to(device, non_blocking=True)
        if done == warmup:
            _sync()
            start = time.perf_counter()
        n = torch.randint(1, 1001, (x0.shape[0],), device=device)
        t = n.float() / 1000
        eps = torch.randn_like(x0)
        a, s = process.alpha(t).view(-1, 1, 1, 1), process.sigma(t).view(-1, 1, 1, 1)
        loss = ((net(a * x0 + s * eps, n.float() - 1) - eps) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        done += 1
    _sync()
    return (time.perf_counter() - start) / steps, _peak()


def sampling_rate(size: str, n: int, bf16: bool) -> float:
    """Images per second of DPM-Solver++ (2M, 20 NFE) on an untrained model (the cost does not depend on training)."""
    net_args, shape, _ = SIZES[size]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = DDPM(network=UNet(**net_args), sample_shape=shape).to(device)
    sampler = DPMSolver(num_steps=20, order=2, algorithm="dpmsolver++")
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        model.sample(min(n, 4), sampler=sampler)  # warm-up
        _sync()
        start = time.perf_counter()
        model.sample(n, sampler=sampler, generator=torch.Generator(device).manual_seed(0))
        _sync()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cifar10" if torch.cuda.is_available() else "digits")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5, help="steps before timing (compile happens here)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no_compile", action="store_true", help="leave compile out of series (d)")
    parser.add_argument("--samples", type=int, default=64, help="images for the sampling rate")
    args = parser.parse_args()
    net_args, shape, batch = SIZES[args.size]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"{args.size} U-Net ({sum(p.numel() for p in UNet(**net_args).parameters()) / 1e6:.1f}M), batch {batch},"
          f" {shape}, {device}; {args.steps} timed steps after {args.warmup}, {args.repeats} repeats")
    series = {"(a) plain fp32": [], "(b) lit-score fp32": [], "(c) lit-score bf16-mixed": [],
              "(d) bf16 + channels-last" + ("" if args.no_compile else " + compile"): []}
    peaks: dict[str, float | None] = {}
    compile_failed = None
    for _ in range(args.repeats):
        for name in series:
            if name.startswith("(a)"):
                value, peak = plain_step(args.size, args.steps, args.warmup)
            elif name.startswith("(b)"):
                value, peak = lit_step(args.size, args.steps, args.warmup, "32-true", None)
            elif name.startswith("(c)"):
                value, peak = lit_step(args.size, args.steps, args.warmup, "bf16-mixed", None)
            else:
                performance = Performance(channels_last=True, compile=not args.no_compile and compile_failed is None)
                try:
                    value, peak = lit_step(args.size, args.steps, args.warmup, "bf16-mixed", performance)
                except Exception as err:  # an inductor toolchain problem: report it and measure without compile
                    compile_failed = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
                    value, peak = lit_step(args.size, args.steps, args.warmup, "bf16-mixed",
                                           Performance(channels_last=True))
            series[name].append(value)
            peaks[name] = peak
    base = statistics.median(series["(a) plain fp32"])
    print("\n| series | ms / step | images / s | ratio to (a) | peak MiB |\n|---|---|---|---|---|")
    for name, values in series.items():
        m = statistics.median(values)
        peak = "n/a" if peaks[name] is None else f"{peaks[name]:.0f}"
        print(f"| {name} | {1000 * m:.1f} | {batch / m:.0f} | {base / m:.3f} | {peak} |")
    if compile_failed:
        print(f"\ncompile failed, so (d) ran without it: {compile_failed}")
    fp32, bf16 = sampling_rate(args.size, args.samples, False), sampling_rate(args.size, args.samples, True)
    print(f"\nsampling, DPM-Solver++ 2M at 20 NFE: fp32 {fp32:.1f} images/s, bf16 autocast {bf16:.1f} images/s"
          f" (ratio {bf16 / fp32:.2f})")


if __name__ == "__main__":
    main()
