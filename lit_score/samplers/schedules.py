r"""Step schedules: the closed-form grids as stored records, and an n-step grid fitted to a model and a sampler.

The objective is the **terminal error** against a fine solve of the same probability-flow ODE from the same noise
(the local-error view of Xue et al. 2024 and the reference-trajectory distillation of Pei et al. 2025, measured
end to end), not Align Your Steps' KL upper bound: it needs no data samples, it fits any deterministic sampler
through that sampler's own update (its order, multistep history and final denoise included), and it is exact to
test (a better grid is one whose samples are closer to the ODE's). AYS itself (Sabour et al. 2024) optimises its
KLUB by the same kind of coordinate refinement of each t_i.

| symbol | meaning |
|---|---|
| t_0 = t_max > … > t_n = t_min | the grid: the ends stay, the n − 1 interior times move |
| σ̃ = σ/α = e^{−λ}, u = log σ̃ | the coordinate each interior time moves in (the process's one conversion |
|  | ``t_from_log_snr``; u increases with t on every process) |
| x_T ~ prior | the ``num_samples`` starting points every run shares |
| Φ_grid(x_T) | the sampler's output on a grid (its own ``grid()`` reads the candidate from a grid file) |
| Φ_ref(x_T) | the same sampler with ``reference_steps`` log-SNR-uniform steps: the ODE's solution |
| E(grid) = mean_b ‖Φ_grid − Φ_ref‖² / D | the objective (per value, averaged over the batch) |

Search: start from the best of the closed forms (uniform, quadratic, Karras, log-SNR, KL-optimal), then sweep over
i = 1 … n − 1 moving u_i alone within (u_{i+1}, u_{i−1}) by a pattern search of ``candidates`` evaluations
(:func:`refine`), keeping a move only when E falls; stop after ``sweeps`` sweeps or a sweep without gain. E never
rises, so the fitted grid is at least as good as every closed form on the fitting batch (the test checks fresh noise).

Where it is used: ``lit-score grid --method fit`` (:mod:`lit_score.cli.grid`) writes the result as a grid file that
any sampler's ``spacing`` then names. A command, not a sampler option: a fit costs hundreds of sampling runs, made
once per (checkpoint, sampler, n) and kept as an artifact with its protocol; a sampler option would redo it on every
call.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_score.processes import SPACINGS, NoiseProcess, StoredGrid, save_grid
from lit_score.samplers.base import Sampler, ScoreFn


def closed_form_grid(process: NoiseProcess, n: int, spacing: str, rho: float = 7.0) -> StoredGrid:
    """The closed-form grid ``spacing`` of ``n`` steps for ``process`` as a record (``lit-score grid --method
    kl_optimal`` and the others)."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown closed-form spacing {spacing!r}: use one of {', '.join(SPACINGS)}")
    times = process.time_grid(n, spacing, rho=rho)
    if len(times) != n + 1:
        raise ValueError(f"the {spacing} grid of {n} steps merges steps on this discrete process ({len(times) - 1}"
                         " distinct): ask for fewer steps")
    return StoredGrid.for_process(process, times, {"method": spacing, "closed_form": True, "rho": rho})


def sampler_record(sampler: Sampler) -> dict[str, Any]:
    """The sampler a grid was made for: class path and settings (spacing left out: the grid replaces it)."""
    settings = {k: v for k, v in sampler.settings().items() if k != "spacing"}
    return {"class_path": f"{type(sampler).__module__}.{type(sampler).__qualname__}", "init_args": settings}


class TerminalError:
    """E(grid) for one (score, process, sampler, x_T): runs the sampler on a candidate grid through a grid file."""

    def __init__(self, score_fn: ScoreFn, process: NoiseProcess, sampler: Sampler, x_T: Tensor, reference: Tensor,
                 folder: Path) -> None:
        self.score_fn, self.process, self.sampler, self.x_T, self.reference = score_fn, process, sampler, x_T, reference
        self.path = folder / "candidate.json"
        self.runs = 0

    def __call__(self, times: Tensor) -> float:
        t = self.process.discretize(times.to(self.process.device))
        if (t[1:] >= t[:-1]).any():  # a discrete process merged two steps: not an n-step grid
            return math.inf
        save_grid(StoredGrid.for_process(self.process, t, {"method": "candidate"}), self.path)
        self.runs += 1
        with torch.no_grad():
            out = self.sampler.with_settings(spacing=str(self.path))(self.score_fn, self.x_T.clone(), self.process)
        return float(((out - self.reference) ** 2).flatten(1).mean(1).mean())


