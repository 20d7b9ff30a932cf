"""One process at a time writes a run folder: two trainings of one experiment would otherwise leave
one run's best checkpoint beside the other's metrics.csv and config.yaml.

`results/<experiment>` is owned through `results/<experiment>.lock`, a small JSON record of the holder
(host, PID, start time, command) that anyone can read. Two mechanisms guard it:
  * an OS lock (filelock: flock on a file in this host's temporary folder, named by the run folder's
    absolute path) held for the whole run, so two processes on one host can never both pass the
    check, and a killed holder's lock is freed by the kernel. It lives outside the results folder so
    that a refused or checked run leaves nothing there;
  * the record itself, which the holder touches every HEARTBEAT_SECONDS, for hosts that share the
    results folder over a network filesystem (Slurm nodes), where flock may not reach.
The record is removed on every exit of the `held` block (return, exception, Ctrl-C, SIGTERM), with any
folder the lock itself created. A results folder that cannot be written gets no record (nothing can
be written into it by anyone), and the run's own checks then name the folder.

A record left behind by a killed process is stale:
  * same host, its PID no longer runs: reported in one line and taken over (nothing else can be
    writing, and the run's own checkpoints let `--resume` continue);
  * another host, not refreshed for STALE_AFTER_SECONDS: reported and refused, because a suspended
    job looks the same; `--take-over` takes it over once the user knows that host's process is gone.
A holder on another host is taken over only with `--take-over` (this host cannot see its process); a
running holder on this host never is. Every refusal is one line naming the holder and how to wait.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from helpers.files import write_text_atomic

HEARTBEAT_SECONDS = 60
STALE_AFTER_SECONDS = 15 * 60  # 15 heartbeats missed: the holder on another host is taken for dead
TAKE_OVER_FLAG = "--take-over"


class RunLocked(OSError):
    """The run folder is held by another process (an OSError: entry points print it as one line, exit 2)."""


def lock_path(run_dir) -> Path:
    run_dir = Path(run_dir)
    return run_dir.with_name(f"{run_dir.name}.lock")


def _os_lock_path(run_dir) -> Path:
    folder = Path(tempfile.gettempdir()) / f"lowlight-qat-locks-{getattr(os, 'getuid', lambda: 'user')()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    key = hashlib.sha256(str(Path(run_dir).absolute()).encode()).hexdigest()[:32]
    return folder / f"{key}.lock"


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and its ancestors that do not exist yet, innermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def read_holder(run_dir):
    """The holder record, or None when there is none (or it is unreadable: then nobody can be named)."""
    try:
        record = json.loads(lock_path(run_dir).read_text())
        record["heartbeat"] = lock_path(run_dir).stat().st_mtime
        return record if isinstance(record, dict) else None
    except (OSError, ValueError, TypeError):
        return None


def _pid_running(pid, since: float = 0.0) -> bool:
    """Whether `pid` runs the process that started at `since` (a PID reused by a later process does not)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # someone else's live process (or a record we cannot read): treat as alive
    started = _process_start_time(int(pid))
    return started is None or started <= since + 1.0


