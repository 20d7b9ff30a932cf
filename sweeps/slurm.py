"""A sweep's variants as Slurm jobs (through submitit): submit, record, wait on every one, report.

- Jobs find the project from anywhere: the job script puts the repository on PYTHONPATH (the job
  unpickles its config, which names the project's packages) and runs in the directory the sweep
  started from, where the config's relative paths point.
- Every submitted variant gets a job record, results/<sweep>/slurm_jobs/<variant>.json, written
  atomically. A re-run that finds a record whose job is still queued or running waits for that job
  instead of submitting the variant again, so two jobs never write one run folder. (The record is
  kept outside the variant's run folder because a fresh run replaces that folder.)
- Job state comes from squeue (alive: queued, running, suspended, completing) and, once a job has
  left the queue, from its submitit result file, then sacct. Without accounting (no sacct, or
  accounting disabled) a job that left the queue with no result file counts as finished when its
  variant's summary.json holds the test report, else as ended in an unknown state; nothing waits
  forever. If squeue itself keeps failing, the wait stops with one line after STATE_TIMEOUT_SECONDS.
- A failed job does not stop the others: all are waited for, and the failures come back as one line
  each (state and log files), for the caller to report after the summary of what finished.
"""
import getpass
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from harness import run_lock
from harness.config import ConfigError
from helpers.files import write_text_atomic

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
# Queued or running in squeue's words: such a job may still write its run folder.
ALIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED",
                "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}
STATE_TIMEOUT_SECONDS = 300
ACCOUNTING_LAG_SECONDS = 30
RESULT_FILE_GRACE_SECONDS = 60  # a shared filesystem may show a job's result file after squeue forgets the job
LONGEST_POLL_SECONDS = 30


class JobsFailed(ChildProcessError):
    """Some variants' jobs failed (an OSError, so entry points print it as one line and exit 2)."""


# ----------------------------------------------------------------------------- submission

def make_executor(settings, folder: Path, name: str):
    """A submitit Slurm executor for `settings` (the sweep's `slurm:` section)."""
    import submitit
    if shutil.which("sbatch") is None:
        raise ConfigError("launcher slurm: sbatch not found on this machine; run the sweep on a Slurm login node "
                          "or use --launcher local")
    if settings.gpus_per_node:
        check_partition_has_gpus(settings.partition, settings.gpus_per_node)
    executor = submitit.AutoExecutor(folder=str(Path(folder).resolve()), cluster="slurm")
    parameters = {"timeout_min": settings.timeout_min, "cpus_per_task": settings.cpus_per_task,
                  "mem_gb": settings.mem_gb, "slurm_array_parallelism": settings.array_parallelism, "name": name,
                  # The job's Python imports this repository's packages wherever the sweep was started.
                  "slurm_setup": [f"export PYTHONPATH={shlex.quote(str(REPOSITORY_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"],
                  # Relative paths in the configs (results/, data) mean the sweep's directory.
                  "slurm_additional_parameters": {"chdir": os.getcwd(), **settings.additional_parameters}}
    if settings.gpus_per_node:  # a CPU partition refuses any GPU request, even of zero
        parameters["gpus_per_node"] = settings.gpus_per_node
    if settings.partition:
        parameters["slurm_partition"] = settings.partition
    executor.update_parameters(**parameters)
    return executor


def check_partition_has_gpus(partition, gpus_per_node: int) -> None:
    """sbatch's own refusal is `Invalid generic resource (gres) specification`; say which key instead."""
    if shutil.which("sinfo") is None:
        return
    command = ["sinfo", "-h", "-o", "%G"] + (["-p", partition] if partition else [])
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    resources = {line.strip() for line in result.stdout.splitlines() if line.strip()}
    if result.returncode == 0 and resources and not any("gpu" in r for r in resources):
        raise ConfigError(f"slurm.gpus_per_node: {gpus_per_node}, but partition {partition or '(default)'} has no "
                          f"GPUs (sinfo %G: {', '.join(sorted(resources))}); set slurm.gpus_per_node: 0 for CPU jobs")


def record_path(results_dir: Path, variant: str) -> Path:
    return Path(results_dir) / "slurm_jobs" / f"{variant}.json"


def write_record(results_dir: Path, variant: str, job) -> None:
    record = {"variant": variant, "job_id": str(job.job_id), "folder": str(job.paths.folder),
              "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr), "submitted": time.time()}
    path = record_path(results_dir, variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=2))


