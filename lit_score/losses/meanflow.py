r"""MeanFlow (Geng, Deng, Bai, Kolter & He 2025, "Mean Flows for One-step Generative Modeling") on a two-time model
(DESIGN.md §3d): the average velocity of the flow-matching ODE, trained from data alone, sampled in one jump.

| symbol | meaning |
|---|---|
| z_t = (1 − t)·x + t·ε | the interpolant (:class:`~lit_score.processes.Interpolant`: data at t = 0, noise at t = 1) |
| v = dz_t/dt = α'x + σ'ε | the conditional velocity (ε − x on the interpolant) |
| r ≤ t | the time the average is taken back to (the flow map's target time s) |
| u(z, r, t) = (z − X_{t→r}(z))/(t − r) | the average velocity over [r, t] (paper eq. 3); u(z, t, t) = v(z, t) |
| D̂(z, t, r) | the two-time denoiser of :class:`~lit_score.scores.FlowMapScore` |
| du/dt = v·∂_z u + ∂_t u | the total derivative along the path, the JVP of u along the tangent (v, 0, 1) of (z, r, t) |
| u_tgt = v − (t − r)·du/dt | the MeanFlow identity's target (paper eq. 6 and 10), under stop-gradient |
| Δ = u_θ − sg(u_tgt), ℓ = sg(w)·‖Δ‖², w = 1/(‖Δ‖² + c)^p | the loss with its adaptive weight (paper Sec. 4.3) |

**u from the flow map (one place).** On the interpolant the DDIM form of the flow map is X_{t→r}(z) = (r/t)·z +
((t − r)/t)·D̂(z, t, r) (:mod:`lit_score.scores.flow_map`), so X = z − (t − r)·u holds with

    u(z, r, t) = (z − D̂(z, t, r))/t,                                         (:func:`average_velocity`)

with no division by t − r (most draws have r = t). With target ``velocity`` D̂ = z − t·F, so u is the network's
output F itself; at r = t it is the flow-matching velocity, so the model is also an ordinary flow-matching model and
every sampler runs on it; :class:`~lit_score.samplers.FlowMapSampler` jumps with it (1 jump: z − (t − r)·u from t_max
to t_min). The conversion needs α = 1 − t, σ = t: another process is refused in one line.

**Why the target is right.** Differentiating (t − r)·u(z_t, r, t) = ∫_r^t v(z_τ, τ)dτ in t gives u + (t − r)·du/dt =
v(z_t, t) along the marginal velocity (paper eq. 6). The target uses the conditional velocity ε − x instead; it is
affine in v, so its mean given z_t is the identity's target and the exact average velocity is a stationary point of
the loss (on Gaussian data an exact fixed point: given z_t the deviation of the target is symmetric and w is even in
it; tests/test_meanflow.py shows the gradient vanishing there). The loss itself is not zero there.

**(r, t) sampler.** Two independent logit-normal draws sigmoid(P_mean + P_std·n) (the paper's Sec. 4.3, its
"(t, r) sampler"), ordered so that t ≥ r, then r set to t with probability 1 − ``ratio`` (the reference PyTorch code
github.com/Gsunshine/py-meanflow, ``sample_two_timesteps_t_r_v0``, "used in paper"). Defaults: its CIFAR-10 settings
as that repository gives the paper's configuration (``scripts/cifar10_v0.sh``): P_mean = −2.0, P_std = 2.0, ratio of
r ≠ t 75 %; the paper's ImageNet ablation (Table 1a) found 25 % best there. Both times are clamped to the process's
[t_min, t_max] (Interpolant: [0.001, 0.999]) where u = (z − D̂)/t stays finite; the reference clips to [0, 1].

**Adaptive weight.** w = 1/(‖Δ‖² + c)^p per sample, ‖·‖² summed over the sample's entries as the reference does;
p = 1 and c = 10⁻³ are the paper's (Table 1d: p = 1 best on ImageNet; the reference's CIFAR-10 run uses p = 0.75).
p = 0 is the plain squared error, p = ½ a pseudo-Huber loss.

**Two settings for low dimension (measured; the paper's defaults are kept).** On a 2-D ring of four Gaussians
(radius 2, std 0.2), a two-time MLP 128×3, batch 256, Adam 3e-4 with a cosine decay over 6,000 steps, EMA 0.999, the
energy distance of 2,000 samples ÷ the data floor (0.0011) at the end, as printed by
``python benchmarks/fewstep_toy_recipes.py meanflow --p P --time_scale κ --lr 3e-4 --cosine --steps 6000``:

- *The time the network embeds.* The interpolant hands the network c_noise = 1000·t, and a sinusoidal embedding of
  1000·t oscillates a thousand times faster in t than the reference's, which embeds t ∈ [0, 1] itself
  (py-meanflow's SongUNet). The target holds ∂_t u (the JVP's tangent 1 in t), so those frequencies enter it: with
  p = 0 (κ = 1) the model never learned (1 / 2 jumps 175 / 214× at the end, 110–250× all along); with the network's
  ``time_scale=1e-3`` (:func:`~lit_score.networks.embeddings.timestep_embedding`) it reached 1 / 2 / 4 jumps 5.5 /
  2.4 / 2.5× (tests/test_meanflow.py). MeanFlow's toy and digits configs set ``time_scale: 0.001``.
- *The adaptive weight is mode-seeking where ‖Δ‖² does not concentrate.* With w = sg(1/(‖Δ‖² + c)^p) the stationary
  point of E[w·‖u − u_tgt‖²] given z is the weighted mean E[w·u_tgt]/E[w], which leans to the target's heavier mode
  when the conditional target is multimodal (a mixture's velocity given z_t is). In d dimensions the spread of ‖Δ‖²
  around its mean shrinks as 1/√d, so images are barely affected and 2-D data is: a constant model against a 70/30
  mixture of velocities moves off their mean by 1.64 at p = 1 in 2-D, 0.070 in 256-D (derived in
  tests/test_meanflow.py) and 0.0052 in 3072-D (the same iteration). On the ring, MeanFlow at p = 1 (κ = 1e-3) ends at
  1 / 2 jumps 20 / 33× (two worse than one), and its pure flow-matching part alone (``--ratio 0 --jumps 32``: r = t,
  target v) sampled with 32 jumps drifted from 20× to 38× the floor along training at p = 1 while reaching 1.4× at
  p = 0. The toy and digits configs use p = 0 (on digits, 256-D, the bias is small but p = 0 has none); the default
  stays the paper's p = 1.

**How du/dt is computed.** ``torch.func.jvp`` of u along (v, 0, 1), under ``no_grad`` (its result is a stop-gradient
target) and, inside a ``bf16-mixed`` / ``16-mixed`` run, with autocast off (:func:`~lit_score.utils.full_precision`):
the JVP and the target are float32 (forward-mode AD through a convolution under CPU autocast fails on a dtype
mismatch; a half-precision tangent would lose the small (t − r)·du/dt term). The prediction u_θ is an ordinary
forward pass in the run's precision, with the dropout mask of the JVP's pass (the random state is shared as the
consistency losses share it, :func:`~lit_score.losses.consistency_training.student_and_target`). This is the
reference's recommended form without compilation (one extra forward pass; JVP memory not kept for backward). Under
DDP the gradient flows only through that ordinary forward, inside the family's training step, which Lightning calls
through the DDP wrapper: the gradients are all-reduced as for any other loss (tests/test_meanflow.py compares two
gloo ranks with one process). The reference instead calls the unwrapped module and all-reduces gradients by hand.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.losses.base import DiffusionLoss
from lit_score.losses.consistency_training import student_and_target
from lit_score.processes import NoiseProcess
from lit_score.utils import append_dims, full_precision, randn_like


def average_velocity(score_model, z: Tensor, r: Tensor, t: Tensor) -> Tensor:
    """u(z, r, t) = (z − D̂(z, t, r))/t on the interpolant (module docstring): X_{t→r}(z) = z − (t − r)·u; t, r (B,)."""
    return (z - score_model.denoise(z, t, r)) / append_dims(t, z)


def average_velocity_and_derivative(score_model, z: Tensor, r: Tensor, t: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """(u(z, r, t), du/dt) with du/dt = v·∂_z u + ∂_t u from one forward-mode JVP along the tangent (v, 0, 1)."""
    return torch.func.jvp(lambda z_, r_, t_: average_velocity(score_model, z_, r_, t_), (z, r, t),
                          (v, torch.zeros_like(r), torch.ones_like(t)))


def check_interpolant(process: NoiseProcess) -> None:
    """Refuse a process whose α, σ are not the interpolant's 1 − t, t (the conversion of u needs them)."""
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    if not (torch.allclose(process.alpha(t), 1 - t) and torch.allclose(process.sigma(t), t)):
        raise ValueError(f"MeanFlow trains the average velocity of the flow-matching interpolant: use the process"
                         f" lit_score.processes.Interpolant (got {type(process).__name__})")


