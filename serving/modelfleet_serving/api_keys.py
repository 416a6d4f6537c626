"""Where the front door's accepted API keys come from, and noticing when they change.

In a cluster the user's Secret is mounted as a file (the operator renders the volume);
the kubelet rewrites the file when the Secret changes, and the front door re-reads it
on its refresh loop, so a rotated key is honoured within the kubelet's sync period
(about a minute) with no pod restarted. Under `modelfleet serve` the keys come from an
environment variable, read once.

Keys are separated by commas or newlines; surrounding blanks are ignored. No key is
ever logged: only how many there are.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("ray.serve")
_UNREAD = object()


def parse_keys(text: str) -> list[bytes]:
    """The keys in `text`, in order, without blanks or empty entries."""
    return [k.strip().encode() for k in text.replace("\n", ",").split(",") if k.strip()]


class KeySource:
    """The accepted keys: None when the deployment asked for none.

    `file` wins over `env` when both are set. A deployment that asked for keys and
    has none (an empty or unreadable file, an empty variable) fails closed: the key
    list is empty and every request gets 401.
    """

    def __init__(self, *, env: str | None = None, file: str | None = None) -> None:
        self._env = env
        self._file = file
        self._text: object = _UNREAD
        self.keys: list[bytes] | None = None
        self.refresh()

    @property
    def where(self) -> str:
        """Where the keys come from, for messages."""
        return f"file {self._file}" if self._file else f"variable {self._env}"

    def _read(self) -> str | None:
        if self._file is not None:
            try:
                with open(self._file, encoding="utf-8") as f:
                    return f.read()
            except OSError as e:
                logger.error("cannot read the API keys from %s: %s", self._file, e)
                return ""
        if self._env is not None:
            return os.environ.get(self._env, "")
        return None

    def refresh(self) -> bool:
        """Read the keys again; True when they changed since the last read."""
        text = self._read()
        if text == self._text:
            return False
        self._text = text
        self.keys = None if text is None else parse_keys(text)
        if self.keys is not None:
            if self.keys:
                logger.info("API keys from %s: %d accepted", self.where, len(self.keys))
            else:
                logger.error(
                    "API keys are required but %s holds none: every request gets 401",
                    self.where,
                )
        return True
