"""Log formatting: one record, one line, whatever text from outside it carries."""

from __future__ import annotations

import logging
import re
from typing import Any


class OneLineFormatter(logging.Formatter):
    """Log records as single lines with control characters escaped: text from outside (a reason, a header,
    a server's error) can neither forge a log line nor drive the reader's terminal. A traceback keeps its
    lines, each indented, so none of them passes for a record of its own."""

    _CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
    _CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")

    @staticmethod
    def _escape(match: re.Match[str]) -> str:
        return match.group().encode("unicode_escape").decode("ascii")

    def formatMessage(self, record: logging.LogRecord) -> str:
        return self._CONTROL.sub(self._escape, super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        text = self._CONTROL_BUT_NEWLINE.sub(self._escape, super().formatException(ei))
        return "\n".join("  " + line for line in text.splitlines())


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
