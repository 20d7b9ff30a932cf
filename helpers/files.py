"""Atomic writes: a killed run or a full disk must never leave a truncated checkpoint or metric file,
so everything is written to a temporary file in the same folder, flushed, then renamed over."""
import csv
import errno
import io
import os
import shutil
import tempfile
from pathlib import Path

import torch


def _replace_from_temp(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp makes owner-only files; results are meant to be read by the whole group/lab.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp_name, 0o666 & ~umask)
        os.replace(temp_name, path)
    except (OSError, RuntimeError) as error:
        # Disk full or a vanished folder (torch.save reports a failed write as RuntimeError): say which
        # file, keep the previous version in place.
        Path(temp_name).unlink(missing_ok=True)
        if _disk_full(error, path.parent):
            raise OSError(f"no space left on device: {path} (the previous version, if any, is kept)") from None
        reason = getattr(error, "strerror", None) or (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise OSError(f"cannot write {path}: {reason}") from None
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _disk_full(error: BaseException, folder: Path) -> bool:
    """ENOSPC (or a full quota) anywhere in the chain: torch's writer reports it as
    `[enforce fail at inline_container.cc] unexpected pos`, with the OSError as its context."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    if "inline_container" in str(error):
        try:
            return shutil.disk_usage(folder).free == 0
        except OSError:
            return False
    return False


def write_bytes_atomic(path, data: bytes) -> None:
    _replace_from_temp(Path(path), lambda stream: stream.write(data))


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_csv_atomic(path, rows: list[dict], columns: list[str] | None = None) -> None:
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def read_csv(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def torch_save_atomic(payload, path) -> None:
    _replace_from_temp(Path(path), lambda stream: torch.save(payload, stream))


def remove_stale_temporaries(folder) -> None:
    """Temporary files of writes that a kill interrupted (`.<name>.<random>.tmp`); nothing will finish them."""
    folder = Path(folder)
    if folder.is_dir():
        for stale in folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)


def remove_folder(folder, reason: str) -> None:
    """Remove a whole results folder, or fail with one line naming it and leave it untouched: the folder
    is first renamed aside (which fails cleanly on a read-only parent), then deleted."""
    folder = Path(folder)
    aside = folder.with_name(f".{folder.name}.removing-{os.getpid()}")
    try:
        folder.rename(aside)
    except OSError as error:
        raise OSError(f"{reason}: cannot remove {folder} ({error.strerror or error})") from None
    shutil.rmtree(aside, ignore_errors=True)
    if aside.exists():
        print(f"warning: {reason}: the old run was moved to {aside} but could not be deleted completely")


def check_writable(folder, what: str = "results folder", create: bool = True) -> None:
    """Fail before training when results cannot be written, not after hours of work. `what` names the
    key or flag the folder came from (e.g. 'output.artifacts_dir'). `create=False` changes nothing on
    disk: the nearest existing folder is asked for write permission instead of written to."""
    folder = Path(folder)
    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder")
        if not create:
            existing = next(p for p in [folder, *folder.absolute().parents] if p.exists())
            if not existing.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file, not a folder")
            if not os.access(existing, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, f"{existing} is not writable")
            return
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_probe.{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise OSError(f"{what} not writable: {folder} ({error.strerror or error})") from None


def save_safetensors_atomic(state: dict, path, metadata: dict | None = None) -> None:
    """Float weights as `.safetensors`, a format that holds no code by design."""
    from safetensors.torch import save
    write_bytes_atomic(path, save({key: value.detach().contiguous().clone() for key, value in state.items()},
                                  metadata=metadata))


def safetensors_metadata(path) -> dict:
    """The string metadata in a `.safetensors` header ({} when the file is missing or unreadable)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception:  # noqa: BLE001 - absent or foreign file: no owner is known
        return {}
