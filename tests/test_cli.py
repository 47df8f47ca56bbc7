"""The CLI driven from Python with argument lists (Lightning's test_cli.py habit)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_score.cli import checkpoint_class_path, load_model, main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))
FAMILY_CONFIGS = [p for p in CONFIGS if p.parent.name not in ("trainer", "logger", "compare")]
COMPARE_CONFIGS = [p for p in CONFIGS if p.parent.name == "compare"]
PRESETS = [p for p in CONFIGS if p.parent.name in ("trainer", "logger")]


def run(argv: list[str]) -> None:
    main([str(a) for a in argv])


def fails(argv: list[str], capsys, code: int = 1) -> str:
    """Run argv, expect exit ``code`` and return the single error line."""
    with pytest.raises(SystemExit) as info:
        run(argv)
    assert info.value.code == code
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-score: error:")]
    assert len(err) == 1, err
    return err[0]


def logs(tmp_path: Path) -> list[str]:
    return ["--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.default_root_dir", str(tmp_path),
            "--trainer.accelerator", "cpu"]


@pytest.mark.parametrize("config", FAMILY_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_family_config_parses(config, capsys):
    with pytest.raises(SystemExit) as info:
        run(["fit", "--config", config, "--print_config"])
    assert info.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


@pytest.mark.parametrize("config", COMPARE_CONFIGS, ids=lambda p: p.stem)
def test_compare_configs_parse_and_every_run_config_exists(config):
    import yaml

    from lit_score.cli.compare import compare_parser
    from lit_score.evaluation.compare import Compare

    text = config.read_text()
    # an overlay is stacked on the config its header names (it may restate the runs, as objectives_digits_long does)
    named = re.search(r"--config (configs/compare/\S+\.yaml) --config configs/compare/" + config.name, text)
    if re.search(r"--config configs/compare/" + config.name + r" --ckpts", text):  # a grid for given checkpoints
        cfg = compare_parser().parse_args(["--config", str(config)])
        compare = Compare(Path(cfg.output), [{"name": "m", "ckpt": __file__}], cfg.samplers, cfg.evaluation, {}, "cpu",
                          False)
        assert "runs" not in yaml.safe_load(text) and len(compare.sampler_grid()) > 1
        return
    if all("ckpt" in r for r in yaml.safe_load(text).get("runs") or [{}]):  # checkpoints its header's commands make
        cfg = compare_parser().parse_args(["--config", str(config)])
        compare = Compare(Path(cfg.output), [{"name": r["name"], "ckpt": __file__} for r in cfg.runs], cfg.samplers,
                          cfg.evaluation, {}, "cpu", False)
        made_by = re.findall(r"configs/\S+\.yaml", text.split("\noutput:")[0])
        assert len(compare.sampler_grid()) > 1 and made_by and all((ROOT / m).is_file() for m in made_by)
        return
    overlay = named is not None or "runs" not in yaml.safe_load(text)
    assert not overlay or named, f"{config.name}: an overlay names its base in its header"
    base = [str(ROOT / named.group(1))] if overlay else []
    cfg = compare_parser().parse_args([*(a for b in base for a in ("--config", b)), "--config", str(config)])
    runs = [{**r, "config": str(ROOT / r["config"])} for r in cfg.runs]
    compare = Compare(Path(cfg.output), runs, cfg.samplers, cfg.evaluation, cfg.shared, "cpu", False)
    assert len(compare.sampler_grid()) > 1 and all(Path(r["config"]).is_file() for r in runs)
    families = {Path(r["config"]).parent.name for r in runs}
    if config.stem.startswith("ebm"):  # the EBM regimes
        assert families == {"ebm"} and len(runs) == 4
    elif config.stem not in ("toy", "digits"):  # issue 9's objective comparisons: each run's config + overrides parses
        from lit_score.evaluation.compare import cli_overrides
        from lit_score.evaluation.run_specs import resolve_references

        assert families <= {"ddpm", "ncsn", "sde", "edm", "vdm", "flow", "distill", "fewstep"} and len(runs) > 1
        earlier = {r["name"]: {"ckpt": "teacher.ckpt"} for r in runs}  # ${ckpt:NAME}: a path --print_config never reads
        for r in runs:
            overrides = cli_overrides({**cfg.shared, **resolve_references(r.get("overrides") or {}, earlier)})
            with pytest.raises(SystemExit) as info:
                run(["fit", "--config", r["config"], *overrides, "--print_config"])
            assert info.value.code in (0, None), r["name"]
    else:
        assert families == {"ddpm", "ncsn", "sde", "ebm", "flow"}  # every family that exists


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_presets_stack_on_a_family_config(preset, capsys):
    with pytest.raises(SystemExit):
        run(["fit", "--config", ROOT / "configs/ddpm/toy.yaml", "--config", preset, "--print_config"])
    out = capsys.readouterr().out
    assert "lit_score.models.DDPM" in out


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """A very short real DDPM toy run (not fast_dev_run, which writes no checkpoint)."""
    tmp = tmp_path_factory.mktemp("toy")
    run(["fit", "--config", ROOT / "configs/ddpm/toy.yaml", *logs(tmp), "--trainer.max_epochs", "1",
         "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
         "--trainer.check_val_every_n_epoch", "1", "--model.init_args.process.init_args.num_timesteps", "50"])
    return tmp / "ddpm_toy" / "version_0"


def test_fit_toy_leaves_checkpoint_logs_and_samples(toy_run):
    assert (toy_run / "checkpoints" / "last.ckpt").is_file()
    assert (toy_run / "config.yaml").is_file()
    assert list(toy_run.glob("events.out.tfevents.*"))
    assert (toy_run / "samples" / "epoch=0000.png").is_file()
    assert (toy_run / "samples" / "final.png").is_file()
    samples = np.load(toy_run / "samples" / "final.npz")["samples"]
    assert samples.shape == (2000, 2) and np.isfinite(samples).all()


def test_sample_from_checkpoint_with_any_sampler(toy_run, capsys):
    ckpt = toy_run / "checkpoints" / "last.ckpt"
    assert checkpoint_class_path(ckpt) == "lit_score.models.DDPM"
    out = toy_run / "samples" / "ddim"
    run(["sample", "--ckpt_path", ckpt, "--num_samples", 100, "--batch_size", 40, "--output", out,
         "--sampler.class_path", "lit_score.samplers.DDIM", "--sampler.init_args.num_steps", 10])
    data = np.load(out.with_suffix(".npz"))
    assert data["samples"].shape == (100, 2) and int(data["nfe"]) == 10
    width, height = Image.open(out.with_suffix(".png")).size
    assert width > 1.8 * height  # two panels: the samples beside the checkpoint's own data
    # the model's own sampler by default (ancestral over the 50-step chain), written next to the run
    run(["sample", "--ckpt_path", ckpt, "--num_samples", 20])
    default = toy_run / "samples" / "last_Ancestral_n20_seed0.npz"
    assert int(np.load(default)["nfe"]) == 50
    # nothing is overwritten without --overwrite
    assert "exists" in fails(["sample", "--ckpt_path", ckpt, "--num_samples", 20], capsys)
    run(["sample", "--ckpt_path", ckpt, "--num_samples", 20, "--overwrite", "true"])


def test_loaded_model_is_the_checkpoint_class_with_its_settings(toy_run):
    model = load_model(toy_run / "checkpoints" / "last.ckpt")
    assert type(model).__name__ == "DDPM"
    assert model.process.num_timesteps == 50 and model.sample_shape == (2,)


def test_fast_dev_run_digits(tmp_path):
    run(["fit", "--config", ROOT / "configs/ddpm/digits.yaml", *logs(tmp_path), "--trainer.fast_dev_run", "true"])


def write_image_folder(root: Path, n: int = 6, size: int = 32, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        channels = 3 if mode == "RGB" else 1
        pixels = rng.integers(0, 256, size=(size, size, channels), dtype=np.uint8)
        Image.fromarray(pixels if channels == 3 else pixels[..., 0], mode).save(root / f"img{i}.png")
    return root


def test_fast_dev_run_cifar10_config_on_a_tiny_image_folder(tmp_path):
    (tmp_path / "images").mkdir()
    folder = write_image_folder(tmp_path / "images")
    run(["fit", "--config", ROOT / "configs/ddpm/cifar10.yaml", *logs(tmp_path), "--trainer.fast_dev_run", "true",
         "--trainer.precision", "32-true", "--data.init_args.root", folder, "--data.init_args.dataset", "folder",
         "--data.init_args.batch_size", 4, "--data.init_args.num_workers", 0,
         "--model.init_args.network.init_args.base_channels", 32, "--model.init_args.network.init_args.channel_mult",
         "[1, 2]", "--model.init_args.network.init_args.attention_resolutions", "[16]"])


def test_bad_config_key_is_one_line(capsys):
    line = fails(["fit", "--config", ROOT / "configs/ddpm/toy.yaml", "--model.init_args.learning_rate", "1"], capsys, 2)
    assert "learning_rate" in line


def test_missing_image_root_is_one_line(tmp_path, capsys):
    line = fails(["fit", "--config", ROOT / "configs/ddpm/cifar10.yaml", *logs(tmp_path), "--trainer.fast_dev_run",
                  "true", "--data.init_args.root", tmp_path / "nowhere"], capsys)
    assert "nowhere" in line


def test_data_of_the_wrong_shape_is_one_line(tmp_path, capsys):
    line = fails(["fit", "--config", ROOT / "configs/ddpm/toy.yaml", *logs(tmp_path), "--trainer.fast_dev_run", "true",
                  "--model.init_args.network.init_args.data_dim", 3], capsys)
    assert "sample shape (2,)" in line


def test_nan_losses_are_skipped_then_stop_the_run_with_one_line_and_keep_checkpoints(tmp_path, capsys, toy_run):
    before = {p: p.stat().st_mtime_ns for p in toy_run.rglob("*.ckpt")}
    line = fails(["fit", "--config", ROOT / "configs/ddpm/toy.yaml", *logs(tmp_path), "--trainer.max_steps", 20,
                  "--model.init_args.optimizer.init_args.lr", "1e30", "--trainer.gradient_clip_val", "null"], capsys)
    assert "10 training steps in a row had a non-finite loss or gradient" in line
    assert {p: p.stat().st_mtime_ns for p in toy_run.rglob("*.ckpt")} == before


def test_missing_checkpoint_is_one_line(capsys):
    assert "does not exist" in fails(["sample", "--ckpt_path", "/nonexistent.ckpt"], capsys)


def test_checkpoint_of_another_family_is_refused(toy_run, tmp_path, capsys):
    ncsn = ROOT / "configs/ncsn/toy.yaml"
    line = fails(["fit", "--config", ncsn, *logs(tmp_path), "--ckpt_path", toy_run / "checkpoints/last.ckpt"], capsys)
    assert "DDPM" in line and "NCSN" in line


def test_resume_continues_from_the_checkpoint(toy_run, tmp_path):
    ckpt = toy_run / "checkpoints" / "last.ckpt"
    step = torch.load(ckpt, weights_only=True)["global_step"]
    run(["fit", "--config", ROOT / "configs/ddpm/toy.yaml", *logs(tmp_path), "--ckpt_path", ckpt,
         "--trainer.max_epochs", 2, "--trainer.limit_train_batches", 3, "--trainer.limit_val_batches", 1,
         "--model.init_args.process.init_args.num_timesteps", "50"])
    resumed = torch.load(tmp_path / "ddpm_toy" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == step + 3


SHORT = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
         "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
         "--model.init_args.process.init_args.num_timesteps", "50"]


def console(argv: list, cwd: Path, **env: str) -> None:
    """Run ``python -m lit_score.cli`` as a separate process, as a user would."""
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "lit_score.cli", *map(str, argv)], cwd=cwd, capture_output=True,
                            text=True, env={**os.environ, **env}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_ddp_two_cpu_processes_split_sample_generation(tmp_path):
    console(["fit", "--config", ROOT / "configs/ddpm/toy.yaml", "--trainer.devices", 2, "--trainer.strategy", "ddp",
             "--trainer.accelerator", "cpu", *SHORT], cwd=tmp_path)
    samples = np.load(tmp_path / "runs/ddpm_toy/version_0/samples/final.npz")["samples"]
    assert samples.shape == (2000, 2)
    assert len(np.unique(samples[:, 0])) == 2000  # the two ranks drew different samples


def test_wandb_offline_runs_keep_their_own_directories(tmp_path):
    for _ in range(2):
        console(["fit", "--config", ROOT / "configs/ddpm/toy.yaml", "--config", ROOT / "configs/logger/wandb.yaml",
                 *SHORT], cwd=tmp_path, WANDB_MODE="offline")
    runs = [p for p in (tmp_path / "runs/lit-score").iterdir() if p.is_dir()]
    assert len(runs) == 2
    for run_dir in runs:
        assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints/last.ckpt").is_file()
        assert (run_dir / "samples/final.png").is_file()


CHEAP_GRID = '[{"class_path": "lit_score.callbacks.SampleGrid", "init_args": {"num_samples": 2}}]'
DDIM_3 = '{"class_path": "lit_score.samplers.DDIM", "init_args": {"num_steps": 3}}'
UNET = "--model.init_args.network.init_args."
SMALL_UNET = [f"{UNET}base_channels", 32, f"{UNET}channel_mult", "[1, 2]", f"{UNET}attention_resolutions", "[16]",
              "--model.init_args.sampler", DDIM_3]


@pytest.mark.parametrize("config", ["ncsn/cifar10", "sde/vp_cifar10", "sde/ve_cifar10", "sde/subvp_cifar10",
                                    "ebm/cifar10", "flow/cifar10"])
def test_fast_dev_run_every_family_on_a_tiny_image_folder(config, tmp_path):
    """Each family's CIFAR-10 config trains on a local image folder (network shrunk, cheap sampler and grid)."""
    (tmp_path / "images").mkdir()
    folder = write_image_folder(tmp_path / "images")
    model_args = [] if config.startswith("ebm") else SMALL_UNET
    run(["fit", "--config", ROOT / f"configs/{config}.yaml", *logs(tmp_path), "--trainer.fast_dev_run", "true",
         "--trainer.precision", "32-true", "--trainer.callbacks", CHEAP_GRID, "--data.init_args.root", folder,
         "--data.init_args.dataset", "folder", "--data.init_args.batch_size", 4, "--data.init_args.num_workers", 0,
         *model_args])
    assert list((tmp_path / "samples").glob("epoch=*.png"))