def read_record(results_dir: Path, variant: str):
    path = record_path(results_dir, variant)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a damaged record cannot name a live job: the variant is submitted again


def submit(executor, function, configs, results_dir: Path, skipped=None) -> list:
    """Submit `function(config)` for each unfinished config (no summary.json), except variants whose
    recorded job is still alive: those are waited for, not submitted twice (even when a summary.json
    exists: the job may still be writing the test report). A variant whose run folder another process
    holds (harness/run_lock.py) is not submitted: one line for it goes to `skipped`.
    Returns [(variant, job, summary.json path)]."""
    import submitit
    on_slurm = getattr(executor, "cluster", None) == "slurm" or isinstance(executor, submitit.SlurmExecutor)
    records = {c.experiment: read_record(results_dir, c.experiment) if on_slurm else None for c in configs}
    recorded_ids = [r["job_id"] for r in records.values() if r]
    try:
        alive = alive_jobs(recorded_ids) if recorded_ids else {}
    except (subprocess.SubprocessError, OSError) as error:
        raise JobsFailed(f"cannot read job states from squeue ({_last_line(error)}), so the jobs recorded in "
                         f"{record_path(results_dir, '*')} may still run; nothing was submitted") from None
    watched, to_submit = [], []
    skipped = [] if skipped is None else skipped
    for config in configs:
        record = records[config.experiment]
        if record and record["job_id"] in alive:
            print(f"variant {config.experiment}: job {record['job_id']} is still {alive[record['job_id']]}; "
                  "waiting for it instead of submitting again")
            watched.append((config.experiment, submitit.SlurmJob(folder=record["folder"], job_id=record["job_id"]),
                            config.run_dir / "summary.json"))
        elif not (config.run_dir / "summary.json").exists():
            busy = run_lock.busy_reason(config.run_dir)
            if busy:  # a hand-started run (or another sweep) owns the folder: its job would be refused
                print(f"variant {config.experiment}: not submitted: {busy}", file=sys.stderr)
                skipped.append(f"variant {config.experiment}: not submitted: {busy}")
                continue
            to_submit.append(config)
    if to_submit:
        try:
            jobs = executor.map_array(function, to_submit)
        except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as error:
            lines = [line for line in str(error).splitlines() if "error" in line.lower()] or [str(error)]
            raise ConfigError(f"sbatch refused the sweep's jobs ({lines[-1].strip()}); check the sweep's slurm: "
                              "partition, cpus_per_task, mem_gb, gpus_per_node, timeout_min") from None
        for config, job in zip(to_submit, jobs):
            if on_slurm:
                write_record(results_dir, config.experiment, job)
            watched.append((config.experiment, job, config.run_dir / "summary.json"))
        print(f"submitted {len(jobs)} job(s): {', '.join(str(j.job_id) for j in jobs)}")
    return watched


# ----------------------------------------------------------------------------- job state

def alive_jobs(job_ids) -> dict:
    """{job id: state} for the given jobs that squeue lists as queued or running. Raises
    subprocess.CalledProcessError / OSError when squeue cannot answer."""
    wanted = {str(j) for j in job_ids}
    output = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"], capture_output=True,
                            text=True, timeout=120, check=True).stdout
    states = {}
    for line in output.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id in wanted and state in ALIVE_STATES:
            states[job_id] = state
    return states


def final_states(job_ids):
    """{job id: state} from Slurm's accounting, or None when the cluster has none (no sacct, or
    accounting disabled)."""
    if not job_ids or shutil.which("sacct") is None:
        return None
    job_ids = [str(j) for j in job_ids]
    # Array tasks that never started have no record of their own, only their array's "123_[0-3]".
    queried = sorted(set(job_ids) | {j.split("_")[0] for j in job_ids})
    result = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(queried)],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        return None
    states, never_started = {}, {}
    for line in result.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if not state:
            continue
        state = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
        if "_[" in job_id:
            never_started[job_id.split("_")[0]] = state
        else:
            states[job_id] = state
    for job_id in job_ids:
        if job_id not in states and job_id.split("_")[0] in never_started:
            states[job_id] = never_started[job_id.split("_")[0]]
    return states


