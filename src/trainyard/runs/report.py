"""Pictures and pages made from run folders: overlaid learning curves, and one self-contained HTML report."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from pathlib import Path
from typing import Any

from trainyard.config import suggest
from trainyard.errors import ConfigError, TrainyardError
from trainyard.files import atomic_write
from trainyard.runs.table import Run, differing_hparams, format_duration, format_time, format_value
from trainyard.track.jsonl import read_metrics

IMAGE_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve(run: Run, metric: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric from metrics.jsonl; a resumed run's repeated steps keep the latest value."""
    points: dict[int, float] = {}
    for row in read_metrics(run.path):
        value = row.get(metric)
        if isinstance(value, (int, float)):
            points[row["step"]] = float(value)
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def all_metric_names(runs: list[Run]) -> list[str]:
    return sorted({k for r in runs for row in read_metrics(r.path) for k in row if k not in ("step", "epoch")})


def compare_curves(runs: list[Run], metric: str, out: Path) -> list[str]:
    """Overlay ``metric`` of several runs against the optimizer step; returns the runs that lack it."""
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in IMAGE_FORMATS:
        raise ConfigError(f"--out {out}: unknown image format {suffix or '(none)'!r}; use one of .{', .'.join(IMAGE_FORMATS)}")
    curves = {r.name: curve(r, metric) for r in runs}
    missing = [name for name, (steps, _) in curves.items() if not steps]
    if len(missing) == len(runs):
        names = all_metric_names(runs)
        raise ConfigError(
            f"--metric {metric}: not logged by {'this run' if len(runs) == 1 else 'any of these runs'}; logged: "
            f"{', '.join(names)}{suggest(metric, names)}"
        )
    hparams = differing_hparams(runs) if len(runs) > 1 else []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in runs:
        steps, values = curves[run.name]
        if not steps:
            continue
        detail = ", ".join(f"{k.split('.')[-1]}={format_value(run.config.get(k))}" for k in hparams[:4])
        ax.plot(steps, values, marker="o" if len(steps) <= 20 else None, markersize=3, label=run.name + (f" ({detail})" if detail else ""))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    except OSError as exc:
        raise TrainyardError(f"--out {out}: cannot write ({exc.strerror})") from None
    finally:
        plt.close(fig)
    return missing


# ----------------------------------------------------------------------------------------
# The HTML report
# ----------------------------------------------------------------------------------------

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto; max-width: 1100px; color: #1d2330;
  padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #dde; padding-bottom: .2rem; }
