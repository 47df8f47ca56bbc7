"""The layer above the families: ``evaluate`` and ``compare`` (orchestration, no maths).

The generation path they use is :mod:`lit_score.generation`, below the models and data modules; ``evaluate`` and
``compare`` import the models, so they are modules of their own (``from lit_score.evaluation.evaluate import
evaluate``).
"""
