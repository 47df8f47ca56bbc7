"""``lit-score pairs``: draw reflow pairs (noise, ODE sample) of a checkpoint into a folder of shards.

    lit-score pairs --ckpt_path runs/flow_toy/version_0/checkpoints/last.ckpt --num_pairs 20000 \\
        --output runs/flow_toy/pairs --sampler.class_path lit_score.samplers.Heun --sampler.init_args.num_steps 50

Thin: it parses, loads, resolves the sampler as ``sample`` does and calls
:func:`lit_score.distillation.draw_pairs` (deterministic by seed, resumable: rerun the same command to complete an
interrupted folder; one line for a folder of another protocol or a stochastic sampler).
"""

from __future__ import annotations

from jsonargparse import ArgumentParser

from lit_score.cli.options import parse_command
from lit_score.distillation.reflow import PairsResult, draw_pairs, teacher_model
from lit_score.loading.sampler import resolve_sampler
from lit_score.samplers import Sampler
from lit_score.validation import InvalidInput, resolve_device, writable_folder


def pairs_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="lit-score pairs", description="Draw reflow pairs of a lit-score checkpoint.",
                            exit_on_error=False)
    parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint written by `lit-score fit`")
    parser.add_argument("--num_pairs", type=int, required=True, help="how many (noise, sample) pairs")
    parser.add_argument("--output", type=str, required=True, help="the folder of the shards and manifest.json")
    parser.add_argument("--shard_size", type=int, default=10000, help="pairs per shard file")
    parser.add_argument("--seed", type=int, default=0, help="seed set of the noise (pair i: seed index i)")
    parser.add_argument("--weights", type=str, default="auto", help="auto, ema or raw weights of the checkpoint")
    parser.add_subclass_arguments(Sampler, "sampler", required=False,
                                  help="a deterministic ODE sampler (default: the model's own)")
    parser.add_argument("--accelerator", type=str, default="auto", help="auto, cpu or cuda")
    return parser


def pairs_main(argv: list[str]) -> PairsResult:
    """``lit-score pairs``: load the checkpoint, draw (or complete) the pairs, print what was written."""
    parser = pairs_parser()
    cfg, given = parse_command(parser, argv)
    if cfg.num_pairs < 1 or cfg.shard_size < 1:
        raise InvalidInput(f"need --num_pairs >= 1 and --shard_size >= 1, got {cfg.num_pairs} and {cfg.shard_size}")
    writable_folder(cfg.output)
    device = resolve_device(cfg.accelerator)
    model, origin = teacher_model(cfg.ckpt_path, cfg.weights, device)
    sampler = resolve_sampler(parser.instantiate_classes(cfg).sampler, given, model)
    result = draw_pairs(model, sampler, cfg.num_pairs, cfg.shard_size, cfg.output, cfg.seed, origin=origin)
    state = "complete" if result.complete else "incomplete (other ranks' shards missing)"
    print(f"wrote {result.drawn} shard(s), kept {result.skipped} in {result.output_dir} ({cfg.num_pairs} pairs,"
          f" NFE {result.nfe} per pair, {type(sampler).__name__}, weights {origin['weights']}; {state})")
    return result


__all__ = ["pairs_main", "pairs_parser"]