class MeanFlow(DiffusionLoss):
    """MeanFlow on a two-time model (module docstring): a per-sample loss (B,).

    Args:
        ratio: the share of draws with r ≠ t (reference CIFAR-10: 0.75; paper's ImageNet best: 0.25).
        p_mean, p_std: the logit-normal of both times (reference CIFAR-10: −2.0, 2.0).
        p: the adaptive weight's power (paper: 1; 0 is the squared error).
        c: the adaptive weight's constant (paper: 1e-3).
    """

    #: the capability it asks of the score model: ``denoise(x, t, s)`` (a FlowMapScore: a two-time network)
    requires_two_time: bool = True

    def __init__(self, ratio: float = 0.75, p_mean: float = -2.0, p_std: float = 2.0, p: float = 1.0,
                 c: float = 1e-3) -> None:
        check_number("ratio", ratio, ge=0.0, le=1.0)
        check_number("p_mean", p_mean)
        check_number("p_std", p_std, gt=0.0)
        check_number("p", p, ge=0.0)
        check_number("c", c, gt=0.0)
        self.ratio, self.p_mean, self.p_std, self.p, self.c = (float(v) for v in (ratio, p_mean, p_std, p, c))
        self._checked: set[int] = set()  # ids of the processes found to be the interpolant

    def times(self, process: NoiseProcess, batch: int, generator, like: Tensor) -> tuple[Tensor, Tensor]:
        """(t, r) (B,) each in ``like``'s dtype: two logit-normal draws ordered t ≥ r, r = t with probability
        1 − ratio, clamped to [t_min, t_max] (module docstring)."""
        n = torch.randn((2, batch), generator=generator, device=like.device, dtype=torch.float64)
        first, second = torch.sigmoid(self.p_mean + self.p_std * n)
        t, r = torch.maximum(first, second), torch.minimum(first, second)
        equal = torch.rand((batch,), generator=generator, device=like.device, dtype=torch.float64) >= self.ratio
        r = torch.where(equal, t, r)
        return (t.clamp(process.t_min, process.t_max).to(like.dtype),
                r.clamp(process.t_min, process.t_max).to(like.dtype))

    def draw(self, process: NoiseProcess, x0: Tensor, generator=None) -> tuple[Tensor, Tensor, Tensor]:
        """(t, r, ε) for a batch: the times, then the noise, from ``generator``."""
        t, r = self.times(process, x0.shape[0], generator, x0)
        return t, r, randn_like(x0, generator)

    def loss_at(self, score_model, x0: Tensor, t: Tensor, r: Tensor, noise: Tensor) -> Tensor:
        """sg(w)·‖u_θ(z_t, r, t) − sg(u_tgt)‖² (B,) at given draws (module docstring)."""
        process = score_model.process
        if id(process) not in self._checked:
            check_interpolant(process)
            self._checked.add(id(process))
        z = process.perturb(x0, t, noise)
        v = append_dims(process.alpha_dot(t), x0) * x0 + append_dims(process.sigma_dot(t), x0) * noise

        def target() -> Tensor:
            with full_precision():
                _, du_dt = average_velocity_and_derivative(score_model, z, r, t, v)
            return v - append_dims(t - r, du_dt) * du_dt

        u, u_tgt = student_and_target(lambda: average_velocity(score_model, z, r, t), target, x0.device)
        squared = (u - u_tgt).pow(2).flatten(1).sum(dim=1)
        weight = (squared.detach() + self.c).pow(-self.p)
        return weight * squared

    def __call__(self, score_model, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.loss_at(score_model, x0, *self.draw(score_model.process, x0, generator))

    def __repr__(self) -> str:
        return (f"MeanFlow(ratio={self.ratio:g}, p_mean={self.p_mean:g}, p_std={self.p_std:g}, p={self.p:g},"
                f" c={self.c:g})")


__all__ = ["MeanFlow", "average_velocity", "average_velocity_and_derivative", "check_interpolant"]
