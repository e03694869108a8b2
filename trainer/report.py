"""The evaluation report: PNG charts and one self-contained HTML page that embeds them.

Charts (matplotlib, Agg backend, no display needed):

- ``scores.png``: histograms of the scores of normal and anomalous rows, each as shares of
  its own class (so a rare class stays visible), on a log axis (reconstruction errors span
  orders of magnitude; equal-width bins there), with the published threshold;
- ``roc.png`` and ``pr.png``: the curves with their areas and the threshold's operating point;
- ``loss.png``: training and validation loss per epoch from the manifest, best epoch marked.

``report.html`` carries the images as base64 data URIs and the metrics as a table, so it can
be mailed or archived as one file; ``metrics.json`` holds what the CLI prints.

matplotlib is an optional extra (``pip install 'anomaly-pipeline[report]'``, which ``make
install`` includes): the worker image does not need it. Without it, ``write_report`` raises a
ConfigError that says what to install.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.contract.exceptions import ConfigError
from trainer import detection_metrics
from trainer.evaluate import Evaluation

NORMAL_COLOR = "#3b7dd8"
ANOMALY_COLOR = "#d8503b"
THRESHOLD_COLOR = "#222222"


@dataclass(frozen=True)
class Report:
    directory: Path
    html: Path
    images: dict[str, Path]
    metrics_json: Path


def write_report(result: Evaluation, directory: str | Path) -> Report:
    """Write the PNGs, metrics.json and report.html into ``directory`` (created if needed)."""
    plt = _pyplot()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    charts = {
        "scores": _score_histograms,
        "roc": _roc,
        "pr": _pr,
        "loss": _loss,
    }
    images: dict[str, Path] = {}
    for name, draw in charts.items():
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        try:
            draw(ax, result)
            fig.tight_layout()
            images[name] = out / f"{name}.png"
            fig.savefig(images[name])
        finally:
            plt.close(fig)
    metrics_json = out / "metrics.json"
    metrics_json.write_text(json.dumps(result.summary(), indent=2) + "\n")
    page = out / "report.html"
    page.write_text(_html(result, images))
    return Report(out, page, images, metrics_json)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ConfigError(
            "the report needs matplotlib: pip install 'anomaly-pipeline[report]'"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _score_histograms(ax: Any, r: Evaluation) -> None:
    """Finite scores only: a non-finite one has no place on the axis (it is flagged anyway,
    and counted as ``non_finite_scores`` in the metrics)."""
    threshold = r.threshold
    finite = np.isfinite(r.scores)
    scores = r.scores[finite]
    positive = scores[scores > 0]
    log_axis = positive.size == scores.size and positive.size > 0
    bins = _bins(scores if scores.size else np.zeros(1), threshold, log_axis)
    for mask, label, color in (
        (~r.labels[finite], "normal", NORMAL_COLOR),
        (r.labels[finite], "anomalous", ANOMALY_COLOR),
    ):
        n = int(mask.sum())
        ax.hist(
            scores[mask],
            bins=bins,
            weights=np.full(n, 1.0 / max(1, n)),  # share of the class: both classes visible
            alpha=0.55,
            color=color,
            label=f"{label} ({n})",
        )
    ax.axvline(
        threshold,
        color=THRESHOLD_COLOR,
        linestyle="--",
        label=f"threshold {threshold:.4g} (q={r.manifest.threshold.quantile:g})",
    )
    if log_axis:
        ax.set_xscale("log")
    ax.set_xlabel("anomaly score (reconstruction error)" + (", log scale" if log_axis else ""))
    ax.set_ylabel("share of the class's rows per bin")
    ax.set_title("Scores of normal vs anomalous rows")
    ax.legend(frameon=False)


def _bins(scores: npt.NDArray[np.float64], threshold: float, log_axis: bool) -> Any:
    lo, hi = float(scores.min()), float(max(scores.max(), threshold))
    if log_axis:
        lo = min(lo, threshold) if threshold > 0 else lo
        return np.geomspace(lo, hi * 1.0001, 60)
    return np.linspace(min(lo, threshold), hi, 60)


def _roc(ax: Any, r: Evaluation) -> None:
    curve = detection_metrics.roc_curve(r.scores, r.labels)
    t = r.at_threshold
    ax.plot(curve.x, curve.y, color=ANOMALY_COLOR, label=f"ROC-AUC {r.roc_auc:.3f}")
    ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", label="chance")
    _finish_curve(ax, (t.false_positive_rate, t.recall), "ROC curve", "lower right",
                  ("false positive rate", "true positive rate (recall)"))  # fmt: skip


def _pr(ax: Any, r: Evaluation) -> None:
    curve = detection_metrics.precision_recall_curve(r.scores, r.labels)
    t = r.at_threshold
    prevalence = float(r.labels.mean())
    ax.step(curve.x, curve.y, where="pre", color=ANOMALY_COLOR, label=f"PR-AUC {r.pr_auc:.3f}")
    ax.axhline(prevalence, color="#999999", linestyle=":", label=f"chance ({prevalence:.3f})")
    _finish_curve(ax, (t.recall, t.precision), "Precision-recall curve", "lower left",
                  ("recall", "precision"))  # fmt: skip


def _finish_curve(
    ax: Any, point: tuple[float, float], title: str, legend: str, labels: tuple[str, str]
) -> None:
    """The published threshold's operating point, axes, title and legend of a [0, 1] curve."""
    ax.plot(*point, "o", color=THRESHOLD_COLOR, label="published threshold")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc=legend, frameon=False)


