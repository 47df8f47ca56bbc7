"""EBM diagnostics: energy histograms of real data vs noise vs samples (energy as an OOD score) and sample grids."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from lit_score.atomic import save_figure
from lit_score.callbacks.samples import ValidationSampling, generate_across_ranks
from lit_score.checks import check_number
from lit_score.data.base import lit_datamodule
from lit_score.generation import SeedBatches
from lit_score.metrics.mcmc import effective_sample_size, split_rhat
from lit_score.visualize import save_samples


def energy_auroc(inlier: Tensor, outlier: Tensor) -> float:
    """P(E(inlier) < E(outlier)) (ties count ½): the AUROC of the energy as an OOD score (Du & Mordatch 2019, §4.4)."""
    a, b = inlier.double().reshape(-1, 1), outlier.double().reshape(1, -1)
    return float((a < b).double().mean() + 0.5 * (a == b).double().mean())


def save_energy_histogram(energies: dict[str, Tensor], path: Path, title: str | None = None, bins: int = 50) -> Path:
    """One PNG with overlaid energy histograms, one per named set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = {k: v.detach().float().cpu().numpy() for k, v in energies.items()}
    finite = [v[(v == v) & (abs(v) < float("inf"))] for v in values.values()]
    lo, hi = min(v.min() for v in finite if len(v)), max(v.max() for v in finite if len(v))
    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, _), v in zip(values.items(), finite):
        ax.hist(v, bins=bins, range=(lo, hi + 1e-6), alpha=0.5, density=True, label=name)
    ax.set_xlabel("energy E(x)  (lower = more likely)")
    ax.set_ylabel("density")
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)


class EnergyHistogram(ValidationSampling):
    """Every ``every_n_epochs`` validation epochs: an energy histogram (real data, uniform noise, replay buffer,
    fresh chains) and sample grids of the buffer and of fresh short-run chains, under ``<run dir>/ebm``.

    Runs at the first validation batch (where EMA weights are live, as :class:`SampleGrid`); fresh chains are
    split across DDP ranks, files are written on rank zero. Logs ``ebm/ood_auroc_noise`` and
    ``ebm/ood_auroc_samples``: how well E separates real data from noise and from the model's own samples.
    For a class-conditional EBM every set's energy is the unconditional E(x, ∅) (the null label; the reference data
    has no labels), while the fresh chains are drawn with label = seed index mod K, as every sample grid.

    Args:
        every_n_epochs: how often (in validation epochs).
        num_samples: samples per set.
        bins: histogram bins.
        seed: seed of the noise and the fresh chains.
        dirpath: where to write (default: ``<run dir>/ebm``, beside ``checkpoints/``).
    """

    subdir = "ebm"

    def __init__(
        self, every_n_epochs: int = 1, num_samples: int = 512, bins: int = 50, seed: int = 0, dirpath: str | None = None
    ) -> None:
        super().__init__(every_n_epochs, dirpath)
        SeedBatches(num_samples, num_samples, seed)  # a bad seed or count fails here, not mid-training
        check_number("bins", bins, ge=1, integer=True)
        self.num_samples, self.bins, self.seed = num_samples, bins, seed
        self.last_paths: dict[str, Path] = {}
        self.last_energies: dict[str, Tensor] = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.due(trainer, batch_idx, dataloader_idx):
            return
        fresh = generate_across_ranks(trainer, pl_module, self.num_samples, None, self.seed)
        self._write(trainer, pl_module, fresh, batch)

    @rank_zero_only
    def _write(self, trainer: pl.Trainer, pl_module, fresh: Tensor, batch) -> None:
        n, generator = self.num_samples, torch.Generator(pl_module.device).manual_seed(self.seed)
        datamodule = lit_datamodule(trainer)
        if datamodule is not None:  # a lit_score datamodule declares reference_samples
            real = datamodule.reference_samples(n, torch.Generator().manual_seed(self.seed)).to(pl_module.device)
        else:
            real = pl_module.data_batch(batch)[:n]
        sets = {"real data": real, "uniform noise": pl_module.uniform_noise(n, generator), "fresh chains": fresh}
        if pl_module.replay_buffer is not None:
            sets["replay buffer"] = pl_module.replay_buffer[:n].to(pl_module.device)
        with torch.no_grad():
            self.last_energies = {k: pl_module.energy(v).cpu() for k, v in sets.items()}
        epoch, e = trainer.current_epoch, self.last_energies
        stem = self.dirpath / f"epoch={epoch:04d}"
        self.last_paths = {
            "histogram": save_energy_histogram(
                e, stem.with_name(stem.name + "_energy.png"), f"{type(pl_module).__name__} epoch {epoch}", self.bins
            )
        }
        data_range = pl_module.data_range
        reference = real if real.ndim == 2 else None
        for name in ("fresh chains", "replay buffer"):
            if name in sets:
                paths = save_samples(
                    sets[name],
                    stem.with_name(f"{stem.name}_{name.split()[-1]}"),
                    data_range,
                    reference,
                    f"{name}, epoch {epoch}",
                )
                self.last_paths[name] = paths["png"]
        pl_module.log("ebm/ood_auroc_noise", energy_auroc(e["real data"], e["uniform noise"]), rank_zero_only=True)
        pl_module.log("ebm/ood_auroc_samples", energy_auroc(e["real data"], e["fresh chains"]), rank_zero_only=True)


