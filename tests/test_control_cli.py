"""Issue 10 through the command line: class labels and guidance on sample / evaluate, SDEdit and inpainting from
files, and ``lit-score encode``, on one short run of ``configs/ddpm/toy_conditional.yaml`` (8 Gaussians, 8 classes).
Each test asserts what the command wrote, not only that it ran."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_score.cli import load_model, main

ROOT = Path(__file__).resolve().parents[1]
DDIM = ["--sampler.class_path", "lit_score.samplers.DDIM", "--sampler.init_args.num_steps", "10"]

pytestmark = pytest.mark.usefixtures("one_thread")


def run(argv: list) -> None:
    main([str(a) for a in argv])


def fails(argv: list, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        run(argv)
    assert info.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-score: error:")]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A short real run of the conditional toy config (a 50-step chain, 60 optimizer steps)."""
    tmp = tmp_path_factory.mktemp("conditional")
    run(["fit", "--config", ROOT / "configs/ddpm/toy_conditional.yaml", "--trainer.logger.init_args.save_dir", tmp,
         "--trainer.default_root_dir", tmp, "--trainer.max_epochs", 3, "--trainer.limit_train_batches", 20,
         "--trainer.limit_val_batches", 1, "--trainer.check_val_every_n_epoch", 3,
         "--model.init_args.process.init_args.num_timesteps", 50, "--trainer.enable_progress_bar", "false",
         "--trainer.callbacks+=lit_score.callbacks.SampleGrid", "--trainer.callbacks.num_samples", 64])
    path = tmp / "ddpm_toy_conditional" / "version_0" / "checkpoints" / "last.ckpt"
    assert path.is_file()
    return path


def test_a_conditional_run_writes_class_coloured_grids_and_samples_the_requested_class(ckpt, tmp_path):
    grid = np.load(ckpt.parent.parent / "samples" / "final.npz")
    assert grid["labels"].tolist() == [i % 8 for i in range(len(grid["labels"]))]  # every class in turn
    run(["sample", "--ckpt_path", ckpt, "--num_samples", 40, "--class_label", 3, "--guidance_scale", 1.5, *DDIM,
         "--output", tmp_path / "three"])
    out = np.load(tmp_path / "three.npz")
    assert out["labels"].tolist() == [3] * 40
    assert float(out["class_label"]) == 3 and float(out["guidance_scale"]) == 1.5 and int(out["nfe"]) == 10
    # the same seed and settings give the same samples as the library call the CLI stands for
    model = load_model(ckpt)
    model.set_condition(3, 1.5)
    from lit_score.generation import draw_seed_batch
    from lit_score.samplers import DDIM as DDIMSampler

    again = draw_seed_batch(model, {"seed": 0, "start": 0, "index": torch.arange(40)}, DDIMSampler(num_steps=10))
    np.testing.assert_allclose(out["samples"], again.numpy(), atol=1e-5)


def test_guidance_curve_writes_a_row_per_scale_with_class_accuracy(ckpt, tmp_path):
    run(["evaluate", "--ckpt_path", ckpt, "--num_samples", 200, "--distance_samples", 200, "--guidance_scales", "0,3",
         *DDIM, "--progress", "false", "--output", tmp_path / "curve"])
    curve = json.loads((tmp_path / "curve" / "guidance_curve.json").read_text())
    assert [row["guidance_scale"] for row in curve["rows"]] == [0.0, 3.0]
    assert all(0 <= row["accuracy"] <= 1 for row in curve["rows"])
    assert (tmp_path / "curve" / "guidance_curve.png").is_file()
    assert curve["protocol"]["condition"]["guidance_scale"] == [0.0, 3.0]  # the sweep, not its last scale
    assert curve["protocol"]["num_samples"] == 200
    metrics = json.loads((tmp_path / "curve" / "w3" / "metrics.json").read_text())
    assert metrics["protocol"]["condition"]["guidance_scale"] == 3.0
    per_class = metrics["metrics"]["accuracy"]["per_class"]
    assert sorted(per_class, key=int) == [str(k) for k in range(8)]
    assert np.isclose(np.mean(list(per_class.values())), metrics["metrics"]["accuracy"]["mean"])  # 25 per class


def test_inpainting_from_files_keeps_the_known_coordinate_and_sdedit_strength_zero_returns_the_guide(ckpt, tmp_path):
    known = np.array([[0.7, 0.0], [-0.7, 0.0]], dtype=np.float32)
    np.savez(tmp_path / "known.npz", samples=known)
    np.savez(tmp_path / "mask.npz", mask=np.array([1.0, 0.0], dtype=np.float32))
    run(["sample", "--ckpt_path", ckpt, "--num_samples", 6, "--inpaint", tmp_path / "known.npz", "--mask",
         tmp_path / "mask.npz", "--resample", 2, "--jump_length", 2, *DDIM, "--output", tmp_path / "filled"])
    filled = np.load(tmp_path / "filled.npz")
    np.testing.assert_array_equal(filled["samples"][:, 0], np.tile(known[:, 0], 3))  # row i uses known row i mod 2
    assert str(filled["edit"]) == "inpaint" and int(filled["resample"]) == 2 and int(filled["nfe"]) > 10
    run(["sample", "--ckpt_path", ckpt, "--num_samples", 2, "--init", tmp_path / "known.npz", "--strength", 0,
         *DDIM, "--output", tmp_path / "same"])
    same = np.load(tmp_path / "same.npz")
    np.testing.assert_array_equal(same["samples"], known)
    assert int(same["nfe"]) == 0


