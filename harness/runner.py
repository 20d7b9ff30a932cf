"""Command-line entry points share one policy for failures: a mistake in the input (config, paths,
weights, layer names) prints one line and exits 2; `pdb_debug: true` opens the post-mortem debugger
instead; LOWLIGHT_TRACEBACK=1 shows the full traceback for bug reports."""
import os
import warnings
import sys

from harness.config import ConfigError, load_config

def _one_line_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


# Users read warnings about their config (e.g. a special-layer entry that cannot apply), not our source.
warnings.formatwarning = _one_line_warning

# Set once an entry point's config is loaded (load_entry_config), so errors after that honour `pdb_debug`.
post_mortem = False


def load_entry_config(path, overrides=(), check_files=True):
    """load_config for a command-line entry point: also arms the post-mortem debugger (`pdb_debug`)."""
    global post_mortem
    config = load_config(path, overrides, check_files=check_files)
    post_mortem = config.pdb_debug
    return config

USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, OSError, FloatingPointError)


def run_entry_point(main, argv) -> int:
    try:
        main(argv)
        return 0
    except KeyboardInterrupt:
        print("interrupted; the latest checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the one place where errors become messages
        if post_mortem:
            import pdb
            import traceback
            traceback.print_exc()
            pdb.post_mortem(error.__traceback__)
            return 1
        if os.environ.get("LOWLIGHT_TRACEBACK") or not isinstance(error, USER_ERRORS):
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
