"""Sweep jobs through submitit without a cluster (its local executor): a failed variant does not stop
the others; the summary holds every variant that finished, then each failure is one line naming its
log, and the sweep ends with an error."""
import csv
import os

import pytest

from sweeps.slurm import JobsFailed
from test_sweep import write_sweep
from test_train import REPOSITORY_ROOT


def test_failed_job_is_listed_with_its_log_after_the_summary_of_the_others(synthetic_sid_root, tmp_path,
                                                                          monkeypatch, capsys):
    submitit = pytest.importorskip("submitit")
    import sweep as sweep_module
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPOSITORY_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # lr=1e30 blows the weights up: the loss stops being finite within the first steps.
    sweep = sweep_module.load_sweep(write_sweep(tmp_path, synthetic_sid_root))
    sweep.grid = {"optim.lr": [1e-3, 1e30]}
    executor = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    executor.update_parameters(timeout_min=20)
    with pytest.raises(JobsFailed, match=r"1 variant job\(s\) did not finish"):
        sweep_module.run_sweep(sweep, executor=executor)
    results = tmp_path / "results" / "tiny_sweep"
    assert [r["variant"] for r in csv.DictReader((results / "summary.csv").open())] == ["lr=0.001"]
    failures = [line for line in capsys.readouterr().err.splitlines() if line.startswith("variant ")]
    assert len(failures) == 1
    assert failures[0].startswith("variant lr=1e+30: job ")
    assert "FloatingPointError: loss is not finite" in failures[0]
    log = failures[0].split("; log: ")[1].split(" (stdout: ")[0]
    assert "loss is not finite" in open(log).read()
