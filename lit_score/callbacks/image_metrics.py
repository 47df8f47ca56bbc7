"""torchmetrics' FID / KID on torch-fidelity feature layers, as :class:`~lit_score.callbacks.SampleQuality` uses them
during training: a feature layer as an ``nn.Module`` (:class:`FeatureLayer`) and KID whose rows are put in seed-index
order before its subsets are drawn (:class:`OrderedKID`), so its value does not depend on the world size."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities import dim_zero_cat

from lit_score.metrics.fidelity import FeatureExtractorSpec


class FeatureLayer(nn.Module):
    """One feature layer of a torch-fidelity extractor as an ``nn.Module``: uint8 (B, 3, H, W) → float (B, D).

    The ``feature`` torchmetrics' FID / KID call. Rows go through the extractor ``chunk`` at a time, so one ``update``
    can carry a rank's whole share (KID's list states must see the same number of updates on every rank to sync).
    """

    def __init__(self, spec: FeatureExtractorSpec, layer: str, image_size: tuple[int, int], chunk: int = 250) -> None:
        from torch_fidelity.utils import create_feature_extractor

        super().__init__()
        self.extractor = create_feature_extractor(
            spec.name, [layer], cuda=False, feature_extractor_weights_path=spec.weights_path, verbose=False
        )
        self.chunk = chunk
        with torch.no_grad():
            self.num_features = int(self.extractor(torch.zeros((1, 3, *image_size), dtype=torch.uint8))[0].shape[-1])

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] == 0:  # a rank without samples still takes part in the metric's sync
            return torch.zeros((0, self.num_features), device=x.device)
        return torch.cat([self.extractor(part)[0].float() for part in x.split(self.chunk)])


class OrderedKID(KernelInceptionDistance):
    """KID whose feature rows are put in seed-index (reference-index) order before its random subsets are drawn.

    The synced states hold rank 0's rows, then rank 1's, …; sorting by the index makes the subsets, and so the value,
    independent of how the rows were shared out over ranks.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("real_index", [], dist_reduce_fx=None)
        self.add_state("fake_index", [], dist_reduce_fx=None)

    def update(self, imgs: Tensor, real: bool, index: Tensor) -> None:  # type: ignore[override]
        super().update(imgs, real)
        (self.real_index if real else self.fake_index).append(index.to(self.device))

    def compute(self) -> tuple[Tensor, Tensor]:
        for kind in ("real", "fake"):
            features = dim_zero_cat(getattr(self, f"{kind}_features"))
            index = dim_zero_cat(getattr(self, f"{kind}_index"))
            order = index.argsort()
            setattr(self, f"{kind}_features", [features[order]])
            setattr(self, f"{kind}_index", [index[order]])
        return super().compute()

    def reset(self) -> None:
        if self.reset_real_features:
            super().reset()
            return
        index = self._defaults.pop("real_index")  # kept, as the parent keeps ``real_features``
        super().reset()
        self._defaults["real_index"] = index
