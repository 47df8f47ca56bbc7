"""Sample quality during training: FID / KID on images, two-sample distances otherwise, every N validation runs.

| data | logged | how |
|---|---|---|
| images | ``val/fid``, ``val/kid`` | torchmetrics' FID / KID on a torch-fidelity feature layer; each rank feeds |
| | | its own share of the samples and its shard ``reference[rank::world]``; the metrics sync their states |
| other | ``val/energy_distance``, ``val/mmd``, | :func:`~lit_score.metrics.distances.distance_report` of all |
| | ``val/sliced_wasserstein`` | samples (gathered) against fresh reference draws, identically on every rank |
| class-conditional model | ``val/class_accuracy`` | the data's reference classifier (``class_log_probs``) on the |
| on data that classifies | | samples, each requesting class (seed index mod K); hits summed over ranks |

The torchmetrics pieces (a torch-fidelity feature layer as a module, KID in seed-index order) are in
:mod:`lit_score.callbacks.image_metrics`. The samples are those of :mod:`lit_score.generation`: generation batches
of a fixed ``batch_size``, each seeded by its first seed index, so the numbers do not depend on the world size.
"""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.utils.data import Subset
from torchmetrics.image.fid import FrechetInceptionDistance

from lit_score.callbacks.image_metrics import FeatureLayer, OrderedKID
from lit_score.data.base import lit_datamodule
from lit_score.generation import SeedBatches, draw_across_ranks, generate_local
from lit_score.metrics.distances import DISTANCES, distance_floors, distance_report
from lit_score.metrics.fidelity import FeatureExtractorSpec, dataset_to_uint8, resolve_feature_extractor, to_uint8
from lit_score.samplers import Draw, Sampler

IMAGE_METRICS = ("fid", "kid")
DISTANCE_METRICS = tuple(DISTANCES)  # energy_distance, mmd, sliced_wasserstein
FAST_DEV_RUN_SAMPLES = 16  # under fast_dev_run: a check of the path, not a measurement


