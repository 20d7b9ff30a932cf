"""What a raw file says about how it was taken: exposure time (for a pair's amplification ratio) and
the camera's make and model (checkpoints record the cameras they were trained on; enhance.py warns
about files from another one).

The exposure time comes from LibRaw (rawpy's `other.shutter_speed`), which reads it for every format
it decodes. rawpy does not expose make and model, so they are read from the file's TIFF tags with
tifffile: DNG and most makers' raws (ARW, NEF, CR2, PEF, ...) are TIFF containers. Formats that are
not (CR3, RAF) have no camera name here, and no warning is given for them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from data.raw_cache import is_image_file, one_line_error


def exposure_time(path: Path) -> Optional[float]:
    """Seconds, or None when the file records none. Only the metadata is parsed (open_file without
    unpack): a pairs list of thousands of raws is read in seconds, not minutes."""
    import rawpy

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"raw file not found: {path}")
    raw = rawpy.RawPy()
    try:
        raw.open_file(str(path))
        seconds = float(raw.other.shutter_speed)
    except (rawpy.LibRawError, OSError) as error:
        raise ValueError(f"cannot read raw file {path}: {one_line_error(error)}") from None
    finally:
        raw.close()
    return seconds if seconds > 0 else None


def camera_name(path: Path) -> Optional[str]:
    """'Make Model' from the file's TIFF tags (e.g. 'SONY ILCE-7SM2'), or None when it has none."""
    path = Path(path)
    if is_image_file(path):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            tags = tiff.pages[0].tags
            make, model = (str(tags[name].value).strip(" \0") if name in tags else "" for name in ("Make", "Model"))
    except Exception:  # noqa: BLE001 - not a TIFF container (CR3, RAF, ...): the name is unknown, not an error
        return None
    if model.lower().startswith(make.lower()):
        make = ""  # some makers repeat the make in the model ("Canon" "Canon EOS 5D")
    name = f"{make} {model}".strip()
    return name or None


