"""Class conditioning and guidance of a generative model: which labels sampling uses, the guided score, and the labels
of training batches.

A class-conditional model's network declares ``num_classes`` K > 0; its score model's ``with_condition(labels, w,
classifier, w_c)`` is the conditional, guided view (classifier-free guidance (1 + w)·s(x, t, c) − w·s(x, t, ∅); a
classifier's w_c·∇ₓ log p(c | x_t)). A classifier is anything with ``num_classes`` and ``log_prob(x, t, y)``
(a :class:`~lit_score.models.NoiseConditionalClassifier`, an exact Bayes classifier in tests). The datamodule, where
there is one, is a :class:`~lit_score.data.base.GenerativeDataModule`, which declares ``labels`` and ``num_classes``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_score.checks import check_number
from lit_score.data.base import lit_datamodule


class Conditioning:
    """What :class:`~lit_score.models.GenerativeModule` knows of classes: ``num_classes``, :meth:`set_condition` and
    the labels and score it implies, the labels of a batch. Uses the module's ``score_model``, ``device``,
    ``_condition`` (None until :meth:`set_condition`) and trainer."""

    @property
    def num_classes(self) -> int:
        """K of a class-conditional model (its network declares ``num_classes``), 0 for an unconditional one."""
        return 0

    @property
    def condition(self) -> dict:
        """What :meth:`set_condition` chose: ``class_label`` (None: every class in turn; −1: the null label),
        ``guidance_scale`` w, ``classifier_scale`` w_c (and whether a classifier is set) — for protocols."""
        chosen = self._condition or {"class_label": None, "guidance_scale": 0.0,
                                                         "classifier_scale": 0.0}
        return {**chosen, "classifier": self.classifier is not None}

    @property
    def classifier(self):
        """The noise-conditional classifier of classifier guidance (kept out of the module tree and checkpoints)."""
        return self.__dict__.get("_guidance_classifier")

    def set_condition(
        self,
        class_label: int | None = None,
        guidance_scale: float = 0.0,
        classifier=None,
        classifier_scale: float = 0.0,
    ) -> None:
        """Choose the labels and guidance of later sampling (``sample``/``evaluate --class_label --guidance_scale``).

        Args:
            class_label: one class for every sample; None: sample i has class i mod K (every class equally, rows of
                a grid); −1: the null label (the unconditional model a classifier-free-guided network also is).
            guidance_scale: classifier-free guidance w (a class-conditional network trained with label dropout).
            classifier: a noise-conditional classifier (``log_prob(x, t, y)``), for classifier guidance.
            classifier_scale: its scale w_c.
        """
        check_number("guidance_scale", guidance_scale)
        check_number("classifier_scale", classifier_scale)
        conditional = self.num_classes > 0
        classes = self.num_classes or (classifier.num_classes if classifier is not None else 0)
        if class_label is not None and not -1 <= class_label < max(classes, 0):
            if not classes:
                raise ValueError(f"{type(self).__name__} is unconditional: --class_label needs a class-conditional"
                                 " model (network num_classes > 0) or a classifier to guide it")
            raise ValueError(f"class_label must lie in 0 … {classes - 1} (or −1 for none), got {class_label}")
        if guidance_scale and not conditional:
            raise ValueError(f"classifier-free guidance needs a class-conditional network; {type(self).__name__}'s"
                             " is unconditional (use a classifier and --classifier_scale instead)")
        if classifier_scale and classifier is None:
            raise ValueError("classifier_scale needs a classifier: pass --classifier_ckpt")
        theirs = classifier.num_classes if classifier is not None else 0
        if conditional and classifier is not None and theirs != self.num_classes:
            raise ValueError(f"the classifier has {theirs} classes and the model {self.num_classes}: use a classifier"
                             " of the model's classes")
        if class_label == -1 and (guidance_scale or classifier_scale):
            raise ValueError("guidance towards the null label is the unconditional model: drop the guidance scale")
        self.__dict__["_guidance_classifier"] = classifier
        self._condition = {"class_label": class_label, "guidance_scale": float(guidance_scale),
                           "classifier_scale": float(classifier_scale)}

    def condition_labels(self, index: Tensor) -> Tensor | None:
        """The class labels of samples with seed indices ``index`` (N,) under :meth:`set_condition` (None for an
        unconditional model without a classifier): every sample's label depends on its seed index only."""
        classes = self.num_classes or (self.classifier.num_classes if self.classifier is not None else 0)
        if not classes:
            return None
        label = self.condition["class_label"]
        index = index.to(self.device).long()
        return index % classes if label is None else torch.full_like(index, int(label))

    def conditioned_score(self, labels: Tensor | None):
        """The score function that sampling with ``labels`` (B,) uses: the model's own without labels, else its score
        model's conditional (and guided, per :meth:`set_condition`) view, which refuses labels for an unconditional
        network."""
        if labels is None:
            return self.score_model
        condition = self.condition
        return self.score_model.with_condition(labels, condition["guidance_scale"], self.classifier,
                                               condition["classifier_scale"])

    def data_labels(self, batch: Tensor | tuple | list | dict) -> Tensor | None:
        """The class labels of a batch (x, y) of a data module built with ``labels: true``; None for plain batches.
        A class-conditional model refuses unlabelled data, and labels beyond its classes, in one line."""
        y = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        if self.num_classes and y is None:
            raise ValueError(f"{type(self).__name__} is class-conditional ({self.num_classes} classes) but the data"
                             " has no labels: set data.init_args.labels true")
        return y if self.num_classes else None

    def check_data_classes(self) -> None:
        """At ``setup``, on every rank alike (no per-batch host sync, no rank deciding alone): a class-conditional
        model needs labelled data of at most its number of classes."""
        datamodule = lit_datamodule(self._trainer)
        if not self.num_classes or datamodule is None:  # bare loaders: nothing declared to check
            return
        if not datamodule.labels:
            raise ValueError(f"{type(self).__name__} is class-conditional ({self.num_classes} classes) but the data"
                             " has no labels: set data.init_args.labels true")
        if datamodule.num_classes > self.num_classes:
            raise ValueError(f"the data has {datamodule.num_classes} classes but the network has num_classes"
                             f" {self.num_classes}: set it to at least {datamodule.num_classes}")
