"""bf16-mixed for every family (issue 8): what autocast changes, and what stays float32.

Each family's toy model computes its training loss on one batch with the same noise twice, in float32 and under
``torch.autocast("cpu", torch.bfloat16)`` (what Lightning's ``bf16-mixed`` wraps the step in). bf16 keeps 8 mantissa
bits (relative rounding 2^-9 ≈ 0.2 % per operation), so the network's output moves by about a percent after a few
layers; the loss — a mean of squared errors in float32 — is compared at 5 %. The EBM's contrastive divergence is a
difference of energies, so it is compared in absolute terms against the size of the energies. The parts that must not
drift (the likelihood ODE and its divergence) run with autocast off inside ``GenerativeModule.likelihood``: the same
bits/dim with and without an enclosing autocast.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_score.data.toy import TOY_DISTRIBUTIONS
from lit_score.losses.contrastive import ContrastiveDivergence
from lit_score.models import DDPM, EBM, NCSN, FlowMatching, ScoreSDE
from lit_score.networks import MLP
from lit_score.networks.energy import EnergyMLP
from lit_score.processes import DiscreteVE

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {
    "ddpm": lambda: DDPM(MLP(2, hidden=64, depth=2), sample_shape=(2,)),
    "ncsn": lambda: NCSN(MLP(2, hidden=64, depth=2, embedding="fourier"),
                         process=DiscreteVE(sigma_min=0.01, sigma_max=5.0, num_levels=50), sample_shape=(2,)),
    "sde": lambda: ScoreSDE(MLP(2, hidden=64, depth=2, embedding="fourier"), sample_shape=(2,)),
    "flow": lambda: FlowMatching(MLP(2, hidden=64, depth=2), sample_shape=(2,)),
}

pytestmark = pytest.mark.usefixtures("one_thread")


def batch() -> torch.Tensor:
    return TOY_DISTRIBUTIONS["moons"](512, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_autocast_loss_equals_fp32(family):
    torch.manual_seed(0)
    model = FAMILIES[family]().train()
    x = batch()
    fp32 = model.objective(x, torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.objective(x, torch.Generator().manual_seed(1))
    assert bf16.dtype == torch.float32  # the per-sample loss (and its reduction) stays float32
    assert abs(float(bf16.mean()) / float(fp32.mean()) - 1) < 0.05


def test_bf16_autocast_ebm_energies_and_loss_stay_close():
    torch.manual_seed(0)
    model = EBM(EnergyMLP(2, hidden=64, depth=2), data_range=(-3.0, 3.0), sample_shape=(2,))
    x = batch()
    fake = torch.rand(512, 2, generator=torch.Generator().manual_seed(2)) * 6 - 3
    loss = ContrastiveDivergence()
    e32 = model.energy(x), model.energy(fake)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e16 = model.energy(x), model.energy(fake)
        score = model.score_model.score(fake)
    assert score.dtype == torch.float32  # Langevin's update x + step·score is float32 arithmetic
    assert all(e.dtype == torch.float32 for e in e16)  # EBM.energy hands the loss float32 energies
    scale = float(torch.cat(e32).abs().max())  # bf16 carries ~2-3 significant digits through the layers
    for a, b in zip(e32, e16):
        assert float((a - b).abs().max()) < 0.02 * scale
    assert abs(float(loss(*e32).mean()) - float(loss(*e16).mean())) < 0.02 * scale


def test_the_likelihood_runs_in_float32_inside_autocast():
    torch.manual_seed(0)
    model = FAMILIES["flow"]().eval()
    x = batch()[:64]
    plain = model.likelihood(x, divergence="exact", generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = model.likelihood(x, divergence="exact", generator=torch.Generator().manual_seed(0))
    assert inside.bits_per_dim == pytest.approx(plain.bits_per_dim, rel=1e-6)


def test_bf16_mixed_fit_through_the_cli(tmp_path, monkeypatch):
    """Also: a run stopped by max_steps mid-epoch without validation ends with last.ckpt (it used to leave only
    last-v1.ckpt when the save_dir was relative, as the configs' runs/ is)."""
    from lit_score.cli import main

    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(ROOT / "configs/ddpm/toy.yaml"), "--trainer.logger.init_args.save_dir", "runs",
          "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "5", "--trainer.limit_val_batches", "0",
          "--trainer.enable_progress_bar", "false", "--model.init_args.process.init_args.num_timesteps", "50"])
    assert [p.name for p in tmp_path.rglob("*.ckpt")] == ["last.ckpt"]
    checkpoint = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=True, map_location="cpu")
    assert checkpoint["global_step"] == 5
    floating = [v.dtype for v in checkpoint["state_dict"].values() if v.is_floating_point()]
    assert set(floating) <= {torch.float32, torch.float64}  # weights float32 (schedule tables float64), never bf16