class SampleQuality(pl.Callback):
    """Every ``every_n_validations``-th validation run, sample the model and log how close the samples are to the data.

    Images: ``val/fid``, ``val/kid`` and ``val/kid_std`` (torchmetrics' FID and KID on the layers of the
    torch-fidelity extractor ``feature_extractor``; the reference features are computed once and kept). Other data:
    ``val/energy_distance``, ``val/mmd``, ``val/sliced_wasserstein``, each with ``…_floor`` (the same distance between
    two reference draws of that n) and ``…_ratio``. Always ``val/quality_nfe`` (NFE of one generation batch, the
    largest over ranks). The values are identical on every rank; ``last_metrics`` keeps the last ones.

    Schedule: validation runs are counted (sanity checks excluded, the count is saved in checkpoints so a resumed run
    keeps the schedule); runs n, 2n, 3n, … are measured, with step-based validation (``val_check_interval``) a run is
    not an epoch. Under ``fast_dev_run`` every run is measured, with 16 samples and references; a standalone
    ``trainer.validate`` is always measured and not counted. The work happens at the first validation batch, where
    weight-averaging callbacks (EMA) have their averaged weights swapped in, whatever the callback order.

    Selecting checkpoints: ``ModelCheckpoint(monitor="val/fid", mode="min")`` needs the metric logged at every
    validation where it checks: set ``every_n_validations`` to its cadence (1 for the default). At a run that is not
    measured, nothing is logged, and Lightning's ``callback_metrics`` still hold the previous value, so a checkpoint
    would be ranked by a stale score. Values are comparable only at equal ``num_samples``, feature extractor (and
    weights) and reference (split, ``num_reference``): FID is biased upwards at small n.

    Args:
        every_n_validations: measure every n-th validation run.
        num_samples: samples per measurement, over all ranks.
        batch_size: generation batch size; fixed, so the samples do not depend on the world size.
        sampler: sampler to use (the model's own when None).
        seed: seed set of the samples (fixed, so successive measurements are comparable); also seeds the reference
            subset, the reference draws of the distances and KID's subsets.
        metrics: for images a subset of ``fid``, ``kid`` (default both); for other data of ``energy_distance``,
            ``mmd``, ``sliced_wasserstein`` (default all three).
        feature_extractor: torch-fidelity extractor (``inception-v3-compat``, ``digits``, a class path); default the
            datamodule's ``default_feature_extractor``. Images only.
        feature_extractor_weights_path: its weights file (never downloaded).
        reference: ``train`` (the training data without augmentation) or ``test`` (the held-out split).
        num_reference: images: that many reference images, a random subset of the split fixed by ``seed`` (default:
            all of it). Other data is always compared with fresh draws of ``num_samples``.
        kid_subset_size: KID subset size (100 subsets), clipped to the numbers of samples and references.
        distance_draws: reference draws per distance (the median is logged).
    """

    def __init__(
        self,
        every_n_validations: int = 1,
        num_samples: int = 2000,
        batch_size: int = 250,
        sampler: Sampler | None = None,
        seed: int = 0,
        metrics: list[str] | None = None,
        feature_extractor: str | None = None,
        feature_extractor_weights_path: str | None = None,
        reference: str = "train",
        num_reference: int | None = None,
        kid_subset_size: int = 1000,
        distance_draws: int = 1,
    ) -> None:
        if min(every_n_validations, batch_size, kid_subset_size, distance_draws) < 1 or num_samples < 2:
            raise ValueError("SampleQuality needs every_n_validations, batch_size, kid_subset_size, distance_draws >= 1"
                             f" and num_samples >= 2, got {every_n_validations}, {batch_size}, {kid_subset_size},"
                             f" {distance_draws}, {num_samples}")
        if reference not in ("train", "test"):
            raise ValueError(f"unknown reference split {reference!r}: use train or test")
        SeedBatches(num_samples, batch_size, seed)  # a bad seed or count fails here, not mid-training
        if num_reference is not None and num_reference < 2:
            raise ValueError(f"num_reference must be >= 2, got {num_reference}")
        self.every_n_validations, self.num_samples, self.batch_size = every_n_validations, num_samples, batch_size
        self.sampler, self.seed, self.metrics = sampler, seed, list(metrics) if metrics is not None else None
        self.feature_extractor, self.feature_extractor_weights_path = feature_extractor, feature_extractor_weights_path
        self.reference, self.num_reference = reference, num_reference
        self.kid_subset_size, self.distance_draws = kid_subset_size, distance_draws
        self.validation_runs = 0  # completed, non-sanity validation runs of fit; saved in checkpoints
        self.last_metrics: dict[str, float] = {}
        self._wanted: list[str] = []
        self._spec: FeatureExtractorSpec | None = None
        self._image_metrics: dict[str, FrechetInceptionDistance | OrderedKID] = {}  # not in the module: EMA copies it
        self._real_key: tuple | None = None  # what the kept reference features were computed for
        self._floors: dict[int, dict[str, float]] = {}  # data-vs-data floors by n

    # --- schedule --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"validation_runs": self.validation_runs}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.validation_runs = state_dict.get("validation_runs", 0)

    def due(self, trainer: pl.Trainer) -> bool:
        """Whether this validation run is measured (see the class docstring)."""
        if trainer.sanity_checking:
            return False
        if trainer.fast_dev_run or trainer.state.fn != TrainerFn.FITTING:
            return True
        return (self.validation_runs + 1) % self.every_n_validations == 0

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == TrainerFn.FITTING:
            self.validation_runs += 1

    # --- setup: fail before training on a wrong metric or a missing weights file -----------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):  # test / predict never call the validation hooks
            return
        datamodule = lit_datamodule(trainer)
        if datamodule is None:  # a lit_score datamodule declares reference_draw, is_image, default_feature_extractor
            raise ValueError("SampleQuality needs a lit_score datamodule (trainer.fit(model, datamodule=...)) for the"
                             " reference data")
        allowed, other = (IMAGE_METRICS, DISTANCE_METRICS) if datamodule.is_image else (DISTANCE_METRICS, IMAGE_METRICS)
        wanted = self.metrics if self.metrics is not None else list(allowed)
        for name in wanted:
            if name not in allowed:
                kind = "image" if datamodule.is_image else f"non-image (sample shape {datamodule.sample_shape})"
                hint = " is not for this data" if name in other else " is unknown"
                raise ValueError(f"SampleQuality metric {name!r}{hint}: on {kind} data use {', '.join(allowed)}")
        if not wanted:
            raise ValueError("SampleQuality: no metric asked for")
        self._wanted = list(dict.fromkeys(wanted))
        if datamodule.is_image:
            name = self.feature_extractor or datamodule.default_feature_extractor
            self._spec = resolve_feature_extractor(name, self.feature_extractor_weights_path)

    # --- measurement -----------------------------------------------------------------------------------------------
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or not self.due(trainer):
            return
        values = self.measure(trainer, pl_module)
        for name, value in values.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)  # equal on all ranks already

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Sample and compute the metrics (every rank takes part); returns ``{logged name: value}``."""
        n = min(self.num_samples, FAST_DEV_RUN_SAMPLES) if trainer.fast_dev_run else self.num_samples
        if trainer.datamodule.is_image:
            values, drawn, index = self._measure_images(trainer, pl_module, n)
        else:
            values, drawn = self._measure_distances(trainer, pl_module, n)
            index = None  # every rank holds all n samples
        x = drawn.samples
        labels = pl_module.condition_labels(torch.arange(n))
        if labels is not None and trainer.datamodule.can_classify and pl_module.condition["class_label"] != -1:
            values["val/class_accuracy"] = self._class_accuracy(trainer, x, labels, index)
        nfe = torch.tensor(float(drawn.nfe), device=trainer.strategy.root_device)  # 0 on a rank that drew nothing
        values["val/quality_nfe"] = float(trainer.strategy.reduce(nfe, reduce_op="max"))
        self.last_metrics = values
        return values

    @staticmethod
    def _class_accuracy(trainer: pl.Trainer, x: Tensor, labels: Tensor, index: Tensor | None) -> float:
        """Fraction of samples the data's reference classifier puts in their requested class (this rank's share
        ``index`` of them, summed over ranks; all of them when ``index`` is None)."""
        wanted = labels.cpu() if index is None else labels.cpu()[index.cpu()]
        hits = (trainer.datamodule.class_log_probs(x.detach().cpu()).argmax(1) == wanted).sum() if len(x) else 0
        if index is None:
            return float(hits) / len(labels)
        device = trainer.strategy.root_device
        total = trainer.strategy.reduce(torch.tensor(float(hits), device=device), reduce_op="sum")
        return float(total) / len(labels)

    def _measure_distances(self, trainer: pl.Trainer, pl_module, n: int) -> tuple[dict[str, float], Draw]:
        datamodule = trainer.datamodule
        drawn = draw_across_ranks(trainer, pl_module, n, self.sampler, self.seed, self.batch_size)
        x = drawn.samples
        draw = (lambda k, g: datamodule.reference_draw(k, g, self.reference))  # noqa: E731
        wanted = {name: DISTANCES[name] for name in self._wanted}
        if n not in self._floors:  # the floors depend on the data and n only: computed once
            self._floors[n] = distance_floors(draw, n, self.distance_draws, self.seed + 1, wanted)
        report = distance_report(x.detach().cpu().double(), draw, self.distance_draws, self.seed, wanted,
                                 floors=self._floors[n])
        values = {}
        for name, row in report.items():
            values[f"val/{name}"] = row["value"]
            values[f"val/{name}_floor"] = row["floor"]
            values[f"val/{name}_ratio"] = row["ratio"]
        return values, drawn

    def _measure_images(self, trainer: pl.Trainer, pl_module, n: int) -> tuple[dict[str, float], Draw, Tensor]:
        datamodule = trainer.datamodule
        drawn, index = generate_local(trainer, pl_module, n, self.sampler, self.seed, self.batch_size)
        x = drawn.samples
        # metric states must be ordinary tensors: trainer.validate runs under inference_mode
        with torch.inference_mode(False), torch.no_grad():
            metrics = self._metrics_with_reference(trainer, pl_module, n)
            fake = to_uint8(x.clone(), datamodule.data_range).to(pl_module.device)
            values = {}
            if "fid" in metrics:
                fid = metrics["fid"]
                fid.reset()  # drops the previous samples' features, keeps the reference's
                fid.update(fake, real=False)
                values["val/fid"] = float(fid.compute())
                fid.reset()
            if "kid" in metrics:
                kid = metrics["kid"]
                kid.reset()
                kid.update(fake, real=False, index=index.clone())
                kid.subset_size = min(self.kid_subset_size, n, self._real_key[0])
                with torch.random.fork_rng(devices=[]):  # KID's subsets come from the CPU generator: same on all ranks
                    torch.default_generator.manual_seed(self.seed)  # (torch.manual_seed would reseed CUDA too)
                    kid_mean, kid_std = kid.compute()
                values["val/kid"], values["val/kid_std"] = float(kid_mean), float(kid_std)
                kid.reset()
        return values, drawn, index

    def _reference(self, trainer: pl.Trainer, fast: int | None) -> Tensor:
        """The reference images, uint8 (N_ref, 3, H, W): the split, or its ``num_reference`` subset fixed by seed."""
        datamodule = trainer.datamodule
        dataset = datamodule.split_dataset(self.reference)
        size = len(dataset)
        count = self.num_reference if fast is None else min(self.num_reference or fast, fast)
        if count is not None and count > size:
            raise ValueError(f"num_reference={count} exceeds the {size} images of the {self.reference} split")
        if count is not None and count < size:
            pick = torch.randperm(size, generator=torch.Generator().manual_seed(self.seed))[:count]
            dataset = Subset(dataset, pick.sort().values.tolist())
        return dataset_to_uint8(dataset, datamodule.data_range)

    def _metrics_with_reference(self, trainer: pl.Trainer, pl_module, n: int) -> dict:
        """The FID / KID metrics on the module's device, holding this rank's reference features (computed once)."""
        fast = n if trainer.fast_dev_run else None
        key = (self.reference, self.num_reference, fast, trainer.world_size, trainer.global_rank)
        if self._real_key is not None and self._real_key[1:] == key:
            return {name: metric.to(pl_module.device) for name, metric in self._image_metrics.items()}
        reference = self._reference(trainer, fast)
        spec, image_size = self._spec, tuple(reference.shape[-2:])
        layers: dict[str, FeatureLayer] = {}  # one extractor per layer, shared by the metrics that read it
        for name in ("fid", "kid"):
            layer = spec.layers[name]
            if name in self._wanted and layer not in layers:
                layers[layer] = FeatureLayer(spec, layer, image_size, self.batch_size)
        metrics: dict = {}
        if "fid" in self._wanted:
            feature = layers[spec.layers["fid"]]
            metrics["fid"] = FrechetInceptionDistance(feature=feature, reset_real_features=False, normalize=False)
        if "kid" in self._wanted:
            with warnings.catch_warnings():  # "will save all extracted features": that is what it is for
                warnings.filterwarnings("ignore", "Metric `Kernel Inception Distance` will save")
                metrics["kid"] = OrderedKID(feature=layers[spec.layers["kid"]], subset_size=self.kid_subset_size,
                                            reset_real_features=False)
        world, rank = trainer.world_size, trainer.global_rank
        shard = reference[rank::world].to(pl_module.device)  # each rank extracts the features of its own shard
        shard_index = torch.arange(reference.shape[0])[rank::world]
        for name, metric in metrics.items():
            metric.to(pl_module.device)
            if name == "kid":
                metric.update(shard, real=True, index=shard_index)
            else:
                metric.update(shard, real=True)
        self._image_metrics, self._real_key = metrics, (reference.shape[0], *key)
        return metrics