def _loss(ax: Any, r: Evaluation) -> None:
    training = r.manifest.training
    if not training.train_loss:
        ax.text(0.5, 0.5, "no loss history in the manifest", ha="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    epochs = np.arange(1, len(training.train_loss) + 1)
    ax.plot(epochs, training.train_loss, color=NORMAL_COLOR, label="training loss")
    if training.validation_loss:
        val = np.arange(1, len(training.validation_loss) + 1)
        ax.plot(val, training.validation_loss, color=ANOMALY_COLOR, label="validation loss")
    if training.best_epoch:
        ax.axvline(
            training.best_epoch,
            color=THRESHOLD_COLOR,
            linestyle="--",
            label=f"best epoch {training.best_epoch} (kept)",
        )
    losses = [v for v in [*training.train_loss, *training.validation_loss] if v > 0]
    if losses and max(losses) / min(losses) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(f"Training of {r.manifest.name}/{r.manifest.version}")
    ax.legend(frameon=False)


_CAPTIONS = {
    "scores": "Score distributions; rows right of the dashed line raise alerts.",
    "roc": "ROC curve; the dot is where the published threshold operates.",
    "pr": "Precision-recall curve; the dotted line is what random scores would get.",
    "loss": "Loss per epoch from the manifest's training summary.",
}


def _html(r: Evaluation, images: dict[str, Path]) -> str:
    s = r.summary()
    rows = [
        ("ROC-AUC", f"{r.roc_auc:.4f}"),
        ("PR-AUC (average precision)", f"{r.pr_auc:.4f}"),
        ("threshold", f"{s['threshold']:.6g} (quantile {s['threshold_quantile']:g})"),
        ("precision at threshold", f"{s['precision']:.4f}"),
        ("recall at threshold", f"{s['recall']:.4f}"),
        ("F1 at threshold", f"{s['f1']:.4f}"),
        ("false positive rate at threshold", _rate(s["false_positive_rate"], s)),
        ("expected false-alarm rate (calibration)", _expected(s)),
        ("confusion (tp / fp / tn / fn)", " / ".join(str(v) for v in s["confusion"].values())),
        ("rows (anomalous / normal)", f"{s['rows']} ({s['anomalies']} / {s['normals']})"),
        ("model", f"{r.manifest.name}/{r.manifest.version} ({r.manifest.model.kind})"),
        ("data", r.data),
        ("label column", r.label_column),
    ]
    table = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    figures = "\n".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{_b64(path)}">'
        f"<figcaption>{html.escape(_CAPTIONS[name])}</figcaption></figure>"
        for name, path in images.items()
    )
    title = html.escape(f"Evaluation of {r.manifest.name}/{r.manifest.version}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1600px; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 0.25em 1em 0.25em 0; border-bottom: 1px solid #ddd; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(640px, 1fr)); gap: 1em; }}
figure {{ margin: 0; }} img {{ max-width: 100%; }} figcaption {{ color: #555; }}
</style></head>
<body><h1>{title}</h1>
<table>
{table}
</table>
<div class="grid">
{figures}
</div></body></html>
"""


def _rate(value: float, s: dict[str, Any]) -> str:
    low, high = s["false_positive_rate_90"]
    return f"{value:.4f} (90% interval {low:.4f} to {high:.4f})"


def _expected(s: dict[str, Any]) -> str:
    if s.get("expected_false_alarm_rate") is None:
        return "not recorded (model from before conformal thresholds)"
    low, high = s["expected_false_alarm_rate_90"]
    return (
        f"{s['expected_false_alarm_rate']:.4f} (90% interval {low:.4f} to {high:.4f}, "
        f"{s['calibration_rows']} calibration rows)"
    )


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")
