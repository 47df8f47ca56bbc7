r"""Two-time models: the flow map X_{t→s} of the probability-flow ODE from a two-time network (DESIGN.md §3d).

| symbol | meaning |
|---|---|
| x_t = α_t x₀ + σ_t ε | the process's marginal, in its own α, σ (VE / EDM: α = 1; the interpolant: α = 1 − t, σ = t) |
| X_{t→s}(x) | the probability-flow ODE's solution at time s ≤ t started from x at time t (the flow map) |
| D(x, t) = E[x₀ given x_t = x] | the ordinary denoiser (Tweedie), :meth:`NetworkScore.denoise` |
| D̂(x, t, s) | the two-time denoiser: the x̂₀ that makes one DDIM step t → s land on X_{t→s}(x) |
| F(c_in x̃; c_noise(t), c_noise(s)) | the two-time network's raw output (:mod:`lit_score.networks.two_time`) |

**The DDIM form.** One deterministic DDIM step t → s with an estimate x̂₀ (Song, Meng & Ermon 2021, eq. 12, η = 0)
puts ε̂ = (x − α_t x̂₀)/σ_t back with the new coefficients:

    x_s = α_s x̂₀ + σ_s ε̂ = (σ_s/σ_t)·x + (α_s − α_t σ_s/σ_t)·x̂₀.

Any map can be written so: for s < t the factor α_s − α_t σ_s/σ_t = σ_s (e^{λ_s} − e^{λ_t}) is positive (the log-SNR
λ = log(α/σ) decreases in t), so D̂(x, t, s) = (X_{t→s}(x) − (σ_s/σ_t) x)/(α_s − α_t σ_s/σ_t) exists and

    X_{t→s}(x) = (σ_s/σ_t)·x + (α_s − α_t σ_s/σ_t)·D̂(x, t, s)                                  (the flow map)

is what :meth:`FlowMapScore.flow_map` returns, with D̂ given by the network through the target's ordinary
preconditioning at t (c_skip, c_out, c_in of :class:`NetworkScore`: EDM's Table 1 in the process's units); the
second time enters through F only. Consequences:

- X_{t→t}(x) = x by construction: σ_t/σ_t = 1 and α_t − α_t = 0 exactly, whatever the network gives.
- As s → t the derivative of the form in s is (σ'_t/σ_t)·x + (α'_t − α_t σ'_t/σ_t)·D̂(x, t, t), and the
  probability-flow velocity is α' x̂₀ + σ' ε̂ = the same expression with x̂₀ = D(x, t); so the exact D̂(x, t, t) is
  D(x, t): at s = t the two-time network is (trained as) an ordinary denoiser, and every sampler, guidance and the
  likelihood use it unchanged (``score``, ``denoise``, ``predict`` and ``velocity`` without s evaluate it at s = t).
- A two-time network holding a one-time network's weights (zero s-branch) starts as that network's DDIM step t → s:
  the natural start of a distilled student (consistency trajectory models make the same choice).
- On VE / EDM (α = 1) the form is CTM's G_θ(x, t, s) = (s/t)·x + (1 − s/t)·g_θ(x, t, s) with σ = t (Kim et al. 2023);
  on the interpolant it is X = (s/t)·x + ((t − s)/t)·D̂, so an average velocity u with X = x − (t − s)·u (MeanFlow,
  Geng et al. 2025; shortcut models' step, Frans et al. 2024) is D̂ = x − t·u.

Classifier-free guidance combines raw outputs (affine in F), so it applies to D̂ too; classifier guidance is a
correction of the score at s = t and is refused for a jump.
"""

from __future__ import annotations

from torch import Tensor, nn

from lit_score.processes import NoiseProcess
from lit_score.scores.declarations import declares_two_time
from lit_score.scores.network import NetworkScore
from lit_score.utils import append_dims


def flow_map_jump(process: NoiseProcess, x: Tensor, t: Tensor, s: Tensor, denoised: Tensor) -> Tensor:
    """X_{t→s}(x) = (σ_s/σ_t)·x + (α_s − α_t σ_s/σ_t)·D̂ from a two-time denoiser's ``denoised`` = D̂(x, t, s)
    (module docstring; t, s (B,)): one DDIM step with that x̂₀, and x itself at s = t."""
    ratio = process.sigma(s) / process.sigma(t)
    coef_x0 = process.alpha(s) - process.alpha(t) * ratio
    return append_dims(ratio, x) * x + append_dims(coef_x0, x) * denoised


def jump_x0(process: NoiseProcess, x: Tensor, x_s: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """D̂ = (x_s − (σ_s/σ_t)·x)/(α_s − α_t σ_s/σ_t): the x̂₀ that makes one DDIM step t → s from x land on ``x_s``, the
    inverse of :func:`flow_map_jump` (module docstring; t, s (B,), s < t: the factor is positive)."""
    ratio = process.sigma(s) / process.sigma(t)
    coef_x0 = process.alpha(s) - process.alpha(t) * ratio
    return (x_s - append_dims(ratio, x) * x) / append_dims(coef_x0, x)


class FlowMapScore(NetworkScore):
    """A two-time score model: the flow map X_{t→s}(x) of a two-time network, and at s = t the ordinary score model.

    Args: ``network``, ``process`` and the keywords of :class:`NetworkScore` (``target``, ``scale_by_sigma``,
    ``sigma_data``, ``learned_variance``). ``network`` must declare ``two_time`` (an :class:`~lit_score.networks.MLP`
    or :class:`~lit_score.networks.UNet` built with ``two_time=True``); it is called as
    ``network(x, c_noise, y, s=c_noise_s)``.
    """

    #: the capability a flow-map sampler asks for: ``denoise(x, t, s)`` and ``flow_map(x, t, s)``
    two_time: bool = True

    def __init__(self, network: nn.Module, process: NoiseProcess, **kwargs) -> None:
        if not declares_two_time(network):
            raise ValueError(f"{type(network).__name__} takes one time: a FlowMapScore needs a two-time network"
                             " (build it with two_time=True; load_one_time_weights starts it from a one-time one)")
        super().__init__(network, process, **kwargs)

    def denoise(self, x: Tensor, t: Tensor, s: Tensor | None = None) -> Tensor:
        """D̂(x, t, s) (B, ...) from one network evaluation; ``s=None`` is s = t, the ordinary x̂₀ = E[x₀ | x_t]."""
        if s is None:
            return super().denoise(x, t)
        if self.guided:
            raise ValueError("classifier guidance corrects the score at s = t, not a flow map's jump: guide the jump"
                             " with classifier-free guidance (guidance_scale) or sample with an ordinary sampler")
        return self.predict(x, t, self.raw_and_variance(x, t, s)[0])[0]

    def flow_map(self, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """X_{t→s}(x) for t, s (B,) with s ≤ t, from one network evaluation (module docstring)."""
        return flow_map_jump(self.process, x, t, s, self.denoise(x, t, s))


__all__ = ["FlowMapScore", "flow_map_jump", "jump_x0"]
