"""The records of a run in its folder: metrics.json from training (also when it fails) and
evaluations/<checkpoint>.json from each evaluation of one of its checkpoints."""

import json
import os
from pathlib import Path
from typing import Any

SUMMARY = "metrics.json"
EVALUATIONS = "evaluations"


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write `record` whole or not at all: to a temporary file beside `path`, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    partial.write_text(json.dumps(record, indent=2))
    os.replace(partial, path)


def write_summary(run_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """The training run's summary, `run_dir`/metrics.json: status, overrides, final metrics."""
    path = Path(run_dir) / SUMMARY
    write_json(path, record)
    return path


def evaluation_path(run_dir: str | os.PathLike, checkpoint: str | os.PathLike) -> Path:
    """Where the evaluation of `checkpoint` is kept: `run_dir`/evaluations/<its name>.json."""
    return Path(run_dir) / EVALUATIONS / f"{Path(checkpoint).stem}.json"


def write_evaluation(
    run_dir: str | os.PathLike, checkpoint: str | os.PathLike, record: dict[str, Any]
) -> Path:
    """Keep the evaluation of one checkpoint of the run; that of another stays as it was."""
    path = evaluation_path(run_dir, checkpoint)
    write_json(path, record)
    return path


def read_evaluations(run_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The run's evaluations by checkpoint name, in the order of their checkpoints' steps; a
    file that is not a readable evaluation is left out."""
    found = {}
    for path in sorted((Path(run_dir) / EVALUATIONS).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):  # cut short, or not text
            continue
        if isinstance(record, dict) and isinstance(record.get("metrics"), dict):
            found[path.stem] = record
    return dict(sorted(found.items(), key=lambda item: item[1].get("global_step") or 0))


def main_evaluation(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The evaluation that speaks for the run: its best checkpoint's (epoch*.ckpt, the one
    `run_dir=` evaluates), else that of its latest checkpoint; None if none was evaluated."""
    evaluations = read_evaluations(run_dir)
    best = [record for name, record in evaluations.items() if name.startswith("epoch")]
    return (best or list(evaluations.values()) or [None])[-1]