def times_from_u(process: NoiseProcess, u: Tensor) -> Tensor:
    """Times whose log σ̃ is ``u`` (σ̃ = σ/α = e^{−λ}), through the process's ``t_from_log_snr``."""
    return process.t_from_log_snr((-u).to(process.device)).to(torch.float64).cpu()


def refine(objective: TerminalError, process: NoiseProcess, times: Tensor, value: float, sweeps: int,
           candidates: int) -> tuple[Tensor, float]:
    """Coordinate pattern search over the interior u_i (module docstring): the grid and its objective, never worse.

    Coordinate i probes u_i ± δ (δ starting at half the gap to the nearer neighbour), moves to a probe that lowers E
    and otherwise halves δ, for ``candidates`` evaluations; a probe outside (u_{i+1}, u_{i−1}) is skipped."""
    times = times.clone()
    for _ in range(sweeps):
        start = value
        for i in range(1, len(times) - 1):
            lo, u, hi = process.log_snr(times[[i + 1, i, i - 1]].to(process.device)).neg().double().cpu().tolist()
            delta, spent = 0.5 * min(u - lo, hi - u), 0
            while spent < candidates and delta > 1e-6 * (hi - lo):
                moved = False
                for probe in (u - delta, u + delta):
                    if not lo < probe < hi or spent >= candidates:
                        continue
                    trial = times.clone()
                    trial[i] = times_from_u(process, torch.tensor([probe], dtype=torch.float64))[0]
                    spent += 1
                    trial_value = objective(trial)
                    if trial_value < value:
                        value, times, u, moved = trial_value, trial, probe, True
                        break
                delta = delta if moved else delta / 2
        if value >= start:
            break
    return times, value


def fit_grid(
    score_fn: ScoreFn,
    process: NoiseProcess,
    sampler: Sampler,
    x_T: Tensor,
    *,
    reference_steps: int = 512,
    sweeps: int = 3,
    candidates: int = 8,
    protocol: dict[str, Any] | None = None,
) -> StoredGrid:
    """The grid of ``sampler``'s own length fitted to minimise its terminal error from ``x_T`` (module docstring).

    Args:
        score_fn: the model's score (or an exact one); process: its process.
        sampler: a deterministic solver of the probability-flow ODE (``sampler.reversible``); its ``num_steps`` and
            ``denoise`` fix n; the fit runs it through its own ``grid()``.
        x_T: prior draws (B, …) every run starts from.
        reference_steps: steps of the reference run (the same sampler, log-SNR-uniform).
        sweeps, candidates: coordinate sweeps at most, and evaluations per coordinate per sweep.
        protocol: what else to record (the checkpoint, a seed).

    Returns the grid as a :class:`~lit_score.processes.StoredGrid` whose protocol holds the objective's value for the
    fitted grid and for each closed form at the start, and the number of sampling runs.
    """
    if not sampler.reversible:
        raise ValueError(f"{type(sampler).__name__} with these settings is not a deterministic probability-flow ODE"
                         " solver: the terminal-error fit needs one (Euler, Heun, DDIM with eta 0, DPMSolver, EDMHeun"
                         " without churn)")
    n = sampler.num_steps - int(sampler.denoise)
    if n < 2:
        raise ValueError(f"a grid of {n} step has no interior time to fit: give the sampler more steps")
    reference_run = sampler.with_settings(num_steps=reference_steps + int(sampler.denoise), spacing="logsnr")
    with torch.no_grad():
        reference = reference_run(score_fn, x_T.clone(), process)
    starts: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lit-score-grid-") as folder:
        objective = TerminalError(score_fn, process, sampler, x_T, reference, Path(folder))
        grids = {}
        for spacing in SPACINGS:
            times = process.time_grid(n, spacing)
            if len(times) == n + 1:
                grids[spacing], starts[spacing] = times.cpu(), objective(times)
        first = min(starts, key=starts.get)
        times, value = refine(objective, process, grids[first], starts[first], sweeps, candidates)
    record = {"method": "fitted", "objective": "terminal_mse", "value": value, "start": first, "closed_forms": starts,
              "sampler": sampler_record(sampler), "reference_steps": reference_steps, "num_samples": x_T.shape[0],
              "sweeps": sweeps, "candidates": candidates, "runs": objective.runs, **(protocol or {})}
    return StoredGrid.for_process(process, times, record)


__all__ = ["TerminalError", "closed_form_grid", "fit_grid", "refine", "sampler_record", "times_from_u"]
