"""``lit-score encode``: probability-flow ODE latents of data, their decoding, and slerp paths between them.

    lit-score encode --ckpt_path RUN/checkpoints/last.ckpt [--input data.npz|image.png] [--num_samples 16] \\
        [--sampler.class_path lit_score.samplers.Heun] [--interpolate 8] [--class_label 3]

Writes ``<run>/latents/<ckpt>_<sampler>.npz`` (x, z, the reconstruction, its relative error, NFE), a picture of the
inputs and, with ``--interpolate``, one of the interpolation paths.
"""

from __future__ import annotations

from pathlib import Path

import torch
from jsonargparse import ArgumentParser

from lit_score.atomic import outputs
from lit_score.cli.options import data_range
from lit_score.control import decode, encode, interpolate
from lit_score.control.edit import load_array
from lit_score.loading.checkpoint import checkpoint_datamodule, load_model
from lit_score.loading.sampler import check_sampler
from lit_score.models import GenerativeModule
from lit_score.samplers import DPMSolver, Sampler
from lit_score.validation import (
    ENCODE_RULES,
    InvalidInput,
    check_options,
    check_output_stem,
    resolve_device,
    writable_folder,
)
from lit_score.visualize import save_image_grid, save_picture, save_samples


def encode_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="lit-score encode", exit_on_error=False,
                            description="Encode data into the prior's latent space by the probability-flow ODE (DDIM"
                                        " inversion), decode it back, and interpolate between encodings (slerp).")
    parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint written by `lit-score fit`")
    parser.add_argument("--input", type=str | None, default=None,
                        help="data to encode: .npz (samples, or the first array) or a PNG image; default: the"
                             " checkpoint's held-out split")
    parser.add_argument("--num_samples", type=int, default=16, help="how many held-out samples (without --input)")
    parser.add_subclass_arguments(Sampler, "sampler", required=False,
                                  help="a reversible ODE sampler (default DPMSolver, 20 steps; also Heun, Euler,"
                                       " AdaptiveODE, DDIM with eta 0, EDMHeun without churn)")
    parser.add_argument("--interpolate", type=int, default=8,
                        help="points on each slerp path between consecutive inputs (0: no interpolation grid)")
    parser.add_argument("--class_label", type=int | None, default=None,
                        help="a class-conditional model's class for the ODE (default: the null label)")
    parser.add_argument("--output", type=str | None, default=None, help="output stem (default: <run>/latents/…)")
    parser.add_argument("--accelerator", type=str, default="auto", help="auto, cpu or cuda")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace existing output files")
    return parser


def encode_main(argv: list[str]) -> dict[str, Path]:
    """``lit-score encode``: latents z = ODE(x) of data, the reconstruction decode(z), and slerp paths between
    consecutive inputs, written as ``<stem>.npz`` (x, z, reconstruction, its error, NFE) and PNGs."""
    parser = encode_parser()
    cfg = parser.parse_args(argv)
    if cfg.num_samples < 1 or cfg.interpolate < 0 or cfg.interpolate == 1:
        raise InvalidInput(f"need --num_samples >= 1 and --interpolate 0 or >= 2, got {cfg.num_samples} and"
                           f" {cfg.interpolate}")
    check_options(cfg, ENCODE_RULES)
    check_output_stem(cfg.output)
    device = resolve_device(cfg.accelerator)
    model = load_model(cfg.ckpt_path, map_location=device).eval()
    if model.process is None:
        raise InvalidInput(f"{type(model).__name__} has no noise process, so no probability-flow ODE: encode a"
                           " diffusion, score or flow model")
    sampler = reversible_sampler(parser.instantiate_classes(cfg).sampler)
    check_sampler(model, sampler)
    x = encoded_data(cfg, model)
    ckpt = Path(cfg.ckpt_path)
    stem = Path(cfg.output) if cfg.output else ckpt.parent.parent / "latents" / f"{ckpt.stem}_{type(sampler).__name__}"
    targets = [stem.with_suffix(".npz"), stem.with_suffix(".png"), stem.with_name(stem.name + "_interpolation.png")]
    existing = [p for p in targets if p.exists()]
    if existing and not cfg.overwrite:
        raise InvalidInput(f"{existing[0]} exists: pass --output elsewhere or --overwrite true")
    writable_folder(stem.parent)
    x = x.to(device)
    z, back, nfe, path = run_ode(model, sampler, x, cfg, device)
    return write_latents(x, z, back, nfe, path, stem, targets[2], model, sampler, cfg)


