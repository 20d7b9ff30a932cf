"""What tells a resume from a restart: training is deterministic, so a `--resume` that silently starts
over would end with the same weights. A real resume names the epoch it continues from and leaves the
metric rows and checkpoints of the epochs before it exactly as they were (a restart rewrites them:
their `seconds` column and file times change)."""
import csv
import re
from pathlib import Path

from checkpoints.training import epoch_of


def resume_point(run_dir) -> dict:
    """Taken just before a `--resume`: the epoch it must continue from and what it must leave alone."""
    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    epoch = max(epoch_of(path) for path in checkpoints.glob("latest_epoch*.pth"))
    return {"epoch": epoch, "rows": _rows_up_to(run_dir, epoch),
            "checkpoints": {path.name: (path.read_bytes(), path.stat().st_mtime_ns)
                            for path in checkpoints.glob("best_epoch*.pth") if epoch_of(path) <= epoch}}


def _rows_up_to(run_dir: Path, epoch: int) -> list[dict]:
    with (run_dir / "metrics.csv").open(newline="") as stream:
        return [row for row in csv.DictReader(stream) if int(row["epoch"]) <= epoch]


def assert_resumed(stdout: str, run_dir, point: dict) -> None:
    run_dir = Path(run_dir)
    epoch = point["epoch"]
    assert re.search(rf"resuming from \S*latest_epoch{epoch:04d}\.pth \(epoch {epoch}\)", stdout), \
        f"no 'resuming from ... (epoch {epoch})' in:\n{stdout[-3000:]}"
    assert point["rows"] and point["checkpoints"], "nothing before the resume point to compare"
    assert _rows_up_to(run_dir, epoch) == point["rows"], "metric rows of epochs before the resume point changed"
    for name, (data, mtime) in point["checkpoints"].items():
        path = run_dir / "checkpoints" / name
        assert path.is_file() and path.stat().st_mtime_ns == mtime and path.read_bytes() == data, \
            f"checkpoint {name} of an epoch before the resume point was rewritten or removed"
