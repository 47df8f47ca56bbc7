"""What the run itself needs: the device asked for exists on this machine, and a grid sampler asks for no more steps
than a discrete model was trained on."""

from __future__ import annotations

import torch

from lit_score.validation.errors import InvalidInput
from lit_score.validation.options import ACCELERATORS


def resolve_device(accelerator: str, option: str = "--accelerator"):
    """``auto`` (CUDA when there is one), ``cpu``, ``gpu`` / ``cuda`` / ``cuda:N``, ``mps``; one line for a device this
    machine does not have."""
    name = str(accelerator).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name in ("gpu", "cuda") or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InvalidInput(f"{option} {accelerator}: no CUDA device is available here: pass {option} cpu (or"
                               " auto)")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise InvalidInput(f"{option} {accelerator}: this machine has {torch.cuda.device_count()} CUDA device(s):"
                               f" pass cuda:0 … cuda:{torch.cuda.device_count() - 1}")
        return torch.device(f"cuda{':' + index if index else ''}")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise InvalidInput(f"{option} mps: no Apple GPU is available here: pass {option} cpu (or auto)")
        return torch.device("mps")
    raise InvalidInput(f"{option} must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")


def check_sampler_steps(model, sampler) -> None:
    """A grid sampler (``steps_on_grid``) must not ask for more steps than a discrete model has: the process would merge
    them and the run take fewer than recorded (DDIM with 100000 steps on a 50-step DDPM runs 50).

    Reads what they declare: the model's ``process`` (None for an EBM), the process's ``num_timesteps`` (None for a
    continuous one), the sampler's ``steps_on_grid``, ``num_steps`` and ``denoise``
    (:class:`~lit_score.samplers.Sampler`).
    """
    if not sampler.steps_on_grid or model.process is None or model.process.num_timesteps is None:
        return  # Langevin-type samplers count steps per level or per chain, not grid intervals
    wanted, available, final = sampler.num_steps, model.process.num_timesteps, int(bool(sampler.denoise))
    intervals = wanted - final
    if intervals > available:
        most = available + final
        raise InvalidInput(f"{type(sampler).__name__} asks for num_steps {wanted} but {type(model).__name__} was"
                           f" trained on {available} discrete timesteps, so it would run at most {available}: pass"
                           f" --sampler.init_args.num_steps {most} or fewer")
