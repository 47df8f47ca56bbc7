"""``lit-score evaluate``: the command line over :func:`lit_score.evaluation.evaluate.evaluate`.

    lit-score evaluate --ckpt_path RUN/checkpoints/last.ckpt --num_samples 10000 \\
        [--sampler.class_path … --sampler.init_args.num_steps 20] [--metrics fid,kid,isc,prc,bpd,distances] \\
        [--reference train|test] [--feature_extractor inception-v3-compat|digits|<class path>] [--seeds 0,1,2] \\
        [--samples path.npz|image_folder]

Writes ``<run>/eval/<checkpoint>_<sampler>_n<N>_<settings hash>/`` (or ``--output``): ``metrics.json`` (numbers and
protocol), ``samples_seed<S>.npz`` and ``samples.png``; refuses to overwrite an existing evaluation unless asked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.loggers import Logger

from lit_score.atomic import jsonable, outputs, save_figure, write_json
from lit_score.data import GenerativeDataModule
from lit_score.evaluation.evaluate import (
    METRIC_GROUPS,
    EvaluationError,
    EvaluationResult,
    content_key,
    describe_sampler,
    evaluate,
    is_child_rank,
    parse_list,
)
from lit_score.loading import load_datamodule, read_checkpoint
from lit_score.samplers import Sampler
from lit_score.validation import (
    EVALUATE_RULES,
    check_array,
    check_options,
    check_output_folder,
    read_array,
    resolve_device,
)
from lit_score.visualize import save_picture


def checkpoint_datamodule(ckpt_path: str | Path) -> GenerativeDataModule:
    """The datamodule a checkpoint was trained on, rebuilt from its ``datamodule_hyper_parameters``."""
    return load_datamodule(ckpt_path, GenerativeDataModule)


def checkpoint_summary(ckpt_path: str | Path, weights: str) -> dict[str, Any]:
    """What the protocol records of a checkpoint: path, step, epoch, EMA, which weights were evaluated."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    return {"path": str(ckpt_path), "global_step": ckpt.get("global_step"), "epoch": ckpt.get("epoch"),
            "ema_in_checkpoint": "current_model_state" in ckpt, "weights": weights}


def load_for_evaluation(ckpt_path: str | Path, weights: str, device: torch.device):
    """The checkpoint's model with its EMA weights (``ema``), its raw weights (``raw``) or whichever it has
    (``auto``: EMA when the run averaged weights); returns (model, weights actually loaded)."""
    from lit_score.cli import load_model

    ckpt = read_checkpoint(ckpt_path)  # one line for a missing, corrupt or pickled file (load_model checks classes)
    has_ema = "current_model_state" in ckpt
    if weights not in ("auto", "ema", "raw"):
        raise EvaluationError(f"--weights must be auto, ema or raw, got {weights!r}")
    if weights == "ema" and not has_ema:
        raise EvaluationError(f"checkpoint {ckpt_path} holds no EMA weights (the run used no lit_score.callbacks.EMA):"
                              " use --weights raw")
    model = load_model(ckpt_path, map_location=device)
    if weights == "raw" and has_ema:
        model.load_state_dict(ckpt["current_model_state"])
    return model, ("ema" if has_ema and weights != "raw" else "raw")


