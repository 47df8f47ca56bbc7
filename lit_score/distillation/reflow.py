r"""The pair stage of reflow (Liu, Gong & Liu 2022, Sec. 2.2): draw couplings (ε, x) with a probability-flow ODE.

    from lit_score.distillation import draw_pairs
    result = draw_pairs("runs/flow_toy/version_0/checkpoints/last.ckpt", None, num_pairs=20000,
                        shard_size=5000, output_dir="runs/flow_toy/pairs", seed=0)

Pair i starts the sampler at σ(t_max)·ε_i and keeps (ε_i, x_i), x_i where the ODE ended (the folder's format:
:mod:`lit_score.data.reflow`). Only a ``reversible`` sampler (a deterministic ODE solver: Euler, Heun, AdaptiveODE,
DPM-Solver, DDIM with η = 0, EDMHeun without churn) defines a coupling; a stochastic one is refused.

- **Deterministic by seed.** Shard i holds pairs i·b … i·b + b − 1 (b = ``shard_size``) and draws its ε from a
  generator seeded by (seed, i·b) (:func:`lit_score.generation.batch_seed`), so a pair depends only on (checkpoint,
  weights, sampler, seed, b), never on the ranks, the restarts or the order: x_i is the sample ``lit-score sample
  --seed S --batch_size b`` draws at index i (on the same device).
- **Sharded, atomic, resumable.** Each shard is written whole (a temporary file renamed into place), so a shard
  file present is a complete one and is kept when the same call is repeated; ``manifest.json`` records the
  protocol first, and a folder of another protocol is refused in one line (pairs are never mixed). When every shard
  is there the manifest also lists them with their NFE and says ``complete``.
- **Split across ranks.** Rank r of W draws shards r, r + W, …; ``rank`` / ``world_size`` default to
  ``torch.distributed``'s when it is initialised (else 0 / 1).
- Class-conditional models: pair i's label is the seed index's (``condition_labels``: i mod K, or the
  ``set_condition`` label), stored as ``labels``.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from lit_score.atomic import torch_save, write_json
from lit_score.data.reflow import FORMAT, MANIFEST, load_shard, read_manifest, shard_name
from lit_score.generation import batch_seed
from lit_score.loading.checkpoint import load_for_evaluation
from lit_score.models import GenerativeModule
from lit_score.samplers import Sampler
from lit_score.utils import randn_like


@dataclass(frozen=True)
class PairsResult:
    """What :func:`draw_pairs` produced: the folder, its manifest, this call's shards (drawn now or found complete),
    how many it drew and kept, the NFE per pair (the most of this call's shards), whether the folder is complete,
    and the protocol the manifest records."""

    output_dir: Path
    manifest: Path
    shards: tuple[Path, ...]
    drawn: int
    skipped: int
    num_pairs: int
    nfe: int | None
    complete: bool
    protocol: dict

    def to_dict(self) -> dict:
        return asdict(self)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ranks(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size): the ones given, else ``torch.distributed``'s when initialised, else (0, 1)."""
    distributed = dist.is_available() and dist.is_initialized()
    rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
    world_size = world_size if world_size is not None else (dist.get_world_size() if distributed else 1)
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
    return rank, world_size


def teacher_model(model_or_checkpoint: GenerativeModule | str | Path, weights: str,
                  device: torch.device | None) -> tuple[GenerativeModule, dict]:
    """The model that draws the pairs and what the protocol records of where it came from."""
    if not isinstance(model_or_checkpoint, (str, Path)):  # the caller's own module
        return model_or_checkpoint, {"checkpoint": None, "checkpoint_sha256": None, "weights": "module"}
    path = Path(model_or_checkpoint)
    model, used = load_for_evaluation(path, weights, device or torch.device("cpu"))
    return model, {"checkpoint": str(path), "checkpoint_sha256": file_sha256(path), "weights": used}


def check_sampler_for_pairs(model: GenerativeModule, sampler: Sampler) -> None:
    """One line for a sampler that defines no coupling (stochastic) or cannot run on the model."""
    if model.process is None:
        raise ValueError(f"{type(model).__name__} has no noise process: reflow pairs need a diffusion or flow model")
    if not sampler.reversible:
        raise ValueError(f"{sampler!r} is stochastic: reflow pairs need a deterministic probability-flow ODE sampler"
                         " (Euler, Heun, AdaptiveODE, DPMSolver, DDIM with eta 0)")
    problem = model.sampler_problem(sampler)
    if problem is not None:
        raise ValueError(f"{type(sampler).__name__} cannot sample a {type(model).__name__}: {problem}")


def pairs_protocol(model: GenerativeModule, sampler: Sampler, origin: dict, num_pairs: int, shard_size: int,
                   seed: int) -> dict:
    """What fixes the pairs: a folder drawn under another protocol is never continued."""
    conditional = model.condition_labels(torch.zeros(1, dtype=torch.long)) is not None
    return {**origin, "model": type(model).__name__, "process": repr(model.process), "sampler": repr(sampler),
            "seed": seed, "shard_size": shard_size, "num_pairs": num_pairs,
            "num_shards": -(-num_pairs // shard_size), "shape": list(model.require_shape()),
            "conditional": conditional, "num_classes": model.num_classes if conditional else 0,
            "condition": {k: model.condition[k] for k in ("class_label", "guidance_scale")} if conditional else None}


def start_manifest(output_dir: Path, protocol: dict) -> Path:
    """Write the protocol's manifest, or check the folder's against it (one line naming what differs)."""
    path = output_dir / MANIFEST
    if path.exists():
        found = read_manifest(output_dir)["protocol"]
        differs = [k for k in protocol if found.get(k) != protocol[k]]
        if differs:
            key = differs[0]
            raise ValueError(f"{output_dir} holds reflow pairs of another protocol ({key}: {found.get(key)!r} there,"
                             f" {protocol[key]!r} now): pass another output folder, or delete that one")
        return path
    if any(output_dir.glob("shard_*.pt")):
        raise ValueError(f"{output_dir} holds shards without a {MANIFEST}: their protocol is unknown, so they are never"
                         " continued; pass another output folder, or delete that one")
    return write_json(path, {"format": FORMAT, "protocol": protocol, "complete": False})


def draw_shard(model: GenerativeModule, sampler: Sampler, index: int, protocol: dict) -> dict:
    """Shard ``index``: its ε from the generator of (seed, first index), the ODE's ends, labels, NFE."""
    b, total = protocol["shard_size"], protocol["num_pairs"]
    start = index * b
    n = min(b, total - start)
    generator = torch.Generator(model.device).manual_seed(batch_seed(protocol["seed"], start))
    template = torch.empty((n, *protocol["shape"]), device=model.device)
    noise = randn_like(template, generator)
    labels = model.condition_labels(torch.arange(start, start + n))
    drawn = model.draw(n, sampler, generator, x=model.process.prior_std * noise, labels=labels)
    shard = {"noise": noise.cpu(), "samples": drawn.samples.cpu(), "start": start, "nfe": int(drawn.nfe)}
    return shard if labels is None else {**shard, "labels": labels.cpu()}


def finish_manifest(output_dir: Path, protocol: dict) -> tuple[bool, int | None]:
    """Once every shard is there, the manifest lists them with their NFE and says ``complete``."""
    names = [shard_name(i) for i in range(protocol["num_shards"])]
    if not all((output_dir / name).is_file() for name in names):
        return False, None
    shards = [{"file": name, "count": int(s["samples"].shape[0]), "nfe": int(s["nfe"])}
              for name, s in ((name, load_shard(output_dir, i)) for i, name in enumerate(names))]
    nfe = max(s["nfe"] for s in shards)
    write_json(output_dir / MANIFEST, {"format": FORMAT, "protocol": protocol, "complete": True, "nfe": nfe,
                                       "shards": shards})
    return True, nfe


def draw_pairs(
    model_or_checkpoint: GenerativeModule | str | Path,
    sampler: Sampler | None,
    num_pairs: int,
    shard_size: int,
    output_dir: str | Path,
    seed: int = 0,
    weights: str = "auto",
    rank: int | None = None,
    world_size: int | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    origin: dict | None = None,
) -> PairsResult:
    """Draw (or complete) the reflow pairs of a model in ``output_dir`` (module docstring).

    Args:
        model_or_checkpoint: a lit-score diffusion / flow model, or the path of its checkpoint (loaded with
            ``weights``: ``auto`` the EMA average where the run kept one, ``ema``, ``raw``).
        sampler: a ``reversible`` sampler; None: the model's own (refused too when it is stochastic).
        num_pairs, shard_size: how many pairs, in shards of this many (the last one may be shorter).
        seed: the seed set of the noise.
        rank, world_size: this process's share (default: ``torch.distributed``'s, else the whole).
        device: where a checkpoint is loaded (default CPU); a given model draws where it is.
        origin: for a given model loaded by :func:`teacher_model`, its record (checkpoint, sha256, weights).
    """
    if num_pairs < 1 or shard_size < 1:
        raise ValueError(f"need num_pairs >= 1 and shard_size >= 1, got {num_pairs} and {shard_size}")
    batch_seed(seed, num_pairs - 1)  # refuses a seed or count outside the seed-index range
    rank, world_size = ranks(rank, world_size)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{output_dir} is a file: pass a folder for the pairs")
    model, loaded = teacher_model(model_or_checkpoint, weights, device)
    given_module = not isinstance(model_or_checkpoint, (str, Path))
    origin = origin if origin is not None and given_module else loaded
    sampler = sampler if sampler is not None else model.sampler
    check_sampler_for_pairs(model, sampler)
    protocol = pairs_protocol(model, sampler, origin, num_pairs, shard_size, seed)
    manifest = start_manifest(output_dir, protocol)
    mine = range(rank, protocol["num_shards"], world_size)
    paths, drawn, nfe = [], 0, []
    for index in tqdm(mine, desc=f"pairs (rank {rank})", disable=not progress, dynamic_ncols=True):
        path = output_dir / shard_name(index)
        if not path.is_file():  # written whole or not at all: a present shard is complete
            shard = draw_shard(model, sampler, index, protocol)
            torch_save(shard, path)
            drawn += 1
        else:
            shard = load_shard(output_dir, index)
        nfe.append(shard["nfe"])
        paths.append(path)
    complete, _ = finish_manifest(output_dir, protocol)
    return PairsResult(output_dir, manifest, tuple(paths), drawn, len(paths) - drawn, num_pairs,
                       max(nfe) if nfe else None, complete, protocol)


__all__ = ["PairsResult", "check_sampler_for_pairs", "draw_pairs", "file_sha256", "pairs_protocol", "teacher_model"]