def wait_all(watched) -> list[str]:
    """Wait until no watched job is queued or running; returns one line per failed variant."""
    import submitit
    remaining = {str(job.job_id): entry for entry in watched for job in [entry[1]]}
    slurm_jobs = [j for j in remaining if isinstance(remaining[j][1], submitit.SlurmJob)]
    progress = tqdm(total=len(remaining), desc="jobs finished", dynamic_ncols=True)
    poll, last_read = 1.0, time.time()
    finished = []
    while remaining:
        try:
            alive = alive_jobs([j for j in slurm_jobs if j in remaining]) if slurm_jobs else {}
            last_read = time.time()
        except (subprocess.SubprocessError, OSError) as error:
            if time.time() - last_read > STATE_TIMEOUT_SECONDS:
                progress.close()
                raise JobsFailed(f"cannot read job states from squeue for {STATE_TIMEOUT_SECONDS} s "
                                 f"({_last_line(error)}); jobs {', '.join(remaining)} may still "
                                 "run: re-run the sweep later to wait for them") from None
            alive = None
        if alive is not None:
            for job_id in list(remaining):
                job = remaining[job_id][1]
                done = job.paths.result_pickle.exists() or (job_id not in alive if job_id in slurm_jobs
                                                            else job.done())
                if done:
                    finished.append(remaining.pop(job_id))
                    progress.update(1)
        if remaining:
            time.sleep(poll)
            poll = min(poll * 1.5, LONGEST_POLL_SECONDS)
    progress.close()
    return failures(finished)


def failures(finished) -> list[str]:
    """One line per variant whose job did not return successfully, naming its log files."""
    without_result = [entry for entry in finished if not entry[1].paths.result_pickle.exists()]
    job_ids = [str(job.job_id) for _, job, _ in without_result]
    states = final_states(job_ids)
    deadline = time.time() + ACCOUNTING_LAG_SECONDS
    while states is not None and not set(job_ids) <= set(states) and time.time() < deadline:
        time.sleep(2)  # slurmctld hands finished jobs to slurmdbd a little later
        states = final_states(job_ids)
    accounting = states is not None
    states = states or {}
    # A job that completed (by sacct, or by its summary when there is no accounting) may have a result
    # file still on its way.
    waiting_for = [job for _, job, summary_path in without_result
                   if states.get(str(job.job_id)) == "COMPLETED"
                   or (str(job.job_id) not in states and _has_test_report(summary_path))]
    deadline = time.time() + RESULT_FILE_GRACE_SECONDS
    while waiting_for and time.time() < deadline:
        time.sleep(2)
        waiting_for = [job for job in waiting_for if not job.paths.result_pickle.exists()]
    lines = []
    for variant, job, summary_path in finished:
        if job.paths.result_pickle.exists():
            error = job.exception()
            if error is None:
                continue
            state = f"failed ({_last_line(error)})"
        elif str(job.job_id) in states:
            state = states[str(job.job_id)]
            if state == "COMPLETED":
                state = "COMPLETED but left no result file"
        elif _has_test_report(summary_path):
            continue  # no accounting, no result file, but the run got to its end
        else:
            state = ("ended without a result (no state in sacct)" if accounting else
                     "ended without a result (state unknown: no Slurm accounting)")
        lines.append(_failure_line(variant, job, state))
    return lines


def _has_test_report(summary_path: Path) -> bool:
    """harness.training.finish writes summary.json twice: the test metrics come with the second, last write."""
    try:
        return "test_psnr" in json.loads(Path(summary_path).read_text())
    except (OSError, ValueError):
        return False


def _failure_line(variant, job, state) -> str:
    return f"variant {variant}: job {job.job_id} {state}; log: {job.paths.stderr} (stdout: {job.paths.stdout})"


def _last_line(error) -> str:
    """The error a traceback ends with (submitit's job errors wrap the job's traceback in log paths)."""
    lines = [line.strip() for line in ((getattr(error, "stderr", None) or "") + "\n" + str(error)).splitlines()
             if line.strip()]
    raised = [line for line in lines if re.match(r"[\w.]+(Error|Exception|Interrupt|Exit)\b", line)]
    return (raised or lines or [type(error).__name__])[-1]


def run_jobs(executor, function, configs, results_dir: Path) -> list[str]:
    """Submit (or keep waiting for) each unfinished config's job and wait for all; returns the
    failure lines."""
    skipped = []
    watched = submit(executor, function, configs, results_dir, skipped)
    return (wait_all(watched) if watched else []) + skipped


def raise_if_failed(lines) -> None:
    """After the summary: each failed variant on its own line, then one error line (exit status 2)."""
    if lines:
        for line in lines:
            print(line, file=sys.stderr)
        raise JobsFailed(f"{len(lines)} variant job(s) did not finish (listed above); run the sweep again to "
                         "resume them")