class ChainDiagnostics(ValidationSampling):
    """Every ``every_n_epochs`` validation epochs: run ``num_chains`` fresh chains of the model's sampler from its
    initial state, record every chain's energy at every step, and log the split-R̂ and the effective sample size of
    the energy trace over its second half (``ebm/chain_rhat``, ``ebm/chain_ess``; Vehtari et al. 2021), with the
    final mean energy (``ebm/chain_energy``) and, where the sampler measures one, its acceptance.

    R̂ near 1 (< 1.01) says the chains agree on the distribution of E they reach; a large R̂ on fresh chains is the
    signature of a non-mixing sampler for this energy (the chains stay where they started). The chains run on rank
    zero only. For a model with an energy and a sampler that stays at one level (Langevin, ULA, MALA, HMC).

    Args:
        every_n_epochs: how often (in validation epochs).
        num_chains: chains (M ≥ 2 for R̂).
        seed: seed of the chains.
        dirpath: unused (the callback writes no files); kept for the common signature.
    """

    def __init__(self, every_n_epochs: int = 1, num_chains: int = 16, seed: int = 0, dirpath: str | None = None):
        super().__init__(every_n_epochs, dirpath)
        check_number("num_chains", num_chains, ge=2, integer=True)
        check_number("seed", seed, ge=0, integer=True)
        self.num_chains, self.seed = num_chains, seed
        self.last: dict[str, float] = {}

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if not pl_module.has_energy or pl_module.sampler.traverses_noise_levels:
            raise ValueError(f"ChainDiagnostics needs a model with an energy and a one-level sampler; "
                             f"{type(pl_module).__name__} with {type(pl_module.sampler).__name__} is not one")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self.due(trainer, batch_idx, dataloader_idx) or not trainer.is_global_zero:
            return

        generator = torch.Generator(pl_module.device).manual_seed(self.seed)
        trace: list[Tensor] = []
        sampler = pl_module.sampler

        def record(info: dict) -> None:
            with torch.no_grad():
                trace.append(pl_module.score_model.energy(info["x"], info.get("t")).float().cpu())

        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                x = pl_module.initial_state(self.num_chains, generator)
                draw = sampler.draw(pl_module.score_model, x, pl_module.process, generator=generator, callback=record)
        finally:
            pl_module.train(was_training)
        energies = torch.stack(trace, dim=1)  # (chains, steps)
        half = energies[:, energies.shape[1] // 2 :]
        self.last = {"chain_energy": float(energies[:, -1].mean())}
        if half.shape[1] >= 4:
            self.last.update(chain_rhat=split_rhat(half), chain_ess=effective_sample_size(half))
        for key, value in draw.scalars().items():
            self.last[f"chain_{key}"] = float(value)
        for key, value in self.last.items():
            pl_module.log(f"ebm/{key}", value, rank_zero_only=True)
