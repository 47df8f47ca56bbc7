"""Score SDE (Song et al. 2021): a time-conditioned score in continuous t ∈ [ε, 1] on VP, VE or sub-VP."""

from __future__ import annotations

from typing import Literal

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lit_score.losses import DenoisingLoss, DiffusionLoss
from lit_score.models.diffusion import DiffusionModule
from lit_score.processes import VP, NoiseProcess
from lit_score.samplers import LangevinCorrector, PredictorCorrector, ReverseDiffusion, Sampler
from lit_score.scores import Target


class ScoreSDE(DiffusionModule):
    """Continuous-time score-based model trained by DSM with λ(t) = σ_t² or the likelihood weighting g(t)².

    Defaults: ``VP()`` (β 0.1 → 20, t ∈ [1e-3, 1]); target ``score`` with the network output divided by
    σ(t), so s = out/σ for every process. That is score_sde's NCSN++ convention for VE and, up to the sign
    of the output, its −ε̂/σ convention for VP/sub-VP (DDPM++): with λ = σ² the loss is ‖out + ε‖², i.e.
    ε-prediction. Sampling: the predictor–corrector sampler (reverse diffusion + Langevin corrector, SNR
    0.16, 1000 steps; Song et al. 2021, Algorithm 1); the probability-flow ODE samplers also apply.

    Args:
        scale_by_sigma: divide a ``score`` output by σ(t) (None: True for target ``score``).
        likelihood_weighting: λ(t) = g(t)² on the score error instead of σ(t)² (Song et al. 2021b).
        importance_sampling: with likelihood weighting, draw t ∝ g²/σ² (lower variance, same expectation).
        reduce: ``mean`` or ``sum`` of the squared error over data dimensions (score_sde's ``reduce_mean``).
        The last three build the default loss; pass ``loss`` instead to choose it entirely.
    """

    default_target = "score"
    default_scale_by_sigma = True

    def __init__(
        self,
        network: nn.Module,
        process: NoiseProcess | None = None,
        target: Target | None = None,
        scale_by_sigma: bool | None = None,
        loss: DiffusionLoss | None = None,
        sampler: Sampler | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        warmup_steps: int = 0,
        sample_shape: tuple[int, ...] | None = None,
        sigma_data: float = 0.5,
        label_dropout: float = 0.0,
        likelihood_weighting: bool = False,
        importance_sampling: bool = False,
        reduce: Literal["mean", "sum"] = "mean",
    ) -> None:
        if loss is not None and (likelihood_weighting or importance_sampling or reduce != "mean"):
            raise ValueError("likelihood_weighting / importance_sampling / reduce build the default loss: "
                             "set them on the given loss instead")
        if loss is None:
            weighting = "likelihood" if likelihood_weighting else "sigma2"
            loss = DenoisingLoss(weighting=weighting, reduce=reduce, importance_sampling=importance_sampling)
        super().__init__(
            network, process, target, scale_by_sigma, loss, sampler, optimizer, lr_scheduler, warmup_steps,
            sample_shape, sigma_data=sigma_data, label_dropout=label_dropout,
        )
        self.save_config()  # again, from this frame: records the family options too

    def default_process(self) -> NoiseProcess:
        return VP()

    def default_loss(self) -> DenoisingLoss:
        return DenoisingLoss(weighting="sigma2")

    def default_sampler(self, process: NoiseProcess) -> Sampler:

        return PredictorCorrector(ReverseDiffusion(num_steps=1000), LangevinCorrector(snr=0.16))