def test_fast_dev_run_ddpm_toy(tmp_path):
    run(["fit", "--config", ROOT / "configs/ddpm/toy.yaml", *logs(tmp_path), "--trainer.fast_dev_run", "true"])
    assert (tmp_path / "samples" / "epoch=0000.png").is_file()


def test_a_ddpm_checkpoint_samples_with_predictor_corrector(toy_run):
    out = toy_run / "samples" / "pc"
    pc = ["--sampler.class_path", "lit_score.samplers.PredictorCorrector", "--sampler.init_args.predictor",
          '{"class_path": "lit_score.samplers.ReverseDiffusion", "init_args": {"num_steps": 10}}',
          "--sampler.init_args.corrector", '{"class_path": "lit_score.samplers.LangevinCorrector"}']
    run(["sample", "--ckpt_path", toy_run / "checkpoints/last.ckpt", "--num_samples", 30, "--output", out, *pc])
    data = np.load(out.with_suffix(".npz"))
    assert data["samples"].shape == (30, 2) and np.isfinite(data["samples"]).all()
    assert int(data["nfe"]) == 9 * 2 + 1  # 9 predictor + 9 corrector steps, then the final denoise


def test_validate_test_and_predict_subcommands(toy_run, tmp_path):
    ckpt = toy_run / "checkpoints/last.ckpt"
    for subcommand in ("validate", "test", "predict", "test"):  # repeated: nothing left behind blocks a rerun
        run([subcommand, "--config", ROOT / "configs/ddpm/toy.yaml", "--ckpt_path", ckpt, "--trainer.logger", "false",
             "--trainer.default_root_dir", tmp_path, "--trainer.enable_progress_bar", "false"])


