"""What the CLI shows: progress bars on stderr, one-line errors, JSON on stdout.

The core reports through ``progress(event)`` callbacks (plain dicts); this module is the only
place that turns them into tqdm bars (a terminal), periodic lines (``--progress plain``, for
CI logs) or nothing (``-q``, or stderr is not a terminal).
"""
from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable

from ..errors import BadReference, PullerError, RunError, UsageError

TYPE_CHECKING = False  # typing costs more to import than this module: names for checkers only
if TYPE_CHECKING:
    from typing import Any

__all__ = ["EXIT_CODES", "exit_code_for", "fail", "os_error", "run_lean", "Progress", "setup_logging", "emit_json",
           "human_size"]

# One table maps error classes to exit codes; the first matching class wins.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (BadReference, 2),
    (UsageError, 2),
    (PullerError, 1),
)


def exit_code_for(e: BaseException) -> int:
    if isinstance(e, RunError):
        return e.exit_code
    for cls, code in EXIT_CODES:
        if isinstance(e, cls):
            return code
    return 1


def fail(e: BaseException, prog: str = "puller") -> int:
    """Print the one-line message for ``e`` on stderr; return the exit code."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    sys.stderr.write(f"{prog}: error: {msg}\n")
    sys.stderr.flush()
    return exit_code_for(e)


def os_error(e: OSError) -> PullerError:
    """An OSError that escaped the core, as a one-line error (never a traceback)."""
    where = f": {e.filename}" if getattr(e, "filename", None) else ""
    return PullerError(f"{e.strerror or e}{where}")


def run_lean(body: Callable[[], int], *, trouble: Callable[[BaseException], int] | None = None) -> int:
    """Run the body of an argparse command: a PullerError (or a stray OSError) becomes one
    line on stderr and its exit code; a closed pipe is 141 and Ctrl-C 130, as in a shell."""
    trouble = trouble or fail
    try:
        return body()
    except PullerError as e:
        return trouble(e)
    except BrokenPipeError:
        return 141
    except OSError as e:
        return trouble(os_error(e))
    except KeyboardInterrupt:
        sys.stderr.write("puller: interrupted\n")
        return 130


def setup_logging(verbose: bool) -> None:
    """Warnings go to stderr on a terminal or with --verbose; otherwise a failing command's
    one error line is all it writes there (see ``puller._log``)."""
    from .._log import configure
    configure(verbose=verbose)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def human_size(n: float | int | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


class Progress:
    """Renders pull/unpack events: ``mode`` is 'auto' (bars on a TTY), 'tty', 'plain' or
    'quiet'. Call it as the ``progress`` callback; ``close()`` at the end."""

    def __init__(self, mode: str = "auto", *, verbose: bool = False, stream=None) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "tty" if self.stream.isatty() else "quiet"
        if mode not in ("tty", "plain", "quiet"):
            raise UsageError(f"invalid --progress value {mode!r}: expected auto, tty, plain or quiet")
        self.mode, self.verbose = mode, verbose
        self._bars: dict[str, Any] = {}
        self._total = None
        self._done = 0
        self._bytes = 0
        self._total_bytes = 0
        self._last_line = 0.0
        self._lock = threading.Lock()
        self.ratelimit: dict | None = None

    def __call__(self, e: Any) -> None:
        if not isinstance(e, dict):  # an event dataclass (e.g. unpack's): same shape as a dict
            import dataclasses
            fields = dataclasses.asdict(e) if dataclasses.is_dataclass(e) else dict(vars(e))
            e = {"event": fields.pop("kind", type(e).__name__), **fields}
        with self._lock:
            kind = e.get("event")
            if kind == "ratelimit":
                self.ratelimit = {k: v for k, v in e.items() if k not in ("event",)}
                if self.verbose:
                    self._line(f"rate limit: {e.get('remaining')} of {e.get('limit')} pulls left"
                               f" (window {e.get('window_seconds')} s, source {e.get('source')})")
                return
            if self.mode == "quiet":
                return
            handler: Callable[[dict], None] | None = getattr(self, "_on_" + str(kind).replace("-", "_"), None)
            if handler is not None:
                handler(e)
            elif self.verbose and kind in ("retry", "mirror-fallback", "offline-fallback", "blob-break",
                                           "blob-resume", "blob-retry", "token"):
                self._line(" ".join(f"{k}={v}" for k, v in e.items()))

    def _line(self, text: str) -> None:
        if self._bars:
            self._tqdm().write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def _on_blobs(self, e: dict) -> None:
        if e.get("missing"):
            self._total_bytes += int(e.get("bytes") or 0)
            if self.mode == "tty" and self._total is None:
                self._total = self._tqdm()(total=self._total_bytes, unit="B", unit_scale=True, desc="total",
                                   file=self.stream, position=0, leave=False, dynamic_ncols=True)
            elif self._total is not None:
                self._total.total = self._total_bytes
                self._total.refresh()

    def _on_blob_start(self, e: dict) -> None:
        if self.mode == "tty":
            self._bars[e["digest"]] = self._tqdm()(total=e.get("size"), unit="B", unit_scale=True,
                                           desc=e["digest"][7:19], file=self.stream,
                                           position=len(self._bars) + 1, leave=False, dynamic_ncols=True)

    def _on_blob_progress(self, e: dict) -> None:
        n = int(e.get("n") or 0)
        self._bytes += n
        bar = self._bars.get(e["digest"])
        if bar is not None:
            bar.update(n)
        if self._total is not None:
            self._total.update(n)
        if self.mode == "plain" and time.monotonic() - self._last_line >= 2.0:
            self._last_line = time.monotonic()
            pct = f" ({100 * self._bytes / self._total_bytes:.0f}%)" if self._total_bytes else ""
            self._line(f"downloaded {human_size(self._bytes)} of {human_size(self._total_bytes)}{pct}")

    def _on_blob_done(self, e: dict) -> None:
        bar = self._bars.pop(e["digest"], None)
        if bar is not None:
            bar.close()
        elif self.mode == "plain":
            self._line(f"{e['digest'][:19]}: done ({human_size(e.get('size'))})")

    @staticmethod
    def _tqdm():
        """tqdm, without its monitor thread: the runner forks right after a pull, and a
        process that forks must have no other threads."""
        import tqdm
        tqdm.tqdm.monitor_interval = 0
        return tqdm.tqdm

    def _on_resolved(self, e: dict) -> None:
        if self.mode == "plain":
            self._line(f"{e['ref']}: resolved to {e['digest']}")

    def _on_done(self, e: dict) -> None:
        if self.mode == "plain" and e.get("ref"):
            self._line(f"{e['ref']}: pulled ({human_size(e.get('bytes'))} downloaded)")

    def _on_layer_start(self, e: dict) -> None:
        n = e["layer"] + 1 if isinstance(e.get("layer"), int) else e.get("index", "?")
        if self.mode == "plain":
            of = f" of {e['layers']}" if e.get("layers") else ""
            self._line(f"applying layer {n}{of}")
        elif self.mode == "tty" and isinstance(e.get("layers"), int):
            bar = self._bars.get("unpack")
            if bar is None:
                bar = self._bars["unpack"] = self._tqdm()(
                    total=e["layers"], unit="layer", desc="unpack", file=self.stream, leave=False,
                    dynamic_ncols=True)
            bar.set_postfix_str(f"applying layer {n}", refresh=True)

    def _on_layer_done(self, e: dict) -> None:
        bar = self._bars.get("unpack")
        if bar is not None:
            bar.update(1)

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
            if self._total is not None:
                self._total.close()
                self._total = None