@pytest.mark.parametrize("label", [None, 5])
def test_encode_writes_latents_a_reconstruction_and_slerp_paths(ckpt, tmp_path, label):
    extra = [] if label is None else ["--class_label", label]  # a class's ODE: one label for every batch size
    run(["encode", "--ckpt_path", ckpt, "--num_samples", 6, "--interpolate", 4, "--sampler.class_path",
         "lit_score.samplers.DPMSolver", "--sampler.init_args.num_steps", 30, "--output", tmp_path / "z", *extra])
    out = np.load(tmp_path / "z.npz")
    assert out["latents"].shape == out["samples"].shape == (6, 2)
    assert float(np.median(out["relative_error"])) < 0.05  # DPM-Solver round trip at 30 steps
    assert (tmp_path / "z_interpolation.png").is_file() and int(out["nfe"]) > 0
    assert ("class_label" in out) == (label is not None)


def test_evaluate_reads_the_classes_of_samples_made_elsewhere(ckpt, tmp_path, capsys):
    run(["sample", "--ckpt_path", ckpt, "--num_samples", 80, "--class_label", 2, *DDIM, "--output", tmp_path / "two"])
    run(["evaluate", "--ckpt_path", ckpt, "--samples", tmp_path / "two.npz", "--metrics", "accuracy",
         "--output", tmp_path / "eval"])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(metrics["metrics"]["accuracy"]["per_class"]) == ["2"]  # the file's labels, not i mod K
    assert metrics["protocol"]["accuracy"]["labels"] == "the samples' file's labels"
    np.savez(tmp_path / "bare.npz", samples=np.load(tmp_path / "two.npz")["samples"])
    assert "needs the classes they were drawn for" in fails(
        ["evaluate", "--ckpt_path", ckpt, "--samples", tmp_path / "bare.npz", "--metrics", "accuracy", "--output",
         tmp_path / "eval2"], capsys)


def test_bad_control_input_is_one_line(ckpt, tmp_path, capsys):
    np.savez(tmp_path / "wrong.npz", samples=np.zeros((3, 5), dtype=np.float32))
    assert "holds (3, 5), not samples of shape (2,)" in fails(
        ["sample", "--ckpt_path", ckpt, "--init", tmp_path / "wrong.npz", "--output", tmp_path / "x"], capsys)
    assert "inpainting (--inpaint) needs --mask" in fails(
        ["sample", "--ckpt_path", ckpt, "--inpaint", tmp_path / "wrong.npz", "--output", tmp_path / "x"], capsys)
    assert "class_label must lie in 0 … 7" in fails(
        ["sample", "--ckpt_path", ckpt, "--class_label", 8, "--output", tmp_path / "x"], capsys)
    assert "cannot run backwards in time" in fails(
        ["encode", "--ckpt_path", ckpt, "--sampler.class_path", "lit_score.samplers.Ancestral", "--output",
         tmp_path / "x"], capsys)
    assert not list(tmp_path.glob("x*"))


@pytest.mark.parametrize("config", ["ddpm/digits_conditional", "flow/digits_conditional"])
def test_conditional_digits_configs_run(config, tmp_path):
    """(sde/vp_digits_conditional differs from the DDPM one only in process and sampler: its parse test covers it.)"""
    run(["fit", "--config", ROOT / f"configs/{config}.yaml", "--trainer.logger.init_args.save_dir", tmp_path,
         "--trainer.default_root_dir", tmp_path, "--trainer.fast_dev_run", "true"])


def test_conditional_cifar10_config_on_a_labelled_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(("airplane", "cat")):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(
                tmp_path / "images" / name / f"{k}{i}.png")
    run(["fit", "--config", ROOT / "configs/ddpm/cifar10_conditional.yaml", "--trainer.logger.init_args.save_dir",
         tmp_path, "--trainer.default_root_dir", tmp_path, "--trainer.accelerator", "cpu", "--trainer.fast_dev_run",
         "true", "--trainer.precision", "32-true", "--data.init_args.root", tmp_path / "images",
         "--data.init_args.dataset", "folder", "--data.init_args.batch_size", 4, "--data.init_args.num_workers", 0,
         "--model.init_args.network.init_args.base_channels", 32, "--model.init_args.network.init_args.channel_mult",
         "[1, 2]", "--model.init_args.network.init_args.num_res_blocks", 1])
