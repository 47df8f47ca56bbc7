"""The compare report: ``report.md``, a self-contained ``report.html`` (figures embedded), ``metrics.csv``,
``metrics.json`` (rows with their protocols) and ``figures/*.png`` — samples side by side, quality vs NFE, loss curves.

Rendering only: every number comes from the evaluation rows :mod:`lit_score.evaluation.compare` hands over. The
table is :mod:`~lit_score.evaluation.report_table`, the figures :mod:`~lit_score.evaluation.report_figures`; this
module writes them into the report files (and to W&B) with the protocol stated once under the table.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Any

from lit_score.atomic import atomic_file, jsonable, write_json, write_text
from lit_score.evaluation.report_figures import loss_figure, nfe_figure, samples_figure
from lit_score.evaluation.report_table import flat_row, floors, markdown_table, table


def protocol_lines(rows: list[dict[str, Any]], evaluation: dict[str, Any]) -> list[str]:
    """The shared protocol, stated once under the table."""
    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return ["No evaluation succeeded."]
    p = ok[0]["protocol"]
    lines = [f"- {p['num_samples']} samples per seed set, seed sets {p['seeds']}, generation batch "
             f"{p.get('generation_batch_size')}; reference: {p['reference']['split']} split"
             + (" (fresh draws from the data distribution)" if p["reference"].get("fresh_draws") else "")
             + f" of {p['data']['label']}."]
    extractor = p.get("feature_extractor")
    if extractor:
        sha = str(extractor["weights_sha256"])[:16]
        lines.append(f"- Feature extractor {extractor['name']} (weights sha256 {sha}…).")
    lines.append("- Weights evaluated: " + ", ".join(sorted({f"{r['run']}: {r['protocol'].get('weights')}"
                                                             for r in ok})) + ".")
    if any("sem" in (s or {}) for r in ok for s in (r.get("metrics") or {}).values()):
        lines.append("- ± is a standard error: over the seed sets when there are at least 3, else from half-sampling "
                     "each set (the spread of the metric over random halves of the samples). \"(tie)\" marks a value "
                     "within the combined standard error of its column's best (no ranking between them).")
    floor_protocol = p.get("floor")
    if floor_protocol:
        plan = floor_protocol["plans"][0]
        lines.append(f"- The data row is n = {p['num_samples']} real images against the same reference as every model "
                     f"row ({plan['scheme']}: reference of {plan['num_reference']} images). Off-manifold share: "
                     "samples outside every real image's k-NN ball (k-NN realism < 1, Kynkäänniemi et al. 2019); "
                     "broken (est.): (share − data's share) / (1 − data's share).")
    fl = floors(rows)
    if fl:
        lines.append("- Data-vs-data floors at this n: " + ", ".join(f"{k} {v:.4g}" for k, v in fl.items())
                     + " (a model at its floor is indistinguishable from the data at this n).")
    v = p["versions"]
    lines.append(f"- lit-score {v['lit_score']}, torch {v['torch']}, torch-fidelity {v['torch_fidelity']}, "
                 f"lightning {v['lightning']}; evaluation settings {json.dumps(jsonable(evaluation))}.")
    skipped: dict[str, list[str]] = {}
    for r in rows:
        if r.get("status") == "skipped":
            skipped.setdefault(f"{r['run']} ({r['error']})", []).append(r["sampler_label"])
    lines += [f"- Not applicable: {', '.join(labels)} on {what}." for what, labels in skipped.items()]
    notes = sorted({note for r in ok for note in r["protocol"].get("notes", [])})
    lines += [f"- Note: {note}" for note in notes]
    return lines


def _embed(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def write_report(output: Path, trained: list[dict], rows: list[dict], evaluation: dict) -> dict[str, Path]:
    """Every report file; returns their paths."""
    figures = output / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    made = {"samples": samples_figure([r for r in rows if r["sampler_label"] == "default"], figures / "samples.png"),
            "quality_vs_nfe": nfe_figure(rows, figures / "quality_vs_nfe.png"),
            "loss": loss_figure(trained, figures / "loss.png")}
    headings, cells = table(rows)
    families = ", ".join(dict.fromkeys(f"{r['run']} ({r.get('family')})" for r in rows))
    captions = {"samples": "Samples of every run with its own sampler (2-D: over the data in grey).",
                "quality_vs_nfe": "Quality against the number of network evaluations, per run and sampler.",
                "loss": "Training loss (each family's own objective, so compare shapes, not levels)."}
    md = [f"# lit-score compare: {output.name}", "", f"Runs: {families}.", "", markdown_table(headings, cells), "",
          "## Protocol", "", *protocol_lines(rows, evaluation), ""]
    for name, path in made.items():
        if path is not None:
            md += [f"## {name.replace('_', ' ')}", "", f"![{name}](figures/{path.name})", "", captions[name], ""]
    md_path = output / "report.md"
    write_text(md_path, "\n".join(md))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    parts = [f"<h1>lit-score compare: {html.escape(output.name)}</h1>", f"<p>Runs: {html.escape(families)}.</p>",
             f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>", "<h2>Protocol</h2><ul>",
             *[f"<li>{html.escape(line[2:])}</li>" for line in protocol_lines(rows, evaluation)], "</ul>"]
    for name, path in made.items():
        if path is not None:
            parts += [f"<h2>{name.replace('_', ' ')}</h2>", f'<img src="{_embed(path)}" alt="{name}">',
                      f"<p>{html.escape(captions[name])}</p>"]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}img{max-width:100%}")
    html_path = output / "report.html"
    write_text(html_path, f"<!doctype html><html><head><meta charset='utf-8'><title>lit-score compare</title>"
                         f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")

    flats = [flat_row(r) for r in rows]
    fields = list(dict.fromkeys(k for f in flats for k in f))
    csv_path = output / "metrics.csv"
    with atomic_file(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows([{k: jsonable(f.get(k)) for k in fields} for f in flats])
    json_path = write_json(output / "metrics.json", {"runs": trained, "evaluations": rows, "evaluation": evaluation})
    return {"md": md_path, "html": html_path, "csv": csv_path, "json": json_path,
            **{k: v for k, v in made.items() if v is not None}}


def log_report(logger_config: dict[str, Any], output: Path) -> None:
    """The table (and figures) of a written report to a W&B logger (``WANDB_MODE=offline`` works)."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch.loggers import Logger, WandbLogger

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Logger, "logger")
    logger = parser.instantiate_classes(parser.parse_object({"logger": logger_config})).logger
    if not isinstance(logger, WandbLogger):
        raise ValueError("compare logs its table and figures to a WandbLogger only")
    data = json.loads((output / "metrics.json").read_text())
    headings, cells = table(data["evaluations"])
    logger.log_table(key="compare/metrics", columns=headings, data=cells)
    images = sorted((output / "figures").glob("*.png"))
    if images:
        logger.log_image(key="compare/figures", images=[str(p) for p in images], caption=[p.stem for p in images])
    logger.experiment.finish()