def load_samples(path: str | Path, datamodule: GenerativeDataModule) -> tuple[torch.Tensor, dict[str, Any]]:
    """Samples made elsewhere: an ``.npz`` with ``samples`` in the data range (``lit-score sample`` writes these), or a
    folder of images (PNG / JPEG) mapped from 0 … 255 onto the data range."""
    path = Path(path)
    if path.is_dir():
        from PIL import Image

        from lit_score.data.images import find_images

        files = find_images(path)
        channels = datamodule.sample_shape[0] if datamodule.is_image else 3
        mode = "L" if channels == 1 else "RGB"
        arrays = []
        for f in files:
            with Image.open(f) as image:
                arrays.append(np.asarray(image.convert(mode)))
        u = torch.from_numpy(np.stack(arrays))
        u = u[:, None] if u.ndim == 3 else u.permute(0, 3, 1, 2)
        check_array(u.numpy(), f"--samples {path}", min_rows=2)
        lo, hi = datamodule.data_range
        return lo + (hi - lo) * u.float() / 255, {"path": str(path), "format": "image folder", "files": len(files)}
    if not path.is_file():
        raise EvaluationError(f"samples {path} do not exist: pass an .npz (lit-score sample writes one) or an image"
                              " folder")
    raw, extras = read_array(path, "--samples")
    check_array(raw, f"--samples {path}", min_rows=2)  # real, finite, and a distribution needs two samples
    nfe, labels = extras.get("nfe"), extras.get("labels")
    if tuple(raw.shape[1:]) != tuple(datamodule.sample_shape):
        raise EvaluationError(f"--samples {path} holds samples of shape {tuple(raw.shape[1:])} but the data's are"
                              f" {tuple(datamodule.sample_shape)}: pass samples of this data (or matching --data)")
    if raw.dtype == np.uint8:  # 8-bit images: 0 … 255 onto the data range
        lo, hi = datamodule.data_range
        x = lo + (hi - lo) * torch.from_numpy(raw).float() / 255
    else:
        x = torch.from_numpy(raw.astype(np.float32))
    nfe_value = float(np.mean(nfe)) if nfe is not None else None
    info = {"path": str(path), "format": "npz", "nfe": nfe_value}
    if labels is not None:  # the classes the samples were drawn for (lit-score sample writes them)
        info["labels"] = torch.from_numpy(labels.astype(np.int64))
    return x, info


def evaluate_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="lit-score evaluate", exit_on_error=False,
                            description="Sample a checkpoint and measure it (FID/KID/IS/PR, distances, bits/dim), "
                                        "writing every number with its protocol.")
    parser.add_argument("--ckpt_path", type=str | None, default=None, help="checkpoint written by `lit-score fit`")
    parser.add_argument("--num_samples", type=int, default=10000, help="samples per seed set")
    parser.add_subclass_arguments(Sampler, "sampler", required=False, help="sampler (default: the model's own)")
    parser.add_argument("--metrics", type=str | None, default=None,
                        help=f"comma list of {','.join(METRIC_GROUPS)} (default: fid,kid,isc,prc on images, "
                             "distances,bpd otherwise)")
    parser.add_argument("--reference", type=str, default="train", help="reference split: train or test")
    parser.add_argument("--feature_extractor", type=str | None, default=None,
                        help="inception-v3-compat, digits-v2, digits (v1) or the class path of a torch-fidelity "
                             "FeatureExtractorBase (default: the data's own: digits-v2 for the digits, else Inception)")
    parser.add_argument("--feature_extractor_weights_path", type=str | None, default=None,
                        help="weights file of the extractor (default: torch-fidelity's cache / the shipped file)")
    parser.add_argument("--seeds", type=str, default="0", help="seed sets, e.g. 0,1,2: mean ± std over them")
    parser.add_argument("--samples", type=str, nargs="+", default=None,
                        help="evaluate samples made elsewhere: one .npz or image folder per seed set")
    parser.add_argument("--batch_size", type=int | None, default=None, help="generation batch (default min(N, 1000))")
    parser.add_argument("--weights", type=str, default="auto", help="auto, ema or raw weights of the checkpoint")
    parser.add_argument("--start", type=str | None, default=None,
                        help="where chains start: the model's default or one it declares (an EBM's buffer)")
    from lit_score.cli import add_condition_arguments

    add_condition_arguments(parser)
    parser.add_argument("--guidance_scales", type=str | None, default=None,
                        help="a guidance curve: evaluate at each classifier-free guidance scale w (e.g. 0,1,2,4; or"
                             " the classifier's with --classifier_ckpt), writing guidance_curve.json/.png")
    parser.add_subclass_arguments(GenerativeDataModule, "data", required=False,
                                  help="data to compare against (default: the checkpoint's own)")
    parser.add_argument("--likelihood_samples", type=int, default=1000, help="held-out samples for bpd")
    parser.add_argument("--likelihood_estimator", type=str | None, default=None,
                        help="pf_ode, vlb, quadrature, ais or all (default: the family's first)")
    parser.add_argument("--likelihood_options", type=dict | None, default=None,
                        help='estimator options, e.g. {"divergence": "hutchinson", "fixed_steps": 100}, or per'
                             ' estimator: {"pf_ode": {"fixed_steps": 100}, "vlb": {"variance": "beta"}}')
    parser.add_argument("--distance_samples", type=int, default=4000, help="samples the toy distances use (≤ N)")
    parser.add_argument("--kid_subset_size", type=int | None, default=None, help="KID subset (default min(1000, N))")
    parser.add_argument("--half_samples", type=int, default=20,
                        help="random halves behind each image metric's standard error (0: none)")
    parser.add_argument("--cache_root", type=str | None, default=None,
                        help="reference-feature cache (default $LIT_SCORE_CACHE or ~/.cache/lit-score/fidelity)")
    parser.add_argument("--output", type=str | None, default=None, help="output folder (default <run>/eval/…)")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace an existing evaluation folder")
    parser.add_argument("--accelerator", type=str, default="auto", help="auto, cpu or gpu")
    parser.add_argument("--devices", type=int | str, default=1, help="devices to generate on (DDP when > 1)")
    parser.add_argument("--strategy", type=str, default="auto", help="auto, ddp, …")
    parser.add_argument("--num_nodes", type=int, default=1, help="nodes (with a launcher: torchrun / SLURM)")
    parser.add_argument("--precision", type=str, default="32-true", help="Lightning precision of the generation")
    parser.add_subclass_arguments(Logger, "logger", required=False, help="also log the numbers and protocol here")
    parser.add_argument("--progress", type=bool, default=True, help="progress bars")
    return parser


