"""1- and 2-NFE sample grids of the few-step digits models side by side (docs/figures/fewstep_digits_grids.png): each
grid is ``lit-score sample`` of the model's checkpoint (64 samples, seed 0, EMA weights) with its own few-step sampler.

    python benchmarks/fewstep_grids.py docs/figures/fewstep_digits_grids.png

The models are the runs of configs/compare/fewstep_digits.yaml (``cd``, ``ict``, ``ect``, ``meanflow``, ``shortcut``,
its last finished key each) and the reflow student of configs/compare/reflow_digits.yaml; the 2-NFE samplers are the
compare's (consistency models: re-noise with gamma 1 to CD's grid time 1.92334; flow maps: two deterministic jumps;
the reflow student: two Euler steps). The per-grid PNGs go to --work, named by the checkpoint's path (reused while
it is the same).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
from pathlib import Path

RUNS = Path("runs/compare/fewstep_digits/runs")
FLOW_MAP = ["--sampler.class_path", "lit_score.samplers.FlowMapSampler"]
RENOISED_2 = FLOW_MAP + ["--sampler.init_args.num_jumps", "2", "--sampler.init_args.gamma", "1.0",
                         "--sampler.init_args.times", "[1.92334]"]
JUMPS_2 = FLOW_MAP + ["--sampler.init_args.num_jumps", "2"]


def euler(k: int) -> list[str]:
    return ["--sampler.class_path", "lit_score.samplers.Euler", "--sampler.init_args.num_steps", str(k),
            "--sampler.init_args.denoise", "false"]


def checkpoint(name: str) -> str:
    """The checkpoint of the run ``name``'s most recently finished key."""
    done = max(RUNS.glob(f"{name}/*/done.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(done.read_text())["ckpt"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figure", type=Path)
    parser.add_argument("--work", type=Path, default=Path("runs/compare/fewstep_digits/grids"))
    args = parser.parse_args()
    import matplotlib.pyplot as plt
    from PIL import Image

    from lit_score.atomic import save_figure

    methods = [("consistency distillation", checkpoint("cd"), FLOW_MAP, RENOISED_2),
               ("2-RF + distill", "runs/reflow_digits/student1/checkpoints/last.ckpt", euler(1), euler(2)),
               ("iCT", checkpoint("ict"), FLOW_MAP, RENOISED_2), ("ECT", checkpoint("ect"), FLOW_MAP, RENOISED_2),
               ("MeanFlow", checkpoint("meanflow"), FLOW_MAP, JUMPS_2),
               ("shortcut", checkpoint("shortcut"), FLOW_MAP, JUMPS_2)]
    args.work.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, len(methods), figsize=(2.6 * len(methods), 6.0))
    for j, (name, ckpt, one, two) in enumerate(methods):
        for i, sampler in enumerate((one, two)):
            stem = args.work / f"{j}_{i}_{hashlib.sha1(ckpt.encode()).hexdigest()[:10]}"  # a new checkpoint: redrawn
            if not stem.with_suffix(".png").exists():
                subprocess.run(["lit-score", "sample", "--ckpt_path", ckpt, "--num_samples", "64", "--output",
                                str(stem), *sampler], check=True, capture_output=True)
            axes[i, j].imshow(Image.open(stem.with_suffix(".png")), cmap="gray")
            axes[i, j].set(xticks=[], yticks=[], title=f"{name}, {i + 1} NFE")
            axes[i, j].title.set_fontsize(9)
    fig.tight_layout()
    save_figure(fig, args.figure, dpi=110)
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
