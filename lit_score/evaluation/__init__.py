"""The layer above the families: one generation path, ``evaluate`` and ``compare`` (orchestration, no maths).

``lit_score.evaluation.generation`` is imported by the models and callbacks; ``evaluate`` and ``compare`` import the
models, so they are modules of their own (``from lit_score.evaluation.evaluate import evaluate``).
"""

from lit_score.evaluation.generation import (
    Generation,
    SampleCollector,
    SeedBatches,
    batch_seed,
    draw_seed_batch,
    gather_rows,
    generate,
    generate_across_ranks,
    sampling_with,
    seed_loader,
)

__all__ = [
    "Generation",
    "SampleCollector",
    "SeedBatches",
    "batch_seed",
    "draw_seed_batch",
    "gather_rows",
    "generate",
    "generate_across_ranks",
    "sampling_with",
    "seed_loader",
]
