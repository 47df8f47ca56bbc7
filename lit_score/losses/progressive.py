r"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models",
Algorithm 2) as a loss and a rounds curriculum the diffusion families take (DESIGN.md §3d).

The student is an ordinary one-time model sampled by DDIM with η = 0 on the process's own grid; each round it learns
to take in one step what its teacher takes in two, and then becomes the next round's teacher.

| symbol | meaning |
|---|---|
| N, R | the student's steps in round 0 (Algorithm 2's N; its teacher takes 2N) and the number of rounds |
| N_k = N/2^k | the student's DDIM steps in round k = 0, …, R − 1 (:class:`HalvingRounds`) |
| u_0 = t_max > u_1 > … > u_{2N_k} = t_min | the teacher's grid of round k, ``process.time_grid(2N_k, spacing)`` |
| t = u_{2j}, t′ = u_{2j+1}, t″ = u_{2j+2} | per sample, j ~ U{0, …, N_k − 1}: a student step t → t″ and the |
| | teacher's midpoint t′ (the paper's t = i/N, t′ = t − 0.5/N, t″ = t − 1/N, in the process's time and spacing) |
| z_t = α_t x + σ_t ε | a draw of the marginal |
| z_{t′}, z_{t″} | two DDIM steps (η = 0) of the round's teacher from z_t: t → t′ → t″ |
| x̃ = (z_{t″} − (σ_{t″}/σ_t) z_t)/(α_{t″} − (σ_{t″}/σ_t) α_t) | the target: the x̂₀ whose ONE DDIM step t → t″ lands |
| | on z_{t″} (Algorithm 2; :func:`~lit_score.scores.flow_map.jump_x0`) |
| x̂_θ(z_t) | the student's x̂₀ (``predict``, through its own parameterisation) |
| ℓ = w(λ_t)·mean_d (x̂_θ(z_t) − x̃)² | the loss per sample; w = max(SNR_t, 1) ("truncated SNR", Sec. 4: |
| | max(‖x − x̂‖², ‖ε − ε̂‖²)) or SNR_t + 1 (v-MSE on a variance-preserving process), SNR = α²/σ² |

**Teachers.** Round 0's teacher is the :class:`~lit_score.losses.teacher.Teacher` given (in YAML a
:class:`lit_score.distillation.CheckpointTeacher`), stepped by its solver: give it ``DDIM`` (η = 0) for Algorithm 2
(a ``Heun`` teacher makes round 0's target two Heun steps instead: a more accurate solution of the interval at twice
the NFE, not the paper's); its process must be the student's. From round 1 on the teacher is a frozen copy of the
student as it stood at the end of the previous round ("student becomes next teacher"), stepped by DDIM: the student's
own sampler, so two of its steps are exactly what the previous round's student does.

**Parameterisation.** The loss is on x̂₀ whatever the student predicts, but the student must be able to *give* a
good x̂₀ at high noise, where a one- or two-step sampler starts: x₀-, v-, EDM- or velocity-prediction (``target``
``x0``, ``v``, ``edm``, ``velocity``). Under ε- or score-prediction x̂₀ = (z − σ ε̂)/α multiplies the network's error by
σ/α, unbounded as α(t_max) → 0 (Sec. 4: ε-prediction fails in the last rounds); the student is started from the
teacher's weights, so it has the teacher's target — a DDPM ε teacher distils, with that caveat (a warning says so).

**Curriculum and checkpoint.** The round is a function of the optimizer step: round k = min(⌊step /
``steps_per_round``⌋, R − 1) (steps past the last round keep training it). :meth:`before_step`, called by the family
before each batch with the global step, makes the next round's teacher when the step enters it (a copy of the
student then: the end of the previous round). The loss's ``state_dict`` holds the round and that copy's weights, so a
run resumed mid-round continues with the same teacher, and one resumed from a checkpoint written at the end of a
round's last step makes the copy from the restored student exactly as the uninterrupted run does: bit-exact on CPU.