.sub { color: #667; } .status { padding: .1rem .5rem; border-radius: .6rem; color: #fff; font-size: .85rem; }
.finished { background: #2a7d46; } .running { background: #2563eb; } .failed { background: #b42318; } .interrupted { background: #b54708; }
.unknown { background: #667; }
table { border-collapse: collapse; } td, th { padding: .2rem .8rem .2rem 0; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f5f6f8; padding: .8rem; overflow-x: auto; font-size: 12px; } svg { max-width: 100%; height: auto; }
img { image-rendering: pixelated; } .headline { font-size: 1.05rem; } .metrics { display: flex; gap: 3rem; flex-wrap: wrap; }
h3 { font-size: 1rem; margin-bottom: .3rem; }
figure { margin: 1rem 0; overflow-x: auto; } figcaption { color: #667; font-size: .85rem; }
"""


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE: the SVG is inline in HTML


def learning_curves_svg(run: Run) -> str | None:
    """One panel per quantity (loss, accuracy, lr, ...), the train/val/test splits overlaid, as inline SVG."""
    import matplotlib

    from trainyard.runs.table import is_interval_key

    names = [n for n in all_metric_names([run]) if not n.startswith(("perf/", "time/", "best/")) and not is_interval_key(n)]
    panels: dict[str, list[str]] = {}
    for name in names:
        panels.setdefault(name.split("/", 1)[1] if "/" in name else name, []).append(name)
    order = {"loss": 0, "accuracy": 1}
    panels = {k: v for k, v in sorted(panels.items(), key=lambda kv: (order.get(kv[0], 2), kv[0])) if any(curve(run, n)[0] for n in v)}
    if not panels:
        return None
    plt = _pyplot()
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text: searchable, crisp
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
        for ax, (quantity, tags) in zip(axes[0], panels.items()):
            for tag in tags:
                steps, values = curve(run, tag)
                ax.plot(steps, values, marker="o" if len(steps) <= 20 else None, markersize=3, label=tag)
            ax.set_title(quantity)
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        svg = _svg(fig)
    plt.close(fig)
    return svg


MIN_IMAGE_WIDTH = 480  # pixels: a smaller picture (a grid of 8x8 digits is ~70) is scaled up, nearest neighbour


def scaled_png(data: bytes, min_width: int = MIN_IMAGE_WIDTH) -> bytes:
    """The PNG scaled up by a whole factor with nearest neighbour (every pixel a crisp block) until it is at least
    ``min_width`` wide; as it was when already that wide, or when it cannot be read."""
    try:
        from PIL import Image

        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception:
        return data
    factor = -(-min_width // max(image.width, 1))
    if factor <= 1:
        return data
    buf = io.BytesIO()
    image.resize((image.width * factor, image.height * factor), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(scaled_png(path.read_bytes())).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = []
    for key, value in rows:
        num = isinstance(value, (int, float)) and not isinstance(value, bool)
        cells.append(f"<tr><th>{html.escape(str(key))}</th><td{' class=num' if num else ''}>{html.escape(format_value(value))}</td></tr>")
    return "<table>" + "".join(cells) + "</table>"


# media/<tag>.png -> (title, caption); any other picture is titled from its tag in words
PICTURES = [
    ("test_confusion_matrix.png", "Confusion matrix", "test set, best checkpoint; rows: true class, columns: predicted"),
    (
        "test_misclassified.png",
        "Sample predictions",
        "misclassified test samples (predicted / true label): the most confident mistakes first, a few from each true class",
    ),
    ("test_predictions.png", "Predicted against true", "test set, best checkpoint; the dashed diagonal is a perfect model"),
    ("data_train_samples.png", "Training samples with their labels", "after augmentation, as `trainyard preview` shows them"),
    ("data_train_batch.png", "A training batch", "as the model sees it, after augmentation (normalisation undone)"),
]
SPLIT_WORDS = {"test": "test", "val": "validation", "train": "training", "data": "data"}


def picture_title(stem: str) -> str:
    """``data_train_samples`` -> ``Data: train samples``; ``my_plot`` -> ``My plot``: words, not a raw tag."""
    head, _, rest = stem.partition("_")
    if head in SPLIT_WORDS and rest:
        return f"{SPLIT_WORDS[head].capitalize()}: {rest.replace('_', ' ')}"
    text = stem.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


QUALITY_PREFIXES = ("best/", "test/", "val/", "train/")


def split_metrics(metrics: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(quality metrics: best/, test/, val/, train/ in that order; the rest: lr, perf/*, time/*, ...). An interval's
    parts (``test/accuracy/low``, ...) are left out: they show in their metric's row."""
    from trainyard.runs.table import is_interval_key

    keys = [k for k in metrics if not is_interval_key(k)]
    quality = sorted((k for k in keys if k.startswith(QUALITY_PREFIXES)), key=lambda k: (QUALITY_PREFIXES.index(k[: k.index("/") + 1]), k))
    return quality, sorted(k for k in keys if not k.startswith(QUALITY_PREFIXES))


def _metric_text(metrics: dict[str, Any], key: str) -> Any:
    from trainyard.tasks import metric_with_interval

    if isinstance(metrics.get(key), float) and f"{key}/low" in metrics:
        return metric_with_interval(metrics, key)
    return metrics[key]


def build_report(run: Run) -> str:
    s = run.status_json
    media = run.path / "media"
    parts = [
        f"<h1>{html.escape(run.name)}</h1>",
        '<p class="sub"><span class="status '
        f'{html.escape(run.status if run.status in ("finished", "running", "failed", "interrupted") else "unknown")}">'
        f"{html.escape(run.status)}</span>"
        f" &nbsp;started {format_time(run.started)} &middot; wall time {format_duration(run.duration_s)} &middot; "
        f"{html.escape(str(run.path))}</p>",
    ]
    if run.metrics:
        from trainyard.tasks import summary_text

        quality, details = split_metrics(run.metrics)
        title = "Final metrics" if s.get("final") else "Latest metrics"
        monitor = f" (best {html.escape(run.monitor)}: {format_value(run.best)})" if run.monitor else ""
        parts.append(f"<h2>{title}{monitor}</h2>")
        tested = summary_text(run.metrics)
        if tested:
            parts.append(f'<p class="headline">test {html.escape(tested)}</p>')
        tables = [f"<div><h3>Quality</h3>{_table([(k, _metric_text(run.metrics, k)) for k in quality])}</div>"] if quality else []
        if details:
            tables.append(f"<div><h3>Learning rate and performance</h3>{_table([(k, run.metrics[k]) for k in details])}</div>")
        parts.append(f'<div class="metrics">{"".join(tables)}</div>')
    svg = learning_curves_svg(run)
    parts += ["<h2>Learning curves</h2>", svg if svg else "<p>no metrics logged yet</p>"]

    pictures = list(PICTURES)
    known = {name for name, _, _ in pictures}
    pictures += [(p.name, picture_title(p.stem), "") for p in sorted(media.glob("*.png")) if p.name not in known] if media.is_dir() else []
    for filename, title, caption in pictures:
        path = media / filename
        if path.is_file():
            parts.append(
                f"<h2>{html.escape(title)}</h2><figure>{_img(path, title)}<figcaption>{html.escape(caption)}</figcaption></figure>"
            )

    env = dict(s.get("environment") or {})
    env_rows: list[tuple[str, Any]] = [("device / strategy", s.get("strategy", "-"))]
    env_rows += [(k, v) for k, v in env.items() if k not in ("time", "pid")]
    for key in ("started", "ended"):
        if s.get(key):
            env_rows.append((key, dt.datetime.fromtimestamp(s[key]).isoformat(sep=" ", timespec="seconds")))
    env_rows.append(("wall time", format_duration(run.duration_s)))
    if s.get("wandb"):
        env_rows.append(("W&B run", s["wandb"].get("url") or f"{s['wandb'].get('mode')} {s['wandb'].get('dir')}"))
    parts += ["<h2>Environment</h2>", _table(env_rows)]
    config_text = (run.path / "config.yaml").read_text(encoding="utf-8")
    parts += ["<h2>Config</h2>", f"<pre>{html.escape(config_text)}</pre>"]
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(run.name)}: trainyard report</title><style>{CSS}</style></head>\n<body>\n{body}\n"
        f'<p class="sub">written by trainyard on {dt.datetime.now().isoformat(sep=" ", timespec="seconds")}</p>\n</body></html>\n'
    )


def write_report(run: Run, out: Path) -> None:
    text = build_report(run)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, text)
    except OSError as exc:
        raise TrainyardError(f"--out {out}: cannot write ({exc.strerror})") from None
