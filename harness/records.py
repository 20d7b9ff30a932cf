"""Per-epoch metrics of a run: `metrics.csv` for programs, `metrics.txt` for people, TensorBoard
scalars for curves. Both files are rewritten atomically each epoch, so a kill leaves either the
previous or the new version, and resume trims rows past the checkpoint (no duplicates, no gaps)."""
import math
from pathlib import Path

from helpers.files import read_csv, write_csv_atomic, write_text_atomic


def _format(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4g}" if abs(value) < 1e-2 and value != 0 else f"{value:.4f}"
    return "-" if value in (None, "") else str(value)


def format_table(rows: list[dict], columns: list[str]) -> str:
    cells = [columns] + [[_format(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(text.rjust(width) for text, width in zip(line, widths)) for line in cells) + "\n"


class MetricsLog:
    def __init__(self, run_dir: Path, tensorboard: bool, resume_epoch: int | None = None):
        self.csv_path = Path(run_dir) / "metrics.csv"
        self.text_path = Path(run_dir) / "metrics.txt"
        self.rows = []
        if resume_epoch is not None:
            self.rows = [dict(row) for row in read_csv(self.csv_path) if int(row["epoch"]) <= resume_epoch]
            self._write()
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to load
            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=(resume_epoch or 0) + 1)

    def append(self, row: dict) -> None:
        self.rows.append(row)
        self._write()
        if self.writer:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)) and not math.isnan(value):
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()

    def _write(self) -> None:
        columns = list(dict.fromkeys(key for row in self.rows for key in row)) or ["epoch"]
        write_csv_atomic(self.csv_path, self.rows, columns)
        write_text_atomic(self.text_path, format_table(self.rows, columns))

    def close(self) -> None:
        if self.writer:
            self.writer.close()