**What the paper's code does between rounds and what this does.** The released code (google-research
``diffusion_distillation``: its notebook's round loop and CIFAR-10 config) starts every round with a fresh Adam
state, anneals the learning rate linearly over ``steps_per_iter`` steps (``learning_rate_anneal_steps``), keeps no EMA
(``ema_decay = 0``), and so copies the raw student into the next teacher. Here the optimizer and its schedule belong
to the trainer: Adam's moments carry across a round boundary (the student's weights are continuous across it; only
its target changes; a per-round schedule is the trainer's, e.g. a ``CyclicLR`` sawtooth of one cycle a round, as
``configs/distill/pd_toy.yaml``), and the copy is of the raw student. Use no :class:`~lit_score.callbacks.EMA`
callback (the paper keeps none; an average over rounds would mix students of different step counts).

**Sampling.** After round k the student is sampled by DDIM(N_k, η = 0, the same spacing, no final denoise):
:meth:`ProgressiveDistillation.sampler` returns it (``num_steps_at(step)`` the N_k), which is what a config's
``model.init_args.sampler`` should be set to (``DDIM`` with ``num_steps`` = the final N_k and ``denoise: false``).
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.losses.base import DiffusionLoss
from lit_score.losses.teacher import Teacher
from lit_score.processes import NoiseProcess, Spacing
from lit_score.samplers import DDIM
from lit_score.samplers.base import predict_x0_eps
from lit_score.scores.flow_map import jump_x0
from lit_score.utils import batch_mean, rand, randn_like

PDWeighting = Literal["truncated_snr", "snr_plus_one"]


