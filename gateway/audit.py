"""Audit events: one JSON line per security event, apart from the access log.

Events go to the `gateway.audit` logger. With `[audit] file` set, every process of the
gateway (workers, the CLI) appends them to that file, one write per line (O_APPEND, so lines
from several processes never interleave), mode 0600, and nowhere else; unset, they go to the
`gateway.audit` logger's handlers (the gateway's stderr, or the host app's logging for the
middleware). The README lists every event and field.

What an event holds is chosen here, at one place: ids, names, addresses, counts, reasons.
Never a password, code, token or cookie: callers pass only the fields below.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("gateway.audit")
# events are not diagnostics: they pass whatever level the root logger is at
log.setLevel(logging.INFO)

# every event and the fields it may carry (README "Audit events" is this table)
EVENTS: dict[str, tuple[str, ...]] = {
    "signin.succeeded": ("user", "typed", "source", "amr", "session", "client"),
    "signin.failed": ("user", "typed", "source", "reason", "client"),
    "signin.locked": ("user", "typed", "source", "retry_after", "client"),
    "signin.pending": ("user", "source", "methods", "client"),
    "signout": ("user", "session", "all", "client"),
    "session.revoked": ("user", "session", "count", "reason", "by"),
    "session.ended": ("user", "session", "reason"),
    "session.handoff": ("user", "session", "host", "client"),
    "handoff.refused": ("reason", "host", "client"),
    "user.removed": ("user", "by"),
    "user.disabled": ("user", "by"),
    "user.enabled": ("user", "by"),
    "password.changed": ("user", "by", "client"),
    "service_token.created": ("service", "roles", "expires", "by"),
    "service_token.first_used": ("service",),
    "service_token.revoked": ("service", "by"),
    "mfa.succeeded": ("user", "method", "session", "step_up", "client"),
    "mfa.failed": ("user", "method", "reason", "client"),
    "mfa.locked": ("user", "retry_after", "client"),
    "mfa.enrolled": ("user", "kind", "factor", "label"),
    "mfa.refused": ("user", "kind", "reason", "client"),
    "mfa.removed": ("user", "kind", "factor", "by"),
    "mfa.recovery_codes": ("user", "by"),
    "mfa.reset": ("user", "factors", "sessions_ended", "by"),
    "key.rotated": ("kid", "algorithm", "by"),
    "key.retired": ("kid", "by"),
    "config.reloaded": ("config", "routes"),
    "config.refused": ("config", "reason"),
}
# a name typed into the sign-in form is kept to this many characters
TYPED_LIMIT = 128

_lock = threading.Lock()
_file: _AppendFile | None = None


class _AppendFile(logging.Handler):
    """Appends each record as one write(2) to a file opened O_APPEND, mode 0600."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            os.write(self.fd, (record.getMessage() + "\n").encode("utf-8"))
        except OSError:
            self.handleError(record)

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
        super().close()


def configure(path: Path | None) -> None:
    """Send this process's audit events to `path` (None: to the logger's own handlers)."""
    global _file
    with _lock:
        if _file is not None and path is not None and _file.path == path:
            return
        if _file is not None:
            log.removeHandler(_file)
            _file.close()
            _file = None
        if path is None:
            log.propagate = True
            return
        _file = _AppendFile(path)
        log.addHandler(_file)
        log.propagate = False


def event(name: str, **fields: object) -> None:
    """Record one audit event; a field not in EVENTS[name] is a programming error."""
    allowed = EVENTS[name]
    unknown = set(fields) - set(allowed)
    if unknown:
        raise ValueError(f"audit event {name} has no field {sorted(unknown)}")
    now = time.time()
    record: dict[str, object] = {
        "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
        "event": name,
    }
    for key in allowed:
        value = fields.get(key)
        if value is None:
            continue
        if key == "typed" and isinstance(value, str):
            value = value[:TYPED_LIMIT]
        record[key] = list(value) if isinstance(value, tuple) else value
    log.info("%s", json.dumps(record, ensure_ascii=False, separators=(", ", ": ")))