def _process_start_time(pid: int):
    """Seconds since the epoch at which `pid` started (Linux /proc), or None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _describe(record) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.get("started", 0)))
    return f"{record.get('command', '?')} (host {record.get('host', '?')}, pid {record.get('pid', '?')}, started {started})"


def _state(record) -> str:
    """'alive', 'dead' (same host, PID gone) or 'silent' (another host, no heartbeat for too long)."""
    if record.get("host") == socket.gethostname():
        return "alive" if _pid_running(record.get("pid"), record.get("started", 0.0)) else "dead"
    return "silent" if time.time() - record.get("heartbeat", 0) > STALE_AFTER_SECONDS else "alive"


def busy_reason(run_dir):
    """One line naming the live holder of `run_dir`, or None when a new run could take it."""
    record = read_holder(run_dir)
    if record is None or record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
        return None
    if _state(record) == "alive":
        return _refusal(run_dir, record)
    return None


def _refusal(run_dir, record) -> str:
    if record.get("host") == socket.gethostname():
        # Same host: a gone process is detected by itself, so waiting or stopping it are the choices.
        how = (f"wait for it to end (tail --pid={record.get('pid')} -f /dev/null) or stop it "
               f"(kill {record.get('pid')}), then run again")
    else:
        how = (f"wait for it to end on {record.get('host')}, or if that process is gone run again with "
               f"{TAKE_OVER_FLAG}")
    return f"{run_dir} is in use by {_describe(record)}; {how} (lock: {lock_path(run_dir)})"


class _Heartbeat(threading.Thread):
    def __init__(self, path: Path):
        super().__init__(daemon=True, name="run-lock-heartbeat")
        self.path, self.stopped = path, threading.Event()

    def run(self):
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                os.utime(self.path)


def _terminate_as_exit(signum, frame):
    raise SystemExit(128 + signum)


_held: dict[Path, int] = {}  # run folders this process holds -> nesting depth (a sweep runs train.run)


@contextlib.contextmanager
def held(run_dir, command: str, take_over: bool = False):
    """Own `run_dir` for the block, or raise RunLocked naming the holder. Nothing in the folder is
    touched here; the folder need not exist yet."""
    import filelock
    run_dir = Path(run_dir).absolute()
    if run_dir in _held:  # this process already owns it (sweep -> train.run)
        _held[run_dir] += 1
        try:
            yield
        finally:
            _held[run_dir] -= 1
        return
    record_file = lock_path(run_dir)
    os_lock = filelock.FileLock(str(_os_lock_path(run_dir)), timeout=0)
    try:
        os_lock.acquire()
    except filelock.Timeout:
        record = read_holder(run_dir) or {"command": "another process", "host": socket.gethostname(), "pid": "?"}
        raise RunLocked(_refusal(run_dir, record)) from None
    created = _missing_folders(run_dir.parent)
    try:
        _take(run_dir, take_over)
        try:
            write_text_atomic(record_file, json.dumps({
                "host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "command": command,
                "argv": sys.argv}, indent=2))
        except OSError:
            pass  # an unwritable results folder: no second writer can use it either; the run's checks name it
        heartbeat = _Heartbeat(record_file)
        heartbeat.start()
        # SIGTERM's default ends the process without unwinding, which would leave the record behind.
        previous = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            previous = signal.signal(signal.SIGTERM, _terminate_as_exit)
        _held[run_dir] = 1
        try:
            yield
        finally:
            del _held[run_dir]
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            heartbeat.stopped.set()
            left = read_holder(run_dir)
            if left is not None and left.get("pid") == os.getpid() and left.get("host") == socket.gethostname():
                record_file.unlink(missing_ok=True)  # not a record of someone who took over (--take-over)
    finally:
        for folder in created:  # folders only the lock made (a run refused by its checks leaves none)
            with contextlib.suppress(OSError):
                folder.rmdir()
        os_lock.release()


def _take(run_dir: Path, take_over: bool) -> None:
    """With the OS lock held: decide about a record that another process left."""
    record = read_holder(run_dir)
    if record is None:
        return
    state = _state(record)
    if state == "dead":
        print(f"warning: stale lock {lock_path(run_dir)}: {_describe(record)} no longer runs on this host; "
              "taking it over", file=sys.stderr)
        return
    if take_over and record.get("host") != socket.gethostname():
        print(f"warning: {TAKE_OVER_FLAG}: taking over {lock_path(run_dir)} from {_describe(record)}", file=sys.stderr)
        return
    if state == "silent":
        silent = (time.time() - record.get("heartbeat", 0)) / 60
        raise RunLocked(f"{run_dir}: lock {lock_path(run_dir)} of {_describe(record)} looks stale (not refreshed for "
                        f"{silent:.0f} min, limit {STALE_AFTER_SECONDS // 60} min); if that process is gone run again "
                        f"with {TAKE_OVER_FLAG}")
    if take_over:  # same host, PID alive: taking over would mean two writers
        raise RunLocked(f"{TAKE_OVER_FLAG}: {run_dir} is held by {_describe(record)}, which still runs on this host; "
                        f"stop it first (kill {record.get('pid')})")
    raise RunLocked(_refusal(run_dir, record))