def test_predict_generates_one_sample_per_seed_index(toy_run):
    import lightning.pytorch as pl

    from lit_score.data import Toy2D

    model = load_model(toy_run / "checkpoints/last.ckpt")
    data = Toy2D(num_samples=200, val_size=70, batch_size=32)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    batches = trainer.predict(model, datamodule=data)
    samples = torch.cat(batches)
    assert samples.shape == (70, 2) and torch.isfinite(samples).all()
    again = torch.cat(trainer.predict(model, datamodule=data))
    torch.testing.assert_close(samples, again)  # seeded by index: reproducible


def test_a_named_sampler_keeps_the_models_settings_and_a_single_level_one_is_warned_about(toy_run, tmp_path, capsys):
    # The EBM toy config samples with Langevin(step 0.01, noise 0.1414, no clip, clamp ±3); the class defaults are
    # the image EBM's (step 10, noise 0.005, clip 0.03, clamp ±1). Naming the class to change one setting keeps
    # the rest.
    run(["fit", "--config", ROOT / "configs/ebm/toy.yaml", *logs(tmp_path), "--trainer.max_steps", "2",
         "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false", "--trainer.callbacks",
         '[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": true}}]',
         "--data.init_args.num_samples", "300", "--model.init_args.sampler.init_args.num_steps", "2",
         "--model.init_args.buffer_size", "300"])
    ckpt = tmp_path / "ebm_toy/version_0/checkpoints/last.ckpt"
    out = tmp_path / "langevin"
    run(["sample", "--ckpt_path", ckpt, "--num_samples", 10, "--output", out,
         "--sampler.class_path", "lit_score.samplers.Langevin", "--sampler.init_args.num_steps", 7])
    data = np.load(out.with_suffix(".npz"))
    recorded = str(data["sampler"])
    assert int(data["nfe"]) == 7 and "num_steps=7" in recorded
    assert "step_size=0.01," in recorded and "noise_scale=0.1414" in recorded and "grad_clip=None" in recorded
    assert "clamp=(-3.0, 3.0)" in recorded
    assert np.abs(data["samples"]).max() <= 3.0 and np.abs(data["samples"]).max() > 1.0  # not the ±1 image clamp
    # another class than the model's: its own defaults, as given
    run(["sample", "--ckpt_path", ckpt, "--num_samples", 10, "--output", tmp_path / "explicit",
         "--sampler.class_path", "lit_score.samplers.Langevin", "--sampler.init_args.num_steps", 3,
         "--sampler.init_args.step_size", 0.5])
    assert "step_size=0.5," in str(np.load(tmp_path / "explicit.npz")["sampler"])
    # a Metropolis-adjusted kernel records what it measured: the acceptance and the step its warm-up adapted
    run(["sample", "--ckpt_path", ckpt, "--num_samples", 50, "--output", tmp_path / "mala",
         "--sampler.class_path", "lit_score.samplers.MALA", "--sampler.init_args.num_steps", 20,
         "--sampler.init_args.adapt_steps", 30, "--sampler.init_args.bounds", "[-3, 3]"])
    mala = np.load(tmp_path / "mala.npz")
    assert int(mala["nfe"]) == 51 and 0.3 < float(mala["acceptance_rate"]) < 0.85
    assert float(mala["adapted_step_size"]) > 0 and np.abs(mala["samples"]).max() <= 3.0
    assert "acceptance_rate" not in str(mala["sampler"])  # settings only in the description
    # chains continued from the checkpoint's replay buffer: named in what sample and evaluate write
    run(["sample", "--ckpt_path", ckpt, "--num_samples", 10, "--output", tmp_path / "buffer", "--start", "buffer"])
    assert str(np.load(tmp_path / "buffer.npz")["start"]) == "buffer"
    assert str(np.load(out.with_suffix(".npz"))["start"]) == "noise"
    run(["evaluate", "--ckpt_path", ckpt, "--num_samples", 50, "--metrics", "distances", "--start", "buffer",
         "--output", tmp_path / "eval_buffer", "--progress", "false"])
    report = json.loads((tmp_path / "eval_buffer" / "metrics.json").read_text())
    assert report["protocol"]["start"] == "buffer"
    assert any("replay buffer (IGEBM-style numbers), not fresh chains" in n for n in report["protocol"]["notes"])
    capsys.readouterr()
    # Langevin on a diffusion model runs at t_min only: it samples (exit 0) but says in one line it is not the model's
    run(["sample", "--ckpt_path", toy_run / "checkpoints/last.ckpt", "--num_samples", 10, "--output",
         tmp_path / "ddpm_langevin", "--sampler.class_path", "lit_score.samplers.Langevin",
         "--sampler.init_args.num_steps", 2])
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-score: warning:")]
    assert len(warnings) == 1 and "never visits the noise levels DDPM was trained on" in warnings[0]
    assert "use the model's own sampler (Ancestral)" in warnings[0]
    assert (tmp_path / "ddpm_langevin.npz").is_file()