class HalvingRounds:
    """The rounds of progressive distillation: N → N/2 → … → N/2^{R−1} student steps, ``steps_per_round`` optimizer
    steps each (module docstring).

    Args:
        num_steps: N, the student's steps in round 0 (its teacher takes 2N).
        rounds: R ≥ 1; 2^{R−1} must divide N (each round halves the steps; the last has N/2^{R−1} ≥ 1).
        steps_per_round: optimizer steps per round (the paper's CIFAR-10 distillation: 50 000).
    """

    def __init__(self, num_steps: int, rounds: int, steps_per_round: int) -> None:
        check_number("num_steps", num_steps, ge=1, integer=True)
        check_number("rounds", rounds, ge=1, integer=True)
        check_number("steps_per_round", steps_per_round, ge=1, integer=True)
        halvings = 2 ** (int(rounds) - 1)
        if halvings > num_steps:
            raise ValueError(f"{rounds} rounds would halve num_steps {num_steps} below one step: use at most"
                             f" {int(num_steps).bit_length()} rounds, or a larger num_steps")
        if num_steps % halvings:
            raise ValueError(f"num_steps {num_steps} does not halve {rounds - 1} times: use a multiple of {halvings}"
                             f" (a power-of-two multiple of the final steps), or fewer rounds")
        self.num_steps, self.rounds, self.steps_per_round = int(num_steps), int(rounds), int(steps_per_round)

    def round_at(self, step: int) -> int:
        """k = min(⌊step / steps_per_round⌋, R − 1): the round of the batch trained at optimizer step ``step``."""
        return min(int(step) // self.steps_per_round, self.rounds - 1)

    def steps_of(self, round_index: int) -> int:
        """N_k = N/2^k, the student's DDIM steps in round k."""
        return self.num_steps >> int(round_index)

    def num_steps_at(self, step: int) -> int:
        """N_k of the round at optimizer step ``step``."""
        return self.steps_of(self.round_at(step))

    @property
    def final_steps(self) -> int:
        """N/2^{R−1}, the steps of the distilled student."""
        return self.steps_of(self.rounds - 1)

    def __repr__(self) -> str:
        return (f"HalvingRounds(num_steps={self.num_steps}, rounds={self.rounds},"
                f" steps_per_round={self.steps_per_round})")


def pd_weight(weighting: PDWeighting, log_snr: Tensor) -> Tensor:
    """w(λ) on the x̂₀ error (module docstring): max(SNR, 1) or SNR + 1, SNR = e^{2λ}."""
    snr = (2 * log_snr).exp()
    return snr.clamp_min(1.0) if weighting == "truncated_snr" else snr + 1


def teacher_grid(process: NoiseProcess, num_steps: int, spacing: Spacing | None, like: Tensor) -> Tensor:
    """The 2N_k + 1 times of the teacher's grid for a student of ``num_steps`` = N_k steps, refused in one line where
    the process merges points (a discrete chain coarser than 2N_k) or the student's own grid is not every other
    point of it (what its DDIM sampler walks)."""
    fine = process.time_grid(2 * num_steps, spacing, device=like.device)
    coarse = process.time_grid(num_steps, spacing, device=like.device)
    if len(fine) != 2 * num_steps + 1 or not torch.allclose(fine[::2], coarse, rtol=1e-9, atol=1e-12):
        raise ValueError(f"the process's {spacing or process.default_spacing} grid of {2 * num_steps} steps does not"
                         f" nest the student's {num_steps} ({process!r}): use fewer steps than the process's discrete"
                         " chain, or another spacing")
    return fine.to(like.dtype)


class ProgressiveDistillation(DiffusionLoss):
    """Progressive distillation of a one-time student from a teacher (module docstring): a per-sample loss (B,).

    Args:
        teacher: the :class:`~lit_score.losses.teacher.Teacher` of round 0 (in YAML a
            :class:`lit_score.distillation.CheckpointTeacher`) with ``sampler`` DDIM (η = 0: Algorithm 2; module
            docstring); it must share the student's process.
        num_steps: N, the student's DDIM steps in round 0 (its teacher takes 2N; the paper starts at 4096 on CIFAR-10).
        rounds: R, the rounds N → N/2 → … → N/2^{R−1} (2^{R−1} must divide N).
        steps_per_round: optimizer steps per round.
        spacing: the grid's spacing (default: the process's own), the same for the teacher and the student's sampler.
        weighting: ``truncated_snr`` (max(SNR, 1) on the x̂₀ error: the paper's) or ``snr_plus_one``.
        init_from_teacher: at the start of a fresh fit, load the teacher network's weights into the student (the same
            architecture and target); refused in one line where they do not fit.
    """

    def __init__(
        self,
        teacher: Teacher,
        num_steps: int = 64,
        rounds: int = 7,
        steps_per_round: int = 1000,
        spacing: Spacing | None = None,
        weighting: PDWeighting = "truncated_snr",
        init_from_teacher: bool = True,
    ) -> None:
        if weighting not in ("truncated_snr", "snr_plus_one"):
            raise ValueError(f"unknown weighting {weighting!r}: use truncated_snr or snr_plus_one")
        self.teacher, self.curriculum = teacher, HalvingRounds(num_steps, rounds, steps_per_round)
        self.spacing, self.weighting, self.init_from_teacher = spacing, weighting, bool(init_from_teacher)
        self.round = 0  # the round whose teacher is held
        self.round_teacher: Teacher | None = None  # rounds ≥ 1: the frozen copy of the previous round's student
        self._pending: dict | None = None  # a checkpoint's copy until the student's score model is at hand
        self._process_checked = False

    # --- the loss ---------------------------------------------------------------------------------------------------
    def __call__(self, score_model, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        process = score_model.process
        self.check_process(process)
        n = self.curriculum.steps_of(self.round)
        grid = teacher_grid(process, n, self.spacing, x0)
        j = (rand((x0.shape[0],), generator, device=x0.device) * n).long().clamp_max(n - 1)
        t, t_mid, t_end = grid[2 * j], grid[2 * j + 1], grid[2 * j + 2]
        z_t = process.perturb(x0, t, randn_like(x0, generator))
        target = self.target(score_model, z_t, t, t_mid, t_end)
        x0_hat = predict_x0_eps(score_model, process, z_t, t)[0]
        return pd_weight(self.weighting, process.log_snr(t)) * batch_mean((x0_hat - target) ** 2)

    @torch.no_grad()
    def target(self, score_model, z_t: Tensor, t: Tensor, t_mid: Tensor, t_end: Tensor) -> Tensor:
        """x̃: two DDIM steps t → t′ → t″ of this round's teacher, solved for one student step t → t″."""
        teacher, labels = self.teacher_of_round(score_model), score_model.labels
        z_end = teacher.step(teacher.step(z_t, t, t_mid, labels), t_mid, t_end, labels)
        return jump_x0(score_model.process, z_t, z_end, t, t_end)

    def check_process(self, process: NoiseProcess) -> None:
        """Refuse, once and in one line, a teacher whose process differs from the student's, or a grid of some round
        that does not nest (:func:`teacher_grid`)."""
        if self._process_checked:
            return
        probe = torch.zeros(0, dtype=torch.float64, device=process.device)
        grids = [teacher_grid(process, self.curriculum.steps_of(k), self.spacing, probe)
                 for k in range(self.curriculum.rounds)]
        self.teacher.check_process(process, grids[0])
        self._process_checked = True

    # --- the rounds -------------------------------------------------------------------------------------------------
    def teacher_of_round(self, score_model) -> Teacher:
        """The teacher of the round held: the given one in round 0, else the copy (made from a checkpoint's weights
        when one was loaded)."""
        if self.round == 0:
            return self.teacher
        if self.round_teacher is None:  # a checkpoint's round ≥ 1: its copy, loaded into the student's structure
            self.round_teacher = self.copy_of(score_model)
            self.round_teacher.module.load_state_dict(self._pending["teacher"])
            self._pending = None
        return self.round_teacher

    def copy_of(self, score_model) -> Teacher:
        """A frozen copy of the student's score model, stepped by DDIM (η = 0)."""
        frozen = copy.deepcopy(score_model)
        for parameter in frozen.parameters():
            parameter.grad = None
        return Teacher(frozen, frozen.process, sampler=DDIM(num_steps=1, denoise=False))

    def fit_started(self, score_model, resumed: bool) -> None:
        """On a fresh fit (not ``resumed``, no checkpoint state) start the student from the teacher's weights
        (``init_from_teacher``) in round 0; warn once for an ε- or score-predicting student (module docstring)."""
        if not resumed and self._pending is None:
            self.round, self.round_teacher = 0, None
            if self.init_from_teacher:
                load_teacher_weights(score_model, self.teacher)
        if score_model.target in ("eps", "score"):
            warnings.warn(f"progressive distillation of a {score_model.target!r}-predicting student: its x̂₀ = (z − σ"
                          " ε̂)/α amplifies errors where α is small, so the last rounds (1–2 steps) degrade (Salimans &"
                          " Ho 2022, Sec. 4); a x0 / v / edm / velocity model distils better", stacklevel=2)

    @torch.no_grad()
    def before_step(self, score_model, step: int) -> None:
        """Enter the round of ``step``: when it is past the round held, the student (the previous round's end) is
        copied into the new round's teacher (module docstring)."""
        round_index = self.curriculum.round_at(step)
        if round_index > self.round:
            self.round, self.round_teacher, self._pending = round_index, self.copy_of(score_model), None

    def num_steps_at(self, step: int) -> int:
        """N_k of the round at optimizer step ``step``: the student's DDIM steps after it."""
        return self.curriculum.num_steps_at(step)

    def sampler(self, round_index: int | None = None) -> DDIM:
        """The student's sampler after round ``round_index`` (default: the last): DDIM with N_k steps, η = 0, the
        loss's spacing and no final denoise (the student's last step ends at t_min, as in training)."""
        k = self.curriculum.rounds - 1 if round_index is None else round_index
        return DDIM(num_steps=self.curriculum.steps_of(k), spacing=self.spacing, denoise=False)

    # --- checkpoint state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The round held and, from round 1 on, its teacher's weights."""
        if self.round == 0:
            return {"round": 0}
        if self.round_teacher is None:
            return {"round": self.round, **(self._pending or {})}
        return {"round": self.round, "teacher": self.round_teacher.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.round, self.round_teacher = int(state.get("round", 0)), None
        self._pending = {"teacher": state["teacher"]} if self.round > 0 else None

    def __repr__(self) -> str:
        return (f"ProgressiveDistillation(teacher={self.teacher!r}, {self.curriculum!r}, spacing={self.spacing!r},"
                f" weighting={self.weighting!r})")


def load_teacher_weights(score_model, teacher: Teacher) -> None:
    """Load the teacher network's weights into the student's network of the same architecture, refused in one line
    where they do not fit."""
    try:
        score_model.network.load_state_dict(teacher.one_time_weights())
    except RuntimeError as error:  # torch's message lists every mismatched key: keep its first line
        raise ValueError(f"the teacher's weights do not fit the student's {type(score_model.network).__name__}"
                         f" (build it with the teacher's network arguments): {str(error).splitlines()[0]}") from None


__all__ = ["HalvingRounds", "PDWeighting", "ProgressiveDistillation", "pd_weight", "teacher_grid"]
