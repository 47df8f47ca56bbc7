"""``lit-score grid``: a time grid for a checkpoint, written as a grid file that any sampler's ``spacing`` names.

    lit-score grid --ckpt_path RUN/checkpoints/last.ckpt --method fit --steps 8 \\
        --sampler.class_path lit_score.samplers.DPMSolver --output grids/dpm8.json
    lit-score sample --ckpt_path RUN/checkpoints/last.ckpt --sampler.class_path lit_score.samplers.DPMSolver \\
        --sampler.init_args.num_steps 8 --sampler.init_args.spacing grids/dpm8.json

Methods: a closed form (``kl_optimal``, ``karras`` …), ``fit`` (the sampler's grid of least terminal error) or
``watson`` (the best steps of a DDPM for its bound). A command rather than a sampler option: a fit costs hundreds of
sampling runs and is made once per (checkpoint, sampler, steps), then kept with its protocol
(:mod:`lit_score.evaluation.grid`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from jsonargparse import ArgumentParser

from lit_score.cli.options import parse_command
from lit_score.evaluation.grid import METHODS, make_grid
from lit_score.loading.checkpoint import checkpoint_datamodule, checkpoint_summary, load_for_evaluation
from lit_score.loading.sampler import check_sampler, resolve_sampler
from lit_score.processes import StoredGrid, save_grid
from lit_score.samplers import Sampler
from lit_score.validation import InvalidInput, resolve_device


def grid_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="lit-score grid", exit_on_error=False,
                            description="Make a time grid for a checkpoint (closed form, fitted to a sampler, or"
                                        " Watson's strided DDPM bound) and write it as a grid file.")
    parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint written by `lit-score fit`")
    parser.add_argument("--method", type=str, default="kl_optimal", help=f"one of {', '.join(METHODS)}")
    parser.add_argument("--steps", type=int, required=True,
                        help="intervals of the grid (a sampler then takes num_steps = steps + 1 with denoise)")
    parser.add_argument("--output", type=str, required=True, help="the grid file to write (.json)")
    parser.add_subclass_arguments(Sampler, "sampler", required=False,
                                  help="--method fit: the deterministic ODE sampler to fit to (default: the model's)")
    parser.add_argument("--num_samples", type=int, default=512,
                        help="prior draws (fit) or held-out samples (watson) the objective averages over")
    parser.add_argument("--reference_steps", type=int, default=512, help="--method fit: steps of the reference run")
    parser.add_argument("--variance", type=str, default="beta_tilde", help="--method watson: beta_tilde or beta")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws")
    parser.add_argument("--weights", type=str, default="auto", help="auto, ema or raw weights of the checkpoint")
    parser.add_argument("--accelerator", type=str, default="auto", help="auto, cpu or cuda")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace an existing grid file")
    return parser


def grid_main(argv: list[str]) -> StoredGrid:
    """``lit-score grid``: load the checkpoint, make the grid (:func:`make_grid`), write it atomically, print it."""
    parser = grid_parser()
    cfg, given = parse_command(parser, argv)
    output = Path(cfg.output)
    if output.suffix != ".json":
        raise InvalidInput(f"--output {output} must end in .json (a sampler's spacing reads a .json path as a grid)")
    if output.exists() and not cfg.overwrite:
        raise InvalidInput(f"{output} exists: pass --overwrite true or choose another --output")
    if cfg.method not in METHODS:
        raise InvalidInput(f"unknown --method {cfg.method!r}: use one of {', '.join(METHODS)}")
    if min(cfg.steps, cfg.num_samples, cfg.reference_steps) < 1:
        raise InvalidInput(f"need --steps, --num_samples and --reference_steps >= 1, got {cfg.steps},"
                           f" {cfg.num_samples} and {cfg.reference_steps}")
    if cfg.variance not in ("beta_tilde", "beta"):
        raise InvalidInput(f"--variance must be beta_tilde or beta, got {cfg.variance!r}")
    device = resolve_device(cfg.accelerator)
    model, weights = load_for_evaluation(cfg.ckpt_path, cfg.weights, device)
    model.eval()
    sampler = None
    if cfg.method == "fit":
        sampler = resolve_sampler(parser.instantiate_classes(cfg).sampler, given, model)
        check_sampler(model, sampler)
    data = None
    if cfg.method == "watson":
        held_out = checkpoint_datamodule(cfg.ckpt_path).split_dataset("test")
        data = torch.stack([held_out[i] for i in range(min(cfg.num_samples, len(held_out)))]).to(device)
    grid = make_grid(model, cfg.method, cfg.steps, sampler=sampler, data=data, num_samples=cfg.num_samples,
                     seed=cfg.seed, reference_steps=cfg.reference_steps, variance=cfg.variance,
                     protocol={"checkpoint": checkpoint_summary(cfg.ckpt_path, weights)})
    save_grid(grid, output)
    value = grid.protocol.get("value")
    objective = f", {grid.protocol['objective']} {value:.6g}" if value is not None else ""
    print(f"wrote {output}: {grid.protocol['method']} grid of n = {grid.n} steps for {grid.process}{objective}")
    return grid


__all__ = ["grid_main", "grid_parser"]