def reversible_sampler(chosen: Sampler | None) -> Sampler:
    """``--sampler`` (default DPMSolver, 20 steps), refused in one line when it cannot run backwards in time."""
    sampler = chosen if chosen is not None else DPMSolver(num_steps=20)
    if not sampler.reversible:
        raise InvalidInput(f"{type(sampler).__name__} cannot run backwards in time: encode with DPMSolver, Heun,"
                           " Euler, AdaptiveODE, DDIM (eta 0) or EDMHeun (S_churn 0)")
    return sampler


def encoded_data(cfg, model: GenerativeModule) -> torch.Tensor:
    """``--input``, or the first ``--num_samples`` of the checkpoint's held-out split."""
    if cfg.input is not None:
        return load_array(cfg.input, model.require_shape(), data_range(model), "--input")
    held_out = checkpoint_datamodule(Path(cfg.ckpt_path)).split_dataset("test")
    return torch.stack([held_out[i] for i in range(min(cfg.num_samples, len(held_out)))])


def run_ode(model: GenerativeModule, sampler: Sampler, x: torch.Tensor, cfg, device: torch.device):
    """z = encode(x), decode(z), its NFE, and the slerp paths between consecutive pairs (None without
    ``--interpolate`` or with one input): (z, reconstruction, nfe, paths (num, pairs, ...))."""
    labels = None
    if cfg.class_label is not None:
        model.set_condition(cfg.class_label)
        labels = torch.tensor(cfg.class_label, device=device)  # one label: the view repeats it for any batch
    with torch.no_grad():
        score_fn = model.conditioned_score(labels)
        encoded = encode(score_fn, model.process, sampler, x, progress=True)
        z, nfe = encoded.samples, encoded.nfe
        back = decode(score_fn, model.process, sampler, z, progress=True).samples
        path = None
        if cfg.interpolate and x.shape[0] >= 2:
            pairs = x.shape[0] // 2
            path = interpolate(score_fn, model.process, sampler, x[0 : 2 * pairs : 2], x[1 : 2 * pairs : 2],
                               num=cfg.interpolate).samples  # (num, pairs, ...)
    return z, back, nfe, path


def write_latents(x, z, back, nfe, path, stem: Path, interpolation: Path, model: GenerativeModule, sampler: Sampler,
                  cfg) -> dict[str, Path]:
    """Every file once the work has succeeded (all, or none), and one line saying what was written."""
    error = (back - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-12)
    metadata = {"latents": z.cpu().numpy(), "reconstruction": back.cpu().numpy(),
                "relative_error": error.cpu().numpy(), "nfe": nfe, "sampler": repr(sampler),
                "ckpt_path": str(Path(cfg.ckpt_path))}
    if cfg.class_label is not None:
        metadata["class_label"] = cfg.class_label
    with outputs():  # every file, or none
        paths = save_samples(x.cpu(), stem, data_range=data_range(model),
                             title=f"inputs of {type(model).__name__}", metadata=metadata)
        paths = {"npz": paths["npz"]}
        if path is not None:
            rows = path.transpose(0, 1).flatten(0, 1).cpu()  # one row per pair: x_a … x_b
            if rows.ndim == 4:
                save_image_grid(rows, interpolation, data_range(model), nrow=cfg.interpolate)
            else:
                save_picture(rows, interpolation, title=f"slerp paths between {path.shape[1]} pairs"
                                                        f" ({cfg.interpolate} points)")
            paths["interpolation"] = interpolation
    print(f"wrote {', '.join(str(p) for p in paths.values())} ({x.shape[0]} inputs, NFE {nfe} each way, median"
          f" relative reconstruction error {float(error.median()):.2e})")
    return paths
