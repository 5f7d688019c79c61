"""What registries said about themselves, kept between runs.

Against Docker Hub a warm pull is otherwise three round trips and two TLS handshakes: the
ping (``GET /v2/``, answered 401 with the challenge), a token from ``auth.docker.io``, and
the HEAD itself. The memo keeps, per registry host, the ping's answer (scheme and
challenge) for a day and anonymous bearer tokens until shortly before they expire, so the
next process starts with the HEAD. Tokens obtained with credentials are never written
down. A memo that has gone stale costs one 401, which makes the transport learn afresh.

The file is ``CACHE/meta/registry/hosts.json``, mode 0600, replaced atomically; it is a hint,
so an unreadable or torn file is simply ignored.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

__all__ = ["AuthMemo"]

_PING_TTL = 24 * 3600.0  # seconds a ping's answer is trusted
_MIN_LEFT = 10.0         # a token with less life than this left is not worth keeping


class AuthMemo:
    """The memo file ``path``; ``tmp_dir`` is where its next version is written first."""

    def __init__(self, path: str | os.PathLike, tmp_dir: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self.tmp_dir = Path(tmp_dir) if tmp_dir is not None else self.path.parent
        self._lock = threading.Lock()

    def recall(self, host: str) -> tuple[str, tuple[str, dict[str, str]] | None,
                                         dict[str, tuple[str, float]]] | None:
        """What ``host``'s ping answered recently, (scheme, challenge, tokens), or None;
        ``tokens`` are the anonymous ones still good: scope -> (token, expires)."""
        entry = self._read().get(host)
        if not isinstance(entry, dict) or time.time() - float(entry.get("at", 0)) > _PING_TTL:
            return None
        scheme, challenge = entry.get("scheme"), entry.get("challenge")
        if scheme not in ("http", "https"):
            return None
        if challenge is not None:
            if (not isinstance(challenge, list) or len(challenge) != 2 or not isinstance(challenge[1], dict)
                    or challenge[0] not in ("bearer", "basic")):
                return None
            challenge = (challenge[0], {str(k): str(v) for k, v in challenge[1].items()})
        now = time.time()
        tokens = {str(scope): (str(t[0]), float(t[1])) for scope, t in (entry.get("tokens") or {}).items()
                  if isinstance(t, list) and len(t) == 2 and float(t[1]) > now + _MIN_LEFT}
        return scheme, challenge, tokens

    def save_ping(self, host: str, scheme: str, challenge: tuple[str, dict[str, str]] | None) -> None:
        def change(entry: dict) -> dict:
            same = entry.get("challenge") == (list(challenge) if challenge else None)
            return {"scheme": scheme, "challenge": list(challenge) if challenge else None,
                    "at": time.time(), "tokens": entry.get("tokens", {}) if same else {}}
        self._update(host, change)

    def save_token(self, host: str, scope: str, token: str, expires: float) -> None:
        def change(entry: dict) -> dict:
            now = time.time()
            tokens = {s: t for s, t in (entry.get("tokens") or {}).items()
                      if isinstance(t, list) and len(t) == 2 and float(t[1]) > now}
            tokens[scope] = [token, expires]
            return {**entry, "tokens": tokens}
        if expires - time.time() > _MIN_LEFT:
            self._update(host, change)

    def forget(self, host: str) -> None:
        self._update(host, lambda entry: None)

    # --- the file ------------------------------------------------------------------
    def _read(self) -> dict:
        try:
            doc = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _update(self, host: str, change) -> None:
        """Read, change one host's entry, write back; racing processes may each lose the
        other's entry, which costs the loser one ping next time."""
        with self._lock:
            doc = self._read()
            entry = change(doc.get(host) if isinstance(doc.get(host), dict) else {})
            if entry is None:
                if doc.pop(host, None) is None:
                    return
            else:
                doc[host] = entry
            tmp = self.tmp_dir / f"{self.path.name}.{os.getpid()}.{threading.get_ident()}"
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.tmp_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump(doc, f)
                os.replace(tmp, self.path)
            except OSError:  # a read-only cache: the memo is only a hint
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