def evaluate_main(argv: list[str]) -> EvaluationResult | None:
    """``lit-score evaluate``."""
    parser = evaluate_parser()
    cfg = parser.parse_args(argv)
    check_options(cfg, EVALUATE_RULES)  # every option, before anything is loaded or generated
    if cfg.half_samples == 1:  # one half has no spread: the standard error needs two or more
        raise EvaluationError("--half_samples must be 0 (no error bars) or an integer >= 2, got 1")
    init = parser.instantiate_classes(cfg)
    sampler, datamodule, logger = init.sampler, init.data, init.logger
    seeds = parse_list(cfg.seeds, int)
    metrics = parse_list(cfg.metrics)
    if cfg.ckpt_path is None and (cfg.samples is None or datamodule is None):
        raise EvaluationError("pass --ckpt_path, or --samples with --data")
    device = resolve_device(cfg.accelerator)
    model, checkpoint = None, None
    if cfg.ckpt_path is not None:
        model, weights = load_for_evaluation(cfg.ckpt_path, cfg.weights, device)
        model.set_sample_start(cfg.start)
        from lit_score.cli import apply_condition

        apply_condition(model, cfg, device)
        checkpoint = checkpoint_summary(cfg.ckpt_path, weights)
        datamodule = datamodule if datamodule is not None else checkpoint_datamodule(cfg.ckpt_path)
        if tuple(datamodule.sample_shape) != tuple(model.require_shape()):
            raise EvaluationError(f"the data has sample shape {datamodule.sample_shape} but the model was trained on"
                                  f" {model.sample_shape}: pass matching --data")
    samples, source = None, None
    if cfg.samples is not None:
        loaded = [load_samples(p, datamodule) for p in parse_list(cfg.samples if len(cfg.samples) > 1
                                                                 else cfg.samples[0])]
        samples, source = [x for x, _ in loaded], {"sets": [info for _, info in loaded]}
        source["nfe"] = loaded[0][1].get("nfe")
        source["labels"] = [info.pop("labels", None) for info in source["sets"]]  # kept out of the protocol's JSON
        if len(samples) != len(seeds):
            seeds = list(range(len(samples)))
    effective_sampler = sampler
    if model is not None:
        from lit_score.cli import check_sampler, resolve_sampler

        sampler = effective_sampler = resolve_sampler(sampler, parser, argv, model)
        check_sampler(model, effective_sampler)
    ignored = ("output", "overwrite", "progress", "logger", "sampler", "config", "__path__")
    settings = {**{k: v for k, v in cfg.items() if k.split(".")[0] not in ignored}, "ckpt": checkpoint,
                "sampler": describe_sampler(effective_sampler)}
    if cfg.output is not None:
        output = Path(cfg.output)
    elif cfg.ckpt_path is not None:
        name = type(effective_sampler).__name__ if cfg.samples is None else "samples"
        output = (Path(cfg.ckpt_path).parent.parent / "eval" /
                  f"{Path(cfg.ckpt_path).stem}_{name}_n{cfg.num_samples}_{content_key(settings, 8)}")
    else:
        raise EvaluationError("pass --output for samples evaluated without a checkpoint")
    written = output / ("guidance_curve.json" if cfg.guidance_scales is not None else "metrics.json")
    if not is_child_rank() and written.exists() and not cfg.overwrite:
        raise EvaluationError(f"{written} exists: pass --output elsewhere or --overwrite true")
    if not is_child_rank():
        check_output_folder(output)  # a file there, or a read-only place: refused now, not after generating
    trainer_kwargs = {"accelerator": "gpu" if device.type == "cuda" else "cpu", "devices": cfg.devices,
                      "strategy": cfg.strategy, "num_nodes": cfg.num_nodes, "precision": cfg.precision}

    def run(out: Path) -> EvaluationResult | None:
        return evaluate(
            model, datamodule, num_samples=cfg.num_samples, sampler=sampler, metrics=metrics,
            reference=cfg.reference, feature_extractor=cfg.feature_extractor,
            feature_extractor_weights_path=cfg.feature_extractor_weights_path, seeds=seeds, batch_size=cfg.batch_size,
            samples=samples, samples_source=source, likelihood_samples=cfg.likelihood_samples,
            likelihood_estimator=cfg.likelihood_estimator, likelihood_options=cfg.likelihood_options,
            distance_samples=cfg.distance_samples, kid_subset_size=cfg.kid_subset_size, cache_root=cfg.cache_root,
            half_samples=cfg.half_samples, trainer_kwargs=trainer_kwargs,
            output=out if cfg.samples is None else None, checkpoint=checkpoint,
            progress=cfg.progress,
        )

    if cfg.guidance_scales is not None:
        if metrics is None:  # bpd is the null-label model's: the same at every scale, so not re-measured by default
            from lit_score.evaluation.evaluate import default_metrics

            metrics = [m for m in default_metrics(model, datamodule) if m != "bpd"]
        with outputs():  # every scale's folder and the curve, or nothing
            return guidance_curve(model, cfg, parse_list(cfg.guidance_scales, float), run, output, datamodule, device)
    with outputs():  # the samples, the picture and metrics.json, or nothing
        result = run(output)
        if result is None:
            return None
        write_outputs(result, output, datamodule, title=f"{result.protocol['model'] or 'samples'}".rpartition(".")[2],
                      labels=_labels(model, cfg))
    if logger is not None:
        log_result(logger, result, step=(checkpoint or {}).get("global_step") or 0)
    print_summary(result, output)
    return result


