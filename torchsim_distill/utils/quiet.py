"""Third-party notices we know to be harmless, silenced while the package imports and loads
torch-sim, nequip and Warp, and nowhere else::

    with known_notices_silenced():
        import torch_sim  # noqa: F401  (its first import prints two FutureWarnings and Warp's CUDA notice)

Exactly these, each matched by its text, for the duration of the ``with`` block only (user
code's warnings, and any other message printed meanwhile, still reach the user):

- ``torch.jit.script`` / ``save`` / ``load`` / ``trace`` FutureWarnings (torch-sim's neighbor
  utilities and nequip still use TorchScript);
- torch's ``No CUDA runtime is found`` log line (``torch.utils.cpp_extension``, imported by
  nequip's compiled-model loader on a machine without CUDA);
- Warp's ``Could not find or load the NVIDIA CUDA driver`` line, which ``wp.init()`` (run by
  importing nvalchemiops) prints from C with ``fprintf(stderr, ...)``: no Python filter reaches
  it, so while Warp is not yet initialised, file descriptor 2 is pointed at a temporary file,
  and what else was written there is passed on to stderr afterwards.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: FutureWarnings by message (regular expressions, matched at the start).
KNOWN_WARNINGS = (r"`torch\.jit\.(script|save|load|trace)` is deprecated",)
#: Log records by logger name and message start.
KNOWN_LOG_LINES = {"torch.utils.cpp_extension": "No CUDA runtime is found"}
#: Lines native code writes to stderr, by their start.
KNOWN_NATIVE_LINES = ("Warp CUDA warning: Could not find or load the NVIDIA CUDA driver",)


class _DropKnown(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextmanager
def known_notices_silenced() -> Iterator[None]:
    """Silence :data:`KNOWN_WARNINGS`, :data:`KNOWN_LOG_LINES` and (until Warp is initialised)
    :data:`KNOWN_NATIVE_LINES` for the block; everything else passes."""
    filters = [(logging.getLogger(name), _DropKnown(prefix)) for name, prefix in KNOWN_LOG_LINES.items()]
    with warnings.catch_warnings():
        for pattern in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern, category=FutureWarning)
        for logger, known in filters:
            logger.addFilter(known)
        try:
            with _native_stderr_filtered(needed=not _warp_initialised()):
                yield
        finally:
            for logger, known in filters:
                logger.removeFilter(known)


def _warp_initialised() -> bool:
    """Whether ``wp.init()`` has run (nvalchemiops runs it on import); importing nothing."""
    wp = sys.modules.get("warp")
    context = getattr(getattr(wp, "_src", None), "context", None) if wp is not None else None
    return "nvalchemiops" in sys.modules or getattr(context, "runtime", None) is not None


@contextmanager
def _native_stderr_filtered(*, needed: bool) -> Iterator[None]:
    """Capture file descriptor 2 for the block, then write back all but the known native lines."""
    if not needed:
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to protect
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not line.startswith(KNOWN_NATIVE_LINES)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
