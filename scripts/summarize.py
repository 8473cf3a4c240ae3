"""Summarize a sweep: one row per run, sorted by val/loss, with a plot per swept parameter.

    python scripts/summarize.py outputs/multirun/2026-11-25/10-00-00

Reads each run's metrics.json (written by train.py, also for runs that failed), the
evaluation of its best checkpoint by scripts/evaluate.py if there is one (else of its latest
evaluated checkpoint) and .hydra/overrides.yaml; a run that left no metrics.json (killed, or
still running) is a failed row too. When the sweep varies `seed`, a second table gives each
other setting's mean and standard deviation over seeds. Writes summary.csv, summary.md and
summary.png into the sweep folder.
"""

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from vaelab.records import main_evaluation  # noqa: E402

METRICS = ["best_val_loss", "test/loss", "test/recon", "test/kl", "epochs", "wall_seconds"]
# From scripts/evaluate.py, when it has been run on a job: its own test/ figures.
EVALUATED = ["test/nll_iw", "test/nll_iw_se", "test/active_units"]


def read_run(run_dir: Path) -> dict:
    """One row: status, overrides as a dict, the final metrics; a reason if it failed."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    row = {"run": run_dir.name, "params": dict(o.split("=", 1) for o in overrides if "=" in o)}
    evaluated = (main_evaluation(run_dir) or {}).get("metrics", {})
    row |= {k: v for k, v in evaluated.items() if k in EVALUATED}  # shown even if training failed
    summary_file = run_dir / "metrics.json"
    if not summary_file.exists():
        reason = "no metrics.json, no training summary: killed, or still running"
        return {**row, "status": "failed", "reason": reason}
    try:
        summary = json.loads(summary_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:  # e.g. cut short by a full disk
        reason = f"{summary_file} is not readable JSON ({err}); run the job again"
        return {**row, "status": "failed", "reason": reason}
    if not isinstance(summary, dict):
        reason = f"{summary_file} holds no summary; run the job again"
        return {**row, "status": "failed", "reason": reason}
    if "status" in summary:
        row |= {"status": summary["status"], "reason": summary.get("reason", "")}
    else:  # not train.py's
        row |= {"status": "failed", "reason": "no training summary: killed, or still running"}
    row |= {key: summary[key] for key in ("epochs", "wall_seconds") if key in summary}
    row["best_val_loss"] = summary.get("best_val_loss")
    row |= {k: v for k, v in summary.get("metrics", {}).items() if k.startswith("test/")}
    return row


def swept(rows: list[dict]) -> list[str]:
    """The parameters whose values differ between runs."""
    keys = sorted({key for row in rows for key in row["params"]})
    return [k for k in keys if len({row["params"].get(k) for row in rows}) > 1]


def sort_key(row: dict) -> tuple[bool, float]:
    value = row.get("best_val_loss")
    bad = row["status"] != "completed" or value is None or math.isnan(value)
    return bad, value if not bad else 0.0


def as_number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def over_seeds(rows: list[dict], params: list[str], metrics: list[str]) -> list[list[str]]:
    """One line per setting of the swept parameters other than seed: how many seeds completed,
    and each metric's mean (sample standard deviation) over them."""
    others = [p for p in params if p != "seed"]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if not sort_key(row)[0]:  # completed
            groups.setdefault(tuple(row["params"].get(p, "") for p in others), []).append(row)
    lines = []
    for setting, group in groups.items():
        cells = [*setting, str(len(group))]
        for metric in metrics:
            values = [row[metric] for row in group if isinstance(row.get(metric), int | float)]
            if not values:
                cells.append("")
                continue
            spread = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(f"{statistics.mean(values):.2f} ({spread:.2f})")
        lines.append(cells)
    return [[*others, "seeds", *metrics], *lines]


def markdown_table(lines: list[list[str]]) -> list[str]:
    header, *body = lines
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(line) + " |" for line in body
    ]


def print_table(lines: list[list[str]]) -> None:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def plot(rows: list[dict], params: list[str], path: Path) -> None:
    """Best val/loss against each swept parameter, for the runs that completed."""
    done = [row for row in rows if not sort_key(row)[0]]
    params = params or ["run"]
    fig, _ = plt.subplots(1, len(params), figsize=(4.5 * len(params), 3.8), squeeze=False)
    for ax, param in zip(fig.axes, params, strict=True):
        values = [as_number(row["params"].get(param, row["run"])) for row in done]
        if not all(isinstance(v, float) for v in values):
            values = [str(v) for v in values]
        points = sorted(zip(values, (row["best_val_loss"] for row in done), strict=True))
        ax.plot([x for x, _ in points], [y for _, y in points], "o-")
        if points and isinstance(points[0][0], float) and points[0][0] > 0:
            if points[-1][0] / points[0][0] >= 100:
                ax.set_xscale("log")
        ax.set_xlabel(param)
        ax.set_ylabel("best val/loss (nats)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{path.parent.name}: {len(done)} of {len(rows)} runs completed", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    sweep_dir = parser.parse_args().sweep_dir
    if not sweep_dir.is_dir():
        example = "outputs/multirun/2026-11-25/10-00-00"
        raise SystemExit(f"Error: {sweep_dir} is not a folder; give a sweep's, e.g. {example}")
    if (sweep_dir / ".hydra").is_dir():
        raise SystemExit(f"Error: {sweep_dir} is one run's folder; give the folder of its runs")
    runs = sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
    if not runs:
        raise SystemExit(f"Error: no runs (folders with .hydra/) in {sweep_dir}")
    rows = sorted((read_run(run) for run in runs), key=sort_key)
    params = swept(rows)
    metrics = METRICS + [m for m in EVALUATED if any(m in row for row in rows)]
    columns = ["run", "status", *params, *metrics, "reason"]
    table = [
        [row["params"].get(c, "") if c in params else row.get(c, "") for c in columns]
        for row in rows
    ]
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in line] for line in table]

    with open(sweep_dir / "summary.csv", "w", newline="") as file:
        csv.writer(file).writerows([columns, *table])
    markdown = markdown_table([columns, *cells])
    print_table([columns, *cells])
    if "seed" in params:  # the mean and spread over seeds of each other setting
        seeds = over_seeds(rows, params, [m for m in metrics if m != "test/nll_iw_se"])
        markdown += ["", "Mean (standard deviation) over seeds:", "", *markdown_table(seeds)]
        print("\nMean (standard deviation) over seeds:")
        print_table(seeds)
    (sweep_dir / "summary.md").write_text("\n".join(markdown) + "\n")
    plot(rows, params, sweep_dir / "summary.png")
    print(f"\nWrote summary.csv, summary.md and summary.png in {sweep_dir}")


if __name__ == "__main__":
    main()
