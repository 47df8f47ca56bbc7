"""Crafted checkpoints never run code (issue 22 §1): every class path a checkpoint names — top level, nested, in
``init_args`` or ``dict_kwargs``, as a plain dotted string, or the instantiator — is refused unless it is a class
defined in a trusted module and a subclass of the type the receiving parameter declares. Each payload below *would*
create a marker file if anything of it were called; each entry point must refuse it in one line naming the key and
the class path, exit non-zero, and leave no marker and no output."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

from lit_score.cli import load_model, main
from lit_score.loading import CheckpointError, check_value, declared_classes, resolve_class

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "configs/ddpm/toy.yaml")
SAVE_LAST = '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": true}}]'


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """A real (two-step) DDPM checkpoint to craft payloads from."""
    w = tmp_path_factory.mktemp("clean")
    main(["fit", "--config", TOY, "--trainer.logger.init_args.save_dir", str(w / "runs"), "--trainer.max_steps", "2",
          "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false", "--data.init_args.num_samples",
          "300", "--model.init_args.process.init_args.num_timesteps", "20", "--trainer.callbacks", SAVE_LAST])
    return w / "runs/ddpm_toy/version_0/checkpoints/last.ckpt"


def hub_repo(folder: Path, marker: Path) -> Path:
    """A local torch.hub repository whose hubconf.py creates ``marker`` when torch.hub loads it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef evil(**kwargs):\n    return None\n")
    return folder


def payloads(tmp: Path) -> dict[str, tuple[str, object, str]]:
    """name -> (hyper-parameter key to set, value, the class path the error must name). Each value would create
    ``tmp/marker`` (or a folder of that name) if jsonargparse were allowed to build it."""
    marker = tmp / "marker"
    system = {"class_path": "torch.os.system", "init_args": {"command": f"touch {marker}"}}
    return {
        # module attributes re-exported under an allowed package
        "os.system through torch": ("optimizer", system, "torch.os.system"),
        "os.system through lit_score": ("optimizer", {"class_path": "lit_score.loading.os.system",
                                                      "init_args": {"command": f"touch {marker}"}},
                                        "lit_score.loading.os.system"),
        "a module object": ("optimizer", {"class_path": "lit_score.loading.os", "init_args": {}},
                            "lit_score.loading.os"),
        # functions with side effects in torch and lit-score themselves
        "torch.save": ("optimizer", {"class_path": "torch.save", "init_args": {"obj": 1, "f": str(marker)}},
                       "torch.save"),
        "a lit-score function": ("lr_scheduler", {"class_path": "lit_score.evaluation.evaluate.write_json",
                                                  "init_args": {"path": str(marker), "data": {}}},
                                 "lit_score.evaluation.evaluate.write_json"),
        "a local torch.hub repo": ("optimizer", {"class_path": "torch.hub.load", "init_args": {
            "repo_or_dir": str(hub_repo(tmp / "hub", marker)), "model": "evil", "source": "local",
            "trust_repo": True}}, "torch.hub.load"),
        # a class, but defined outside the trusted modules (it creates its log folder when built)
        "a torch class outside torch.optim / torch.nn": (
            "optimizer", {"class_path": "torch.utils.tensorboard.SummaryWriter", "init_args": {"log_dir": str(marker)}},
            "torch.utils.tensorboard.SummaryWriter"),
        # a trusted class of the wrong kind for the parameter
        "a lit-score class of another kind": ("optimizer", {"class_path": "lit_score.networks.MLP", "init_args": {}},
                                              "lit_score.networks.MLP"),
        # nested: inside a network's init_args, inside dict_kwargs, a plain string, a list
        "nested in a network": ("network", {"class_path": "lit_score.networks.MLP", "init_args": {
            "data_dim": 2, "activation": system}}, "torch.os.system"),
        "nested in dict_kwargs": ("process", {"class_path": "lit_score.processes.DiscreteVP", "dict_kwargs": {
            "schedule": system}}, "torch.os.system"),
        "a dotted string": ("optimizer", "torch.os.system", "torch.os.system"),
        "an unknown key": ("payload", system, "torch.os.system"),
        "a list": ("sample_shape", [system], "torch.os.system"),
        # the instantiator and the model class themselves
        "the instantiator": ("_instantiator", "lit_score.evaluation.evaluate.write_json",
                             "lit_score.evaluation.evaluate.write_json"),
        "a model class that is a function": ("_class_path", "lit_score.cli.main", "lit_score.cli.main"),
    }


