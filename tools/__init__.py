"""Secondary command-line tools, each run as `python tools/<name>.py` from the repository root."""