def guidance_curve(model, cfg, scales: list[float], run, output: Path, datamodule, device) -> EvaluationResult | None:
    """Evaluate at every guidance scale w (classifier-free, or the classifier's with ``--classifier_ckpt``) into
    ``output/w<w>/``, then write ``guidance_curve.json`` (a row per w: the headline metrics, accuracy included) and
    ``guidance_curve.png`` (each metric against w): the fidelity / class-adherence trade-off of guided sampling."""
    from lit_score.cli import UserError, apply_condition

    if model is None or not scales:
        raise EvaluationError("--guidance_scales needs --ckpt_path and at least one scale")
    kind = "classifier_scale" if cfg.classifier_ckpt else "guidance_scale"
    rows, result = [], None
    for w in scales:
        try:
            setattr(cfg, kind, w)
            if kind == "classifier_scale" and w == 0:
                model.set_condition(cfg.class_label, cfg.guidance_scale)  # w_c = 0: the unguided model
            else:
                apply_condition(model, cfg, device)
        except (UserError, ValueError) as err:
            raise EvaluationError(f"guidance scale {w:g}: {err}") from err
        result = run(output / f"w{w:g}")
        if result is None:  # a DDP child rank: it took part in the generation only
            continue
        write_outputs(result, output / f"w{w:g}", datamodule, title=f"{kind} {w:g}", labels=_labels(model, cfg))
        print_summary(result, output / f"w{w:g}")
        rows.append({kind: w, **{k: v for k, v in result.headline().items()},
                     "nfe": result.protocol.get("nfe")})
    if not rows:
        return None
    # The protocol every row shares (samples, reference, extractor, weights, sampler); the swept scale is the rows'.
    protocol = {**result.protocol, "condition": {**(result.protocol.get("condition") or {}), kind: scales}}
    write_json(output / "guidance_curve.json", {"scale": kind, "rows": rows, "protocol": protocol})
    _plot_curve(rows, kind, output / "guidance_curve.png")
    print(f"wrote {output / 'guidance_curve.json'} and {output / 'guidance_curve.png'}")
    return result