def craft(clean: Path, tmp: Path, key: str, value) -> Path:
    ckpt = torch.load(clean, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"][key] = copy.deepcopy(value)
    path = tmp / "crafted.ckpt"
    torch.save(ckpt, path)
    return path


def refused(argv: list, capsys, tmp: Path, names: str) -> str:
    before = sorted(p.name for p in tmp.iterdir())
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lit-score: error:")]
    assert info.value.code not in (0, None), err[-800:]
    assert len(lines) == 1 and "Traceback" not in err, err[-800:]
    assert names in lines[0] and "nothing of it was called" in lines[0], lines[0]
    assert not (tmp / "marker").exists(), f"{argv[0]}: the payload ran"
    assert sorted(p.name for p in tmp.iterdir()) == before, "something was written"
    return lines[0]


@pytest.mark.parametrize("name", list(payloads(Path("/nonexistent"))))
def test_every_payload_is_refused_by_sample_and_load_model(name, clean, tmp_path, capsys):
    key, value, names = payloads(tmp_path)[name]
    crafted = craft(clean, tmp_path, key, value)
    line = refused(["sample", "--ckpt_path", crafted, "--num_samples", "2", "--output", tmp_path / "out"],
                   capsys, tmp_path, names)
    if not key.startswith("_"):
        assert key in line  # the offending key is named
    with pytest.raises(CheckpointError, match="nothing of it was called"):
        load_model(crafted)
    assert not (tmp_path / "marker").exists()


def entry_points(crafted: Path, clean: Path, tmp: Path) -> dict[str, list]:
    out = tmp / "out"
    return {
        "evaluate": ["evaluate", "--ckpt_path", crafted, "--num_samples", "4", "--output", out],
        "encode": ["encode", "--ckpt_path", crafted, "--output", out],
        "compare --ckpts": ["compare", "--ckpts", crafted, "--output", out],
        "validate": ["validate", "--config", TOY, "--ckpt_path", crafted, "--trainer.logger", "false"],
        "test": ["test", "--config", TOY, "--ckpt_path", crafted, "--trainer.logger", "false"],
        "predict": ["predict", "--config", TOY, "--ckpt_path", crafted, "--trainer.logger", "false"],
        "fit (resume)": ["fit", "--config", TOY, "--ckpt_path", crafted, "--trainer.logger.init_args.save_dir", out],
        "sample --classifier_ckpt": ["sample", "--ckpt_path", clean, "--classifier_ckpt", crafted,
                                     "--classifier_scale", "1", "--output", out],
        "evaluate --classifier_ckpt": ["evaluate", "--ckpt_path", clean, "--classifier_ckpt", crafted,
                                       "--classifier_scale", "1", "--num_samples", "4", "--output", out],
    }


@pytest.mark.parametrize("entry", list(entry_points(Path(), Path(), Path())))
@pytest.mark.parametrize("name", ["os.system through torch", "a local torch.hub repo", "nested in a network"])
def test_every_entry_point_refuses_before_calling(entry, name, clean, tmp_path, capsys):
    key, value, names = payloads(tmp_path)[name]
    crafted = craft(clean, tmp_path, key, value)
    refused(entry_points(crafted, clean, tmp_path)[entry], capsys, tmp_path, names)


def test_the_datamodule_record_is_checked_too(clean, tmp_path, capsys):
    ckpt = torch.load(clean, map_location="cpu", weights_only=True)
    ckpt["datamodule_hyper_parameters"]["name"] = {"class_path": "torch.os.system",
                                                   "init_args": {"command": f"touch {tmp_path / 'marker'}"}}
    torch.save(ckpt, tmp_path / "data.ckpt")
    refused(["evaluate", "--ckpt_path", tmp_path / "data.ckpt", "--num_samples", "4", "--output", tmp_path / "out"],
            capsys, tmp_path, "torch.os.system")
    ckpt["datamodule_hyper_parameters"] = {"_class_path": "lit_score.models.DDPM"}  # a class, of the wrong kind
    torch.save(ckpt, tmp_path / "data.ckpt")
    line = refused(["evaluate", "--ckpt_path", tmp_path / "data.ckpt", "--num_samples", "4", "--output",
                    tmp_path / "out"], capsys, tmp_path, "lit_score.models.DDPM")
    assert "is not a GenerativeDataModule" in line


def test_a_user_package_is_an_opt_in_that_still_demands_a_class_of_the_declared_type(tmp_path, monkeypatch):
    package = tmp_path / "my_lab"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n    def __init__(self, data_dim: int = 2):\n        super().__init__()\n"
        "def run(command: str = ''):\n    open(command, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_lab", None)
    with pytest.raises(CheckpointError, match="outside the allowed packages"):
        resolve_class("my_lab.Net", (torch.nn.Module,))
    assert "my_lab" not in sys.modules  # refused on the string, before any import
    monkeypatch.setenv("LIT_SCORE_ALLOWED_PACKAGES", "my_lab")
    assert resolve_class("my_lab.Net", (torch.nn.Module,)).__name__ == "Net"
    with pytest.raises(CheckpointError, match="is not a class"):
        resolve_class("my_lab.run", (torch.nn.Module,))
    with pytest.raises(CheckpointError, match="is not a Optimizer"):
        resolve_class("my_lab.Net", (torch.optim.Optimizer,))


def test_declared_types_follow_the_annotations():
    from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

    assert declared_classes(OptimizerCallable) == (torch.optim.Optimizer,)
    assert torch.optim.lr_scheduler.LRScheduler in declared_classes(LRSchedulerCallable | None)
    assert declared_classes(torch.nn.Module | None) == (torch.nn.Module,)
    assert declared_classes(str) == declared_classes(int | None) == declared_classes(None) == ()


def test_every_shipped_config_passes_the_checks():
    """No false refusals: the model and data trees of every config the project ships name only classes the loader
    accepts (the same trees a checkpoint of that config records)."""
    import yaml

    from lit_score.data import GenerativeDataModule
    from lit_score.models import GenerativeModule

    checked = 0
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        for key, base in (("model", GenerativeModule), ("data", GenerativeDataModule)):
            if isinstance(config, dict) and isinstance(config.get(key), dict):
                check_value(config[key], base, str(path), key)
                checked += 1
    assert checked >= 40
