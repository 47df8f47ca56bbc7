"""Step-size adaptation of the MH kernels' warm-up: dual averaging toward a target acceptance (Hoffman & Gelman
2014)."""

from __future__ import annotations

import math


class DualAveraging:
    """Step-size adaptation toward a target acceptance δ (Hoffman & Gelman 2014, Algorithm 5, their constants).

    ``update(alpha)`` takes the mean acceptance of an iteration and returns the next step; ``final`` is the averaged
    step to freeze after the warm-up.
    """

    def __init__(self, step_size: float, target: float, gamma: float = 0.05, t0: float = 10.0, kappa: float = 0.75):
        self.mu, self.target, self.gamma, self.t0, self.kappa = math.log(10 * step_size), target, gamma, t0, kappa
        self.m, self.h_bar, self.log_step_bar, self.step = 0, 0.0, 0.0, step_size

    def update(self, alpha: float) -> float:
        self.m += 1
        m = self.m
        self.h_bar = (1 - 1 / (m + self.t0)) * self.h_bar + (self.target - alpha) / (m + self.t0)
        log_step = self.mu - math.sqrt(m) / self.gamma * self.h_bar
        weight = m ** (-self.kappa)
        self.log_step_bar = weight * log_step + (1 - weight) * self.log_step_bar
        self.step = math.exp(log_step)
        return self.step

    @property
    def final(self) -> float:
        return math.exp(self.log_step_bar) if self.m else self.step

