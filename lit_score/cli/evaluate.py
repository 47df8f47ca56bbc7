"""``lit-score evaluate``: the command line over :func:`lit_score.evaluation.evaluate.evaluate`.

    lit-score evaluate --ckpt_path RUN/checkpoints/last.ckpt --num_samples 10000 \\
        [--sampler.class_path … --sampler.init_args.num_steps 20] [--metrics fid,kid,isc,prc,bpd,distances] \\
        [--reference train|test] [--feature_extractor inception-v3-compat|digits|<class path>] [--seeds 0,1,2] \\
        [--samples path.npz|image_folder] [--guidance_scales 0,1,2,4]

Writes ``<run>/eval/<checkpoint>_<sampler>_n<N>_<settings hash>/`` (or ``--output``): ``metrics.json`` (numbers and
protocol), ``samples_seed<S>.npz`` and ``samples.png``; refuses to overwrite an existing evaluation unless asked.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.loggers import Logger

from lit_score.atomic import outputs, write_json
from lit_score.cli.options import add_condition_arguments, apply_condition, parse_command
from lit_score.data import GenerativeDataModule
from lit_score.evaluation.evaluate import (
    METRIC_GROUPS,
    EvaluationError,
    EvaluationResult,
    content_key,
    default_metrics,
    describe_sampler,
    evaluate,
    is_child_rank,
    parse_list,
)
from lit_score.evaluation.outputs import log_result, plot_curve, print_summary, write_outputs
from lit_score.evaluation.samples import load_samples
from lit_score.loading.checkpoint import checkpoint_datamodule, checkpoint_summary, load_for_evaluation
from lit_score.loading.sampler import check_sampler, resolve_sampler
from lit_score.samplers import Sampler
from lit_score.validation import EVALUATE_RULES, check_options, check_output_folder, resolve_device

Run = Callable[[Path], EvaluationResult | None]


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
    cfg, given = parse_command(parser, argv)
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
    model, checkpoint, datamodule = evaluated_model(cfg, datamodule, device)
    samples, source, seeds = given_samples(cfg, datamodule, seeds)
    if model is not None:
        sampler = resolve_sampler(sampler, given, model)
        check_sampler(model, sampler, datamodule)
    output = output_folder(cfg, sampler, checkpoint)
    if cfg.guidance_scales is not None and metrics is None:
        # bpd is the null-label model's: the same at every scale, so not re-measured by default
        metrics = [m for m in default_metrics(model, datamodule) if m != "bpd"]
    arguments = evaluate_arguments(cfg, sampler, metrics, seeds, samples, source, checkpoint, device)

    def run(out: Path) -> EvaluationResult | None:
        return evaluate(model, datamodule, output=out if cfg.samples is None else None, **arguments)

    if cfg.guidance_scales is not None:
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


def evaluated_model(cfg, datamodule: GenerativeDataModule | None, device: torch.device):
    """The checkpoint's model (weights, start and condition set), its summary for the protocol and the data it is
    measured against (``--data``, else the checkpoint's own); (None, None, ``--data``) without ``--ckpt_path``."""
    if cfg.ckpt_path is None:
        return None, None, datamodule
    model, weights = load_for_evaluation(cfg.ckpt_path, cfg.weights, device)
    model.set_sample_start(cfg.start)
    apply_condition(model, cfg, device)
    checkpoint = checkpoint_summary(cfg.ckpt_path, weights)
    datamodule = datamodule if datamodule is not None else checkpoint_datamodule(cfg.ckpt_path)
    if tuple(datamodule.sample_shape) != tuple(model.require_shape()):
        raise EvaluationError(f"the data has sample shape {datamodule.sample_shape} but the model was trained on"
                              f" {model.sample_shape}: pass matching --data")
    return model, checkpoint, datamodule


def given_samples(cfg, datamodule: GenerativeDataModule, seeds: list[int]):
    """``--samples``: one tensor per seed set, their source for the protocol, and the seed sets they stand for."""
    if cfg.samples is None:
        return None, None, seeds
    loaded = [load_samples(p, datamodule) for p in parse_list(cfg.samples if len(cfg.samples) > 1
                                                             else cfg.samples[0])]
    samples, source = [x for x, _ in loaded], {"sets": [info for _, info in loaded]}
    source["nfe"] = loaded[0][1].get("nfe")
    source["labels"] = [info.pop("labels", None) for info in source["sets"]]  # kept out of the protocol's JSON
    return samples, source, seeds if len(samples) == len(seeds) else list(range(len(samples)))


def output_folder(cfg, sampler: Sampler | None, checkpoint: dict | None) -> Path:
    """``--output``, else ``<run>/eval/<ckpt>_<sampler>_n<N>_<settings hash>``; refused when it holds an evaluation
    (without ``--overwrite``) or cannot be written, before anything is generated."""
    ignored = ("output", "overwrite", "progress", "logger", "sampler", "config", "__path__")
    settings = {**{k: v for k, v in cfg.items() if k.split(".")[0] not in ignored}, "ckpt": checkpoint,
                "sampler": describe_sampler(sampler)}
    if cfg.output is not None:
        output = Path(cfg.output)
    elif cfg.ckpt_path is not None:
        name = type(sampler).__name__ if cfg.samples is None else "samples"
        output = (Path(cfg.ckpt_path).parent.parent / "eval" /
                  f"{Path(cfg.ckpt_path).stem}_{name}_n{cfg.num_samples}_{content_key(settings, 8)}")
    else:
        raise EvaluationError("pass --output for samples evaluated without a checkpoint")
    written = output / ("guidance_curve.json" if cfg.guidance_scales is not None else "metrics.json")
    if not is_child_rank() and written.exists() and not cfg.overwrite:
        raise EvaluationError(f"{written} exists: pass --output elsewhere or --overwrite true")
    if not is_child_rank():
        check_output_folder(output)  # a file there, or a read-only place: refused now, not after generating
    return output


def evaluate_arguments(cfg, sampler, metrics, seeds, samples, source, checkpoint, device) -> dict[str, Any]:
    """The keyword arguments of :func:`~lit_score.evaluation.evaluate.evaluate` every scale of a run shares."""
    trainer_kwargs = {"accelerator": "gpu" if device.type == "cuda" else "cpu", "devices": cfg.devices,
                      "strategy": cfg.strategy, "num_nodes": cfg.num_nodes, "precision": cfg.precision}
    return dict(
        num_samples=cfg.num_samples, sampler=sampler, metrics=metrics, reference=cfg.reference,
        feature_extractor=cfg.feature_extractor, feature_extractor_weights_path=cfg.feature_extractor_weights_path,
        seeds=seeds, batch_size=cfg.batch_size, samples=samples, samples_source=source,
        likelihood_samples=cfg.likelihood_samples, likelihood_estimator=cfg.likelihood_estimator,
        likelihood_options=cfg.likelihood_options, distance_samples=cfg.distance_samples,
        kid_subset_size=cfg.kid_subset_size, cache_root=cfg.cache_root, half_samples=cfg.half_samples,
        trainer_kwargs=trainer_kwargs, checkpoint=checkpoint, progress=cfg.progress,
    )


def guidance_curve(model, cfg, scales: list[float], run: Run, output: Path, datamodule,
                   device) -> EvaluationResult | None:
    """Evaluate at every guidance scale w (classifier-free, or the classifier's with ``--classifier_ckpt``) into
    ``output/w<w>/``, then write ``guidance_curve.json`` (a row per w: the headline metrics, accuracy included) and
    ``guidance_curve.png`` (each metric against w): the fidelity / class-adherence trade-off of guided sampling."""
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
        except ValueError as err:
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
    plot_curve(rows, kind, output / "guidance_curve.png")
    print(f"wrote {output / 'guidance_curve.json'} and {output / 'guidance_curve.png'}")
    return result


def _labels(model, cfg) -> torch.Tensor | None:
    """The class labels of generated samples (by seed index), None for an unconditional model or given samples."""
    if model is None or cfg.samples is not None:
        return None
    return model.condition_labels(torch.arange(cfg.num_samples))
