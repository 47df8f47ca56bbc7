"""``lit-score sample``: draw samples from a checkpoint with any sampler, written as a PNG and an ``.npz`` with NFE.

    lit-score sample --ckpt_path runs/ddpm_toy/version_0/checkpoints/last.ckpt --num_samples 2000 \\
        --sampler.class_path lit_score.samplers.DDIM --sampler.init_args.num_steps 50

No config is needed: the checkpoint records its model class and hyper-parameters. ``--init`` (SDEdit) and
``--inpaint --mask`` (inpainting) edit given data instead of sampling from the prior.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from jsonargparse import ArgumentParser
from tqdm.auto import tqdm

from lit_score.atomic import outputs
from lit_score.cli.options import add_condition_arguments, apply_condition, data_range, parse_command
from lit_score.control.edit import Edit, load_array
from lit_score.data import GenerativeDataModule
from lit_score.evaluation.evaluate import EvaluationError
from lit_score.generation import SeedBatches, seed_batch_draw
from lit_score.loading import CheckpointError
from lit_score.loading.checkpoint import checkpoint_datamodule, load_model, used_ema
from lit_score.loading.sampler import check_sampler, resolve_sampler
from lit_score.models import GenerativeModule
from lit_score.samplers import Draw, Sampler
from lit_score.validation import (
    SAMPLE_RULES,
    InvalidInput,
    check_options,
    check_output_stem,
    resolve_device,
    writable_folder,
)
from lit_score.visualize import save_samples


def sample_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="lit-score sample", description="Draw samples from a lit-score checkpoint.", exit_on_error=False
    )
    parser.add_argument("--ckpt_path", type=str, required=True, help="checkpoint written by `lit-score fit`")
    parser.add_argument("--num_samples", type=int, default=64, help="how many samples")
    parser.add_subclass_arguments(Sampler, "sampler", required=False, help="sampler (default: the model's own)")
    parser.add_argument("--batch_size", type=int | None, default=None,
                        help="generation batch (default min(N, 1000), as evaluate: the same seed, the same samples)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    parser.add_argument("--start", type=str | None, default=None,
                        help="where chains start: the model's default (prior, or an EBM's noise) or one it declares"
                             " (an EBM's buffer: continue the checkpoint's replay-buffer chains)")
    add_condition_arguments(parser)
    parser.add_argument("--init", type=str | None, default=None,
                        help="SDEdit: guide(s) to start from (.npz of samples, or a PNG image), perturbed to the"
                             " log-SNR a fraction `strength` of the way from t_min to t_max and sampled back (sample i"
                             " edits guide i mod M)")
    parser.add_argument("--strength", type=float, default=0.5,
                        help="SDEdit strength in [0, 1]: 0 returns the guide, 1 is ordinary sampling")
    parser.add_argument("--inpaint", type=str | None, default=None,
                        help="inpainting / imputation: known values (.npz, or a PNG image) where --mask is 1")
    parser.add_argument("--mask", type=str | None, default=None,
                        help="1 where --inpaint's values are known (.npz shaped like them, or a PNG: white = known)")
    parser.add_argument("--resample", type=int, default=1,
                        help="RePaint resampling count r (1: plain replacement, which is biased; r ~ 10-20 harmonises)")
    parser.add_argument("--jump_length", type=int, default=1, help="RePaint jump length j (e.g. 10)")
    parser.add_argument("--output", type=str | None, default=None, help="output stem (default: <run>/samples/…)")
    parser.add_argument("--accelerator", type=str, default="auto", help="auto, cpu or cuda")
    parser.add_argument("--overwrite", type=bool, default=False, help="replace existing output files")
    return parser


def build_edit(model: GenerativeModule, cfg) -> Edit | None:
    """The SDEdit / inpainting :class:`~lit_score.control.edit.Edit` of ``--init`` / ``--inpaint --mask`` (None
    without them); one line for a model without a noise process, both at once, or a file that does not fit."""
    if cfg.init is None and cfg.inpaint is None:
        if cfg.mask is not None:
            raise InvalidInput("a mask (--mask) goes with --inpaint FILE (the known values)")
        return None
    if cfg.init is not None and cfg.inpaint is not None:
        raise InvalidInput("--init (SDEdit) and --inpaint are two different edits: pass one of them")
    if model.process is None:
        raise InvalidInput(f"{type(model).__name__} has no noise process: SDEdit and inpainting need a diffusion, score"
                           " or flow model")
    shape, value_range = model.require_shape(), data_range(model)
    if cfg.init is not None:
        return Edit("sdedit", load_array(cfg.init, shape, value_range, "--init"), strength=cfg.strength)
    if cfg.mask is None:
        raise InvalidInput("inpainting (--inpaint) needs --mask FILE: 1 (white) where the values are known")
    known = load_array(cfg.inpaint, shape, value_range, "--inpaint")
    mask = load_array(cfg.mask, shape, value_range, "--mask", mask=True)
    if mask.shape[0] not in (1, known.shape[0]):
        raise InvalidInput(f"--mask holds {mask.shape[0]} masks for {known.shape[0]} rows of --inpaint: give one mask"
                           " or one per row")
    return Edit("inpaint", known, mask, resample=cfg.resample, jump_length=cfg.jump_length)


def sample_main(argv: list[str]) -> dict[str, Path]:
    """``lit-score sample``: load a checkpoint, sample, write PNG + NPZ next to the run."""
    parser = sample_parser()
    cfg, given = parse_command(parser, argv)
    if cfg.num_samples < 1 or (cfg.batch_size is not None and cfg.batch_size < 1):
        raise InvalidInput(f"need --num_samples >= 1 and --batch_size >= 1, got {cfg.num_samples} and"
                           f" {cfg.batch_size}")
    check_options(cfg, SAMPLE_RULES)
    check_output_stem(cfg.output)
    device = resolve_device(cfg.accelerator)
    model = load_model(cfg.ckpt_path, map_location=device)
    model.set_sample_start(cfg.start)
    apply_condition(model, cfg, device)
    edit = build_edit(model, cfg)
    sampler = resolve_sampler(parser.instantiate_classes(cfg).sampler, given, model)
    thresholds = sampler is not None and sampler.x0_threshold is not None  # (a classifier has no sampler)
    check_sampler(model, sampler, recorded_data(cfg.ckpt_path) if thresholds else None)  # the data range it needs
    stem = output_stem(cfg, model, sampler, edit)
    existing = [p for p in (stem.with_suffix(".png"), stem.with_suffix(".npz")) if p.exists()]
    if existing and not cfg.overwrite:
        raise InvalidInput(f"{existing[0]} exists: pass --output elsewhere or --overwrite true")
    writable_folder(stem.parent)  # before any sampling, not after it
    return write_samples(draw(model, sampler, edit, cfg), stem, model, sampler, edit, cfg)


def output_stem(cfg, model: GenerativeModule, sampler: Sampler, edit: Edit | None) -> Path:
    """``--output``, else ``<run>/samples/<ckpt>_<sampler>_n<N>_seed<S><condition and edit tag>``."""
    if cfg.output:
        return Path(cfg.output)
    ckpt = Path(cfg.ckpt_path)
    condition = model.condition
    tag = "".join(f"_{key}{condition[key]:g}" for key in ("guidance_scale", "classifier_scale") if condition[key])
    tag += f"_class{condition['class_label']}" if condition["class_label"] is not None else ""
    tag += "" if edit is None else (f"_sdedit{edit.strength:g}" if edit.kind == "sdedit" else
                                    f"_inpaint_r{edit.resample}j{edit.jump_length}")
    tag = tag.replace(".", "p")  # 1.5 -> 1p5: the stem takes .png / .npz suffixes
    name = f"{ckpt.stem}_{type(sampler).__name__}_n{cfg.num_samples}_seed{cfg.seed}{tag}"
    return ckpt.parent.parent / "samples" / name


def draw(model: GenerativeModule, sampler: Sampler, edit: Edit | None, cfg) -> Draw:
    """``--num_samples`` samples in seed-indexed batches (the batches ``evaluate`` draws), with the NFE of a batch
    and what the sampler measured on the last batch."""
    batches = SeedBatches(cfg.num_samples, cfg.batch_size or min(cfg.num_samples, 1000), cfg.seed)  # = evaluate's
    chunks, last = [], None
    for k in tqdm(range(len(batches)), desc="batches", disable=len(batches) == 1):
        last = seed_batch_draw(model, batches[k], sampler, progress=True, edit=edit)
        chunks.append(last.samples.cpu())
    return Draw(torch.cat(chunks), last.nfe, last.measurements)


def sample_metadata(nfe: int, measured: dict, model: GenerativeModule, sampler: Sampler, edit: Edit | None, cfg,
                    conditional: dict) -> dict:
    """What the ``.npz`` records beside the samples."""
    ckpt = Path(cfg.ckpt_path)
    return {
        "nfe": nfe,
        "start": model.sample_start,
        **conditional,
        **({"classifier_ckpt": cfg.classifier_ckpt} if cfg.classifier_ckpt else {}),
        **({} if edit is None else {**edit.describe(), "edit_file": cfg.init or cfg.inpaint}),
        **measured,  # what the sampler measured on the last batch (an MCMC kernel's acceptance and adapted step)
        "sampler": repr(sampler),
        "model": type(model).__name__,
        "ckpt_path": str(ckpt),
        "seed": cfg.seed,
        "ema": used_ema(ckpt),
    }


def write_samples(drawn: Draw, stem: Path, model: GenerativeModule, sampler: Sampler, edit: Edit | None,
                  cfg) -> dict[str, Path]:
    """The PNG and the ``.npz`` (both or neither), and one line saying what was written."""
    x, nfe = drawn.samples, drawn.nfe
    condition = model.condition
    labels = model.condition_labels(torch.arange(cfg.num_samples))
    conditional = {k: v for k, v in condition.items() if k != "classifier"} if labels is not None else {}
    if conditional.get("class_label") is None:
        conditional.pop("class_label", None)  # None: every class in turn, given per sample by "labels"
    metadata = sample_metadata(nfe, drawn.measurements, model, sampler, edit, cfg, conditional)
    title = f"{type(model).__name__} · {type(sampler).__name__} · NFE {nfe}"
    if labels is not None:
        title += f" · {condition_words(condition)}"
    reference = reference_beside(Path(cfg.ckpt_path), x)
    with outputs():  # the PNG and the .npz both, or neither
        paths = save_samples(x, stem, title=title, metadata=metadata, reference=reference,
                             labels=None if labels is None else labels.cpu())
    finite = torch.isfinite(x).all().item()
    extra = "".join(f", {k} {v:.4g}" for k, v in drawn.scalars().items())
    extra += f", {condition_words(condition)}" if labels is not None else ""
    origin = f"from {model.sample_start}" if edit is None else (
        f"by SDEdit at strength {edit.strength:g} from {edit.data.shape[0]} guide(s)" if edit.kind == "sdedit" else
        f"inpainted ({edit.describe()['known_fraction']:.0%} known, resample {edit.resample}) from"
        f" {edit.data.shape[0]} row(s)")
    print(f"wrote {paths['png']} and {paths['npz']} ({cfg.num_samples} samples {origin}, NFE {nfe}"
          f"{extra}, EMA {metadata['ema']})")
    if not finite:
        print("lit-score: warning: some samples are not finite (the model or sampler diverged)", file=sys.stderr)
    return paths


def recorded_data(ckpt: str | Path) -> GenerativeDataModule | None:
    """The checkpoint's own data module, None when it records none (or it cannot be rebuilt here)."""
    try:
        return checkpoint_datamodule(ckpt)
    except (EvaluationError, InvalidInput, CheckpointError):
        return None


def reference_beside(ckpt: Path, x: torch.Tensor) -> torch.Tensor | None:
    """Real data to draw beside non-image samples, from the checkpoint's own data module (None for images, or when
    the checkpoint records no data module)."""
    data = recorded_data(ckpt) if x.ndim == 2 else None
    if data is None:
        return None
    data.setup("fit")
    return data.reference_samples(min(x.shape[0], 2000), torch.Generator().manual_seed(0))


def condition_words(condition: dict) -> str:
    """"class 3, CFG w=2" for titles and summaries."""
    label = condition["class_label"]
    words = ["every class" if label is None else ("no label" if label == -1 else f"class {label}")]
    if condition["guidance_scale"]:
        words.append(f"CFG w={condition['guidance_scale']:g}")
    if condition["classifier_scale"]:
        words.append(f"classifier w={condition['classifier_scale']:g}")
    return ", ".join(words)
