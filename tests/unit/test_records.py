"""vaelab.records: a run's metrics.json and its evaluations, one file per checkpoint."""

import json
from pathlib import Path

from vaelab.records import (
    evaluation_path,
    main_evaluation,
    read_evaluations,
    write_evaluation,
    write_summary,
)


def evaluated(step: int, nll: float) -> dict:
    return {"global_step": step, "metrics": {"test/nll_iw": nll}}


def test_each_checkpoint_has_its_own_record(tmp_path: Path) -> None:
    write_evaluation(tmp_path, tmp_path / "checkpoints" / "last.ckpt", evaluated(30, 95.0))
    write_evaluation(tmp_path, "elsewhere/epoch=1-step=20.ckpt", evaluated(20, 96.0))
    write_evaluation(
        tmp_path, tmp_path / "checkpoints" / "snapshot-epoch0001.ckpt", evaluated(10, 99.0)
    )
    found = read_evaluations(tmp_path)
    assert list(found) == ["snapshot-epoch0001", "epoch=1-step=20", "last"]  # by step
    assert evaluation_path(tmp_path, "a/b/last.ckpt") == tmp_path / "evaluations" / "last.json"
    # The run's best checkpoint speaks for it, though a later one was evaluated too.
    assert main_evaluation(tmp_path)["metrics"]["test/nll_iw"] == 96.0


def test_without_the_best_the_latest_speaks_and_without_any_none(tmp_path: Path) -> None:
    assert main_evaluation(tmp_path) is None
    write_evaluation(tmp_path, "last.ckpt", evaluated(30, 95.0))
    write_evaluation(tmp_path, "snapshot-epoch0001.ckpt", evaluated(10, 99.0))
    assert main_evaluation(tmp_path)["global_step"] == 30


def test_a_damaged_record_is_left_out(tmp_path: Path) -> None:
    write_evaluation(tmp_path, "last.ckpt", evaluated(30, 95.0))
    (tmp_path / "evaluations" / "epoch=0-step=1.json").write_text('{"global_st')
    (tmp_path / "evaluations" / "epoch=0-step=2.json").write_text('["not", "a record"]')
    assert list(read_evaluations(tmp_path)) == ["last"]
    assert main_evaluation(tmp_path)["global_step"] == 30


def test_records_are_written_whole_and_replace_the_old(tmp_path: Path) -> None:
    write_summary(tmp_path, {"status": "failed"})
    path = write_summary(tmp_path, {"status": "completed"})
    assert json.loads(path.read_text()) == {"status": "completed"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary left
