"""compare: two tiny runs of different families → every report file, naming both; re-running reuses the work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lit_score.cli import main
from lit_score.evaluation.compare import build_sampler, cli_overrides
from lit_score.samplers import DDIM, PredictorCorrector

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "seed_everything": 0,
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 3,
    "trainer.limit_val_batches": 0,
    "trainer.enable_progress_bar": False,
    "trainer.log_every_n_steps": 1,
    "trainer.callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"save_last": True}}],
    "model.init_args.network.init_args.hidden": 16,
    "data.init_args.num_samples": 600,
    "data.init_args.val_size": 100,
}
RUNS = [
    {"name": "ddpm", "config": str(ROOT / "configs/ddpm/toy.yaml"),
     "overrides": {"model.init_args.process.init_args.num_timesteps": 20}},
    {"name": "flow", "config": str(ROOT / "configs/flow/toy.yaml"),
     "overrides": {"model.init_args.sampler.init_args.num_steps": 4}},
]
SAMPLERS = [{"sampler": {"class_path": "lit_score.samplers.DDIM"}, "num_steps": [3, 5]}]
EVALUATION = {"num_samples": 200, "seeds": [0], "metrics": ["distances"], "distance_draws": 1}


def compare(tmp_path: Path, *extra: str) -> None:
    main(["compare", "--output", str(tmp_path / "report"), "--runs", json.dumps(RUNS), "--shared", json.dumps(TINY),
          "--samplers", json.dumps(SAMPLERS), "--evaluation", json.dumps(EVALUATION), "--progress", "false", *extra])


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("compare")
    compare(tmp)
    return tmp / "report"


def test_compare_writes_every_report_file_naming_both_families(report):
    for name in ("report.md", "report.html", "metrics.csv", "metrics.json", "figures/samples.png",
                 "figures/quality_vs_nfe.png", "figures/loss.png"):
        assert (report / name).is_file(), name
    md = (report / "report.md").read_text()
    assert "DDPM" in md and "FlowMatching" in md and "× floor" in md
    html = (report / "report.html").read_text()
    assert "DDPM" in html and "FlowMatching" in html and html.count("data:image/png;base64,") == 3
    rows = list(csv.DictReader(open(report / "metrics.csv")))
    assert [(r["run"], r["sampler"]) for r in rows] == [(run, s) for run in ("ddpm", "flow")
                                                        for s in ("default", "DDIM-3", "DDIM-5")]
    assert all(r["status"] == "ok" for r in rows)
    by = {(r["run"], r["sampler"]): r for r in rows}
    assert float(by["ddpm", "default"]["nfe"]) == 20 and float(by["flow", "default"]["nfe"]) == 7  # Heun: 2·3 + 1
    assert float(by["flow", "DDIM-5"]["nfe"]) == 5
    record = json.loads((report / "metrics.json").read_text())
    assert {r["family"] for r in record["evaluations"]} == {"DDPM", "FlowMatching"}
    protocol = record["evaluations"][0]["protocol"]
    assert protocol["num_samples"] == 200 and protocol["distances"]["num_draws"] == 1
    for row in rows:  # every distance sits beside its floor
        assert float(row["energy_distance_floor"]) > 0 and float(row["energy_distance_ratio"]) > 0


def test_rerunning_reuses_finished_runs_and_evaluations(report, tmp_path):
    stamps = {p: p.stat().st_mtime_ns for p in report.rglob("*") if p.suffix in (".ckpt", ".json")
              and "evals" in p.parts or p.name == "last.ckpt"}
    compare(report.parent)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained or re-evaluated


def test_compare_existing_checkpoints(report, tmp_path):
    ckpts = sorted(str(p) for p in (report / "runs").rglob("last.ckpt"))
    main(["compare", "--ckpts", *ckpts, "--output", str(tmp_path / "ckpts"), "--evaluation",
          json.dumps(EVALUATION), "--progress", "false"])
    rows = list(csv.DictReader(open(tmp_path / "ckpts" / "metrics.csv")))
    assert {r["family"] for r in rows} == {"DDPM", "FlowMatching"} and all(r["status"] == "ok" for r in rows)
    assert (tmp_path / "ckpts" / "figures" / "loss.png").is_file()  # read back from the runs' own CSV logs


def test_sampler_specs_build_nested_samplers_and_overrides_render_as_cli_keys():
    ddim = build_sampler({"class_path": "lit_score.samplers.DDIM", "init_args": {"eta": 1.0}}, 7)
    assert isinstance(ddim, DDIM) and ddim.num_steps == 7 and ddim.eta == 1.0
    pc = build_sampler({"class_path": "lit_score.samplers.PredictorCorrector", "init_args": {
        "predictor": {"class_path": "lit_score.samplers.ReverseDiffusion", "init_args": {"num_steps": 9}}}})
    assert isinstance(pc, PredictorCorrector) and pc.predictor.num_steps == 9
    assert cli_overrides({"a.b": 3, "c": {"x": [1]}, "d": "s"}) == ["--a.b", "3", "--c", '{"x": [1]}', "--d", "s"]


def test_a_sampler_a_model_cannot_use_is_reported_not_raised(tmp_path):
    from lit_score.models import EBM
    from lit_score.networks import EnergyMLP
    from lit_score.samplers import Langevin

    ebm = EBM(energy_net=EnergyMLP(data_dim=2, hidden=8, depth=1), sample_shape=(2,))
    assert not ebm.can_use(DDIM(num_steps=3)) and ebm.can_use(Langevin())


def test_the_report_goes_to_wandb_offline(report, tmp_path, monkeypatch):
    from lit_score.evaluation.report import log_report

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log_report({"class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": {"project": "lit-score-test", "save_dir": str(tmp_path)}}, report)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    media = list(runs[0].rglob("*.table.json"))
    assert media and "DDPM" in media[0].read_text()


def test_inapplicable_pairings_leave_the_table_and_are_listed_under_it(report):
    from lit_score.evaluation.report import protocol_lines, table

    rows = json.loads((report / "metrics.json").read_text())["evaluations"]
    skipped = {"run": "ebm", "family": "EBM", "sampler_label": "DDIM-3", "status": "skipped",
               "error": "DDIM needs a noise process; EBM has none"}
    _, cells = table([*rows, skipped])
    assert len(cells) == len(rows) and not any(c[0] == "ebm" for c in cells)
    assert any("Not applicable: DDIM-3 on ebm (DDIM needs a noise process" in line
               for line in protocol_lines([*rows, skipped], EVALUATION))


def test_an_ebm_grid_entry_can_start_from_the_buffer_and_is_skipped_where_there_is_none(tmp_path):
    """A samplers entry with ``start: buffer`` evaluates the persistent EBM's own chain continued from its replay
    buffer (recorded as start buffer in the protocol); the short-run EBM has no buffer, so its cell is skipped with the
    reason, not failed."""
    runs = [{"name": name, "config": str(ROOT / f"configs/ebm/{config}.yaml"),
             "overrides": {"model.init_args.sampler.init_args.num_steps": 3, "data.init_args.batch_size": 64,
                           "model.init_args.energy_net.init_args.hidden": 16}}
            for name, config in [("persistent", "toy"), ("shortrun", "toy_shortrun")]]
    main(["compare", "--output", str(tmp_path / "r"), "--runs", json.dumps(runs), "--shared", json.dumps(
        {k: v for k, v in TINY.items() if not k.startswith("model.")}), "--samplers", json.dumps(
        [{"label": "own-from-buffer", "start": "buffer"}]), "--evaluation", json.dumps(EVALUATION),
        "--progress", "false"])
    rows = {(r["run"], r["sampler_label"]): r
            for r in json.loads((tmp_path / "r" / "metrics.json").read_text())["evaluations"]}
    assert rows["persistent", "own-from-buffer"]["status"] == "ok"
    assert rows["persistent", "own-from-buffer"]["protocol"]["start"] == "buffer"
    assert rows["persistent", "default"]["protocol"]["start"] == "noise"
    assert rows["shortrun", "own-from-buffer"]["status"] == "skipped"
    assert "no replay buffer" in rows["shortrun", "own-from-buffer"]["error"]


def test_a_run_can_name_an_earlier_runs_checkpoint_and_a_later_one_is_refused(tmp_path):
    from lit_score.evaluation.compare import Compare
    from lit_score.evaluation.evaluate import EvaluationError

    calls = []

    def fake_fit(argv: list[str]) -> None:  # writes the checkpoint where compare's CSVLogger puts it
        calls.append(argv)
        logger = json.loads(argv[argv.index("--trainer.logger") + 1])["init_args"]
        ckpt = Path(logger["save_dir"]) / logger["name"] / logger["version"] / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"")

    reference = {"model.init_args.loss.init_args.teacher.init_args.checkpoint": "${ckpt:teacher}"}
    runs = [{"name": "teacher", "config": RUNS[0]["config"]},
            {"name": "student", "config": RUNS[1]["config"], "overrides": reference}]
    plan = Compare(tmp_path, runs, [], EVALUATION, {}, progress=False, fit=fake_fit)
    teacher = plan.train(runs[0])
    student = plan.train(runs[1], {"teacher": teacher})
    key = "--model.init_args.loss.init_args.teacher.init_args.checkpoint"
    assert calls[1][calls[1].index(key) + 1] == teacher["ckpt"] and teacher["ckpt"].endswith("last.ckpt")
    assert student["overrides"][key[2:]] == teacher["ckpt"]
    with pytest.raises(EvaluationError, match=r"names \$\{ckpt:teacher\}, which is not an earlier run"):
        Compare(tmp_path, runs[::-1], [], EVALUATION, {}, progress=False, fit=fake_fit)


def test_a_samplers_entry_with_runs_is_measured_on_those_runs_only(tmp_path, monkeypatch):
    from lit_score.evaluation import compare as compare_module
    from lit_score.evaluation.compare import Compare
    from lit_score.evaluation.evaluate import EvaluationError

    runs = [{"name": "a", "ckpt": RUNS[0]["config"]}, {"name": "b", "ckpt": RUNS[1]["config"]}]
    samplers = [{"sampler": {"class_path": "lit_score.samplers.DDIM"}, "num_steps": [3]},
                {"label": "only-b", "runs": ["b"], "sampler": {"class_path": "lit_score.samplers.DDIM"},
                 "num_steps": [5, 7]}]
    plan = Compare(tmp_path, runs, samplers, EVALUATION, {}, progress=False)
    measured = []
    monkeypatch.setattr(plan, "evaluate_run", lambda trained, label, entry, steps: measured.append(
        (trained["name"], label)) or {})
    monkeypatch.setattr(compare_module, "write_report", lambda output, trained, rows, evaluation: {})
    plan.run()
    assert measured == [("a", "default"), ("a", "DDIM-3"),
                        ("b", "default"), ("b", "DDIM-3"), ("b", "only-b-5"), ("b", "only-b-7")]
    for bad in (["c"], [], "b"):
        with pytest.raises(EvaluationError, match="runs must be a non-empty list of run names"):
            Compare(tmp_path, runs, [{**samplers[1], "runs": bad}], EVALUATION, {}, progress=False)
