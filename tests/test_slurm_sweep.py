"""Sweeps on a real Slurm (scripts/local_slurm.sh starts one; .ci/run does so where apt exists):
started from another directory, a cancelled job (the others summarised, its log named, a re-run
resumes it), and a re-run that waits for a live job instead of submitting its variant twice."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_train import REPOSITORY_ROOT, write_run_config


def slurm_skip_reason():
    """None when a usable test Slurm runs here: the one scripts/local_slurm.sh starts (root, one node,
    tmp_path visible to the jobs), or any other when LOWLIGHT_SLURM_TESTS=1 says its nodes share /tmp."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no Slurm here (scripts/local_slurm.sh start, as root, runs one)"
    result = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0 or not any(s.strip("*~#") in ("idle", "mix", "alloc") for s in result.stdout.split()):
        return "Slurm is installed but not running (scripts/local_slurm.sh start)"
    config = Path("/etc/slurm/slurm.conf")
    local = config.exists() and "written by lowlight-qat scripts/local_slurm.sh" in config.read_text()
    if not (local or os.environ.get("LOWLIGHT_SLURM_TESTS") == "1"):
        return "a Slurm not started by scripts/local_slurm.sh (set LOWLIGHT_SLURM_TESTS=1 to use it)"
    return None


SKIP_REASON = slurm_skip_reason()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