def _labels(model, cfg) -> torch.Tensor | None:
    """The class labels of generated samples (by seed index), None for an unconditional model or given samples."""
    if model is None or cfg.samples is not None:
        return None
    return model.condition_labels(torch.arange(cfg.num_samples))


def _plot_curve(rows: list[dict[str, Any]], kind: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, v in rows[0].items()
             if k not in (kind, "nfe") and not k.endswith("_floor") and isinstance(v, (int, float))]
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    scales = [r[kind] for r in rows]
    for ax, name in zip(axes[0], names):
        ax.plot(scales, [r[name] for r in rows], marker="o")
        ax.set_xlabel(kind.replace("_", " "))
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)


def write_outputs(result: EvaluationResult, output: Path, datamodule: GenerativeDataModule, title: str,
                  labels: torch.Tensor | None = None) -> Path:
    """``metrics.json`` and a picture of the first seed set's samples (grid or scatter beside the data; a row per
    class, or coloured by class, with the samples' class ``labels``)."""
    if not result.samples:  # bits/dim only: nothing was generated, so there is no picture
        return write_json(output / "metrics.json", result.to_dict())
    x = result.samples[0]
    reference = None if datamodule.is_image else datamodule.reference_draw(min(len(x), 2000),
                                                                           torch.Generator().manual_seed(0))
    nfe = result.protocol.get("nfe")
    shown = min(len(x), 2000 if not datamodule.is_image else (256 if labels is not None else 64))
    flagged = torch.zeros(shown, dtype=torch.bool)  # framed red: off the data manifold by k-NN realism
    flagged[[i for i in result.per_seed[0].get("realism_flagged_index", []) if i < shown]] = True
    save_picture(x[:shown], output / "samples.png", datamodule.data_range, reference,
                 f"{title} · NFE {nfe:g}" if nfe is not None else title,
                 None if labels is None else labels[:shown].cpu(), marked=flagged)
    return write_json(output / "metrics.json", result.to_dict())


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a/b": 1} (for loggers' hyper-parameter tables)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}/"))
        else:
            out[name] = json.dumps(jsonable(value)) if isinstance(value, (list, tuple)) else jsonable(value)
    return out


def log_result(logger: Logger, result: EvaluationResult, step: int = 0) -> None:
    """The headline numbers as ``eval/<name>`` and the protocol as hyper-parameters."""
    metrics = {f"eval/{k}": v for k, v in result.headline().items() if isinstance(v, (int, float)) and v == v}
    logger.log_metrics(metrics, step=step)
    logger.log_hyperparams(flatten({"eval_protocol": result.protocol}))
    logger.finalize("success")


def print_summary(result: EvaluationResult, output: Path) -> None:
    rows = []
    for name, summary in result.metrics.items():
        mean, std = summary.get("mean"), summary.get("std")
        text = "n/a" if mean is None or mean != mean else f"{mean:.6g}"
        if summary.get("sem") is not None and summary["sem"] == summary["sem"]:
            text += f" ± {summary['sem']:.2g} (s.e., {summary.get('sem_from')})"
        elif std is not None:
            text += f" ± {std:.2g}"
        if "floor" in summary and "ratio" in summary:
            text += f"  (floor {summary['floor']:.4g}, ratio {summary['ratio']:.3g})"
        elif "floor" in summary:
            floor_sem = summary.get("floor_sem")
            text += f"  (data floor at this n {summary['floor']:.4g}" + (
                f" ± {floor_sem:.2g})" if floor_sem is not None and floor_sem == floor_sem else ")")
        rows.append(f"  {name:<20} {text}")
    p = result.protocol
    nfe = "n/a" if p.get("nfe") is None else f"{p['nfe']:g}"
    if p["num_samples"]:
        print(f"lit-score evaluate: {p['num_samples']} samples x {len(p['seeds'])} seed set(s), NFE {nfe}, "
              f"weights {p.get('weights') or 'n/a'}; generation {p['wall_time']['generation_s']:.1f} s, features "
              f"{p['wall_time']['features_s']:.1f} s")
    else:
        print(f"lit-score evaluate: no samples generated (bits/dim only), weights {p.get('weights') or 'n/a'};"
              f" likelihood {p['wall_time']['likelihood_s']:.1f} s")
    print("\n".join(rows))
    print(f"wrote {output / 'metrics.json'}")