def write_slurm_sweep(folder: Path, data_root: Path, learning_rates, **overrides) -> Path:
    settings = dict(schedule__epochs=3, schedule__iters_per_epoch=1, model__width=0.125, **overrides)
    base = write_run_config(folder, data_root, **settings)
    sweep = {"base": str(base), "grid": {"optim.lr": learning_rates}, "launcher": "slurm",
             "slurm": {"cpus_per_task": 1, "mem_gb": 1, "timeout_min": 15}}
    path = folder / "tiny_sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def start_sweep(sweep_path: Path, cwd: Path) -> subprocess.Popen:
    # Without PYTHONPATH: the jobs must find the project on their own.
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen([sys.executable, str(REPOSITORY_ROOT / "sweep.py"), "--config", str(sweep_path)],
                            cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(condition, what, seconds=600):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def record(results: Path, variant: str) -> dict:
    return json.loads((results / "slurm_jobs" / f"{variant}.json").read_text())


def job_state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def test_cancelled_job_leaves_the_others_summarised_and_a_rerun_resumes_it(synthetic_sid_root, tmp_path):
    elsewhere = tmp_path / "elsewhere"  # not the repository: the jobs must still import the project
    elsewhere.mkdir()
    # A relative results_dir: results go where the sweep was started, as the jobs must find them.
    sweep_path = write_slurm_sweep(tmp_path, synthetic_sid_root, [1e-3, 3e-3], output__results_dir="results")
    results = elsewhere / "results" / "tiny_sweep"

    sweep = start_sweep(sweep_path, elsewhere)
    wait_until(lambda: (results / "lr=0.003" / "checkpoints" / "latest_epoch0001.pth").exists() or sweep.poll() is not None,
               "the first epoch of variant lr=0.003")
    cancelled = record(results, "lr=0.003")
    subprocess.run(["scancel", cancelled["job_id"]], check=True)
    stdout, stderr = sweep.communicate(timeout=600)

    assert sweep.returncode == 2, stdout[-2000:] + stderr[-2000:]
    assert f"variant lr=0.003: job {cancelled['job_id']} CANCELLED; log: {cancelled['stderr']}" in stderr
    assert "error: 1 variant job(s) did not finish" in stderr
    assert [r["variant"] for r in csv.DictReader((results / "summary.csv").open())] == ["lr=0.001"]
    # The job got scancel's SIGTERM through submitit and stopped on a checkpoint.
    assert "stopped by SIGTERM; checkpoint" in Path(cancelled["stderr"]).read_text()
    assert not (results / "lr=0.003" / "checkpoints" / "latest_epoch0003.pth").exists()

    rerun = start_sweep(sweep_path, elsewhere)
    stdout, stderr = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, stdout[-2000:] + stderr[-2000:]
    assert sorted(r["variant"] for r in csv.DictReader((results / "summary.csv").open())) == ["lr=0.001", "lr=0.003"]
    resumed = record(results, "lr=0.003")
    assert resumed["job_id"] != cancelled["job_id"]
    assert "resuming from" in Path(resumed["stdout"]).read_text()
    assert "submitted 1 job(s)" in stdout


def test_rerun_waits_for_a_live_job_instead_of_submitting_its_variant_again(synthetic_sid_root, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("scontrol suspend needs a Slurm operator (root here)")
    sweep_path = write_slurm_sweep(tmp_path, synthetic_sid_root, [1e-3])
    results = tmp_path / "results" / "tiny_sweep"
    first = start_sweep(sweep_path, tmp_path)
    wait_until(lambda: (results / "slurm_jobs" / "lr=0.001.json").exists() or first.poll() is not None,
               "the job record")
    job_id = record(results, "lr=0.001")["job_id"]
    wait_until(lambda: job_state(job_id) == "RUNNING", f"job {job_id} to start")
    # Suspended, the job stays alive for as long as the test needs, whatever the machine's speed.
    subprocess.run(["scontrol", "suspend", job_id], check=True)
    first.send_signal(signal.SIGKILL)  # the sweep dies; its job lives on
    first.wait()

    rerun = start_sweep(sweep_path, tmp_path)
    waiting = []
    wait_until(lambda: waiting.append(rerun.stdout.readline()) or "waiting for it" in waiting[-1] or
               rerun.poll() is not None, "the re-run to find the live job")
    subprocess.run(["scontrol", "resume", job_id], check=True)
    stdout, stderr = rerun.communicate(timeout=600)
    stdout = "".join(waiting) + stdout
    assert rerun.returncode == 0, stdout[-2000:] + stderr[-2000:]
    assert f"variant lr=0.001: job {job_id} is still SUSPENDED; waiting for it instead of submitting again" in stdout
    assert "submitted" not in stdout
    assert record(results, "lr=0.001")["job_id"] == job_id
    assert [r["variant"] for r in csv.DictReader((results / "summary.csv").open())] == ["lr=0.001"]


def test_without_accounting_a_cancelled_job_is_reported_not_waited_for(synthetic_sid_root, tmp_path):
    # A PATH with every Slurm command but sacct: a cluster whose accounting is disabled.
    commands = tmp_path / "bin_without_sacct"
    commands.mkdir()
    for name in ("sbatch", "squeue", "sinfo", "scancel", "srun"):
        (commands / name).symlink_to(shutil.which(name))
    sweep_path = write_slurm_sweep(tmp_path, synthetic_sid_root, [1e-3])
    results = tmp_path / "results" / "tiny_sweep"
    environment = {**os.environ, "PATH": f"{commands}{os.pathsep}{Path(sys.executable).parent}"}
    environment.pop("PYTHONPATH", None)
    sweep = subprocess.Popen([sys.executable, str(REPOSITORY_ROOT / "sweep.py"), "--config", str(sweep_path)],
                             cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: (results / "slurm_jobs" / "lr=0.001.json").exists() or sweep.poll() is not None,
               "the job record")
    cancelled = record(results, "lr=0.001")
    subprocess.run(["scancel", cancelled["job_id"]], check=True)
    stdout, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 2, stdout[-2000:] + stderr[-2000:]
    assert (f"variant lr=0.001: job {cancelled['job_id']} ended without a result (state unknown: no Slurm "
            f"accounting); log: {cancelled['stderr']}") in stderr


def test_gpu_request_on_a_partition_without_gpus_is_one_line_naming_the_key(synthetic_sid_root, tmp_path):
    sweep_path = write_slurm_sweep(tmp_path, synthetic_sid_root, [1e-3])
    if "gpu" in subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True).stdout:
        pytest.skip("this cluster has GPUs")
    result = subprocess.run([sys.executable, str(REPOSITORY_ROOT / "sweep.py"), "--config", str(sweep_path),
                             "--set", "slurm.gpus_per_node=1"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: slurm.gpus_per_node: 1, but partition (default) has no GPUs (sinfo %G: (null)); "
        "set slurm.gpus_per_node: 0 for CPU jobs")
    assert not (tmp_path / "results" / "tiny_sweep" / "slurm_jobs").exists()


def test_jobs_cancelled_before_they_started_are_reported_with_their_state(synthetic_sid_root, tmp_path):
    sweep_path = write_slurm_sweep(tmp_path, synthetic_sid_root, [1e-3, 3e-3])
    results = tmp_path / "results" / "tiny_sweep"
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Held jobs stay queued until the test cancels them (the array's tasks never get records of their own).
    sweep = subprocess.Popen([sys.executable, str(REPOSITORY_ROOT / "sweep.py"), "--config", str(sweep_path),
                              "--set", "slurm.additional_parameters.hold=true"],
                             cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: (results / "slurm_jobs" / "lr=0.003.json").exists() or sweep.poll() is not None,
               "the job records")
    held = [record(results, variant) for variant in ("lr=0.001", "lr=0.003")]
    subprocess.run(["scancel", held[0]["job_id"].split("_")[0]], check=True)
    stdout, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 2, stdout[-2000:] + stderr[-2000:]
    for variant, job in zip(("lr=0.001", "lr=0.003"), held):
        assert f"variant {variant}: job {job['job_id']} CANCELLED; log: {job['stderr']}" in stderr
