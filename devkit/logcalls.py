"""Log calls that are not structured events yet: ``python -m devkit.logcalls [PATH ...]``.

A structured call (``runtime/logs.py``) names its event in snake_case and passes the context as
keys: ``log.warning("command_not_published", cmd_id=cmd.id, error=str(exc))``. This lists the
others, one per line, with a suggested event name and the arguments to turn into keys:

    controller/_service.py:412 warning 'publish of %s failed: %s' (cmd.id, exc) -> publish_failed

and the module loggers still made with ``logging.getLogger`` (``log = get_logger(__name__)``
instead). ``tests/unit/test_logs.py`` runs ``prose_calls`` over every package (``PACKAGES``).
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})
LOGGER_NAMES = frozenset({"log", "logger", "_log", "LOG"})
EVENT_NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
_PLACEHOLDER = re.compile(r"%[-#0 +]?\d*(?:\.\d+)?[sdrifx%]")


@dataclass(frozen=True)
class LogCall:
    """One call to convert (``method`` is ``getLogger`` for a module logger made the stdlib way)."""

    path: Path
    line: int
    method: str
    message: str
    args: tuple[str, ...]

    def suggestion(self) -> str:
        """A snake_case event name from the message's words (a start: name the fact, not the sentence)."""
        words = re.findall(r"[a-z0-9]+", _PLACEHOLDER.sub(" ", self.message).lower())
        return "_".join(words[:5]) or "event"

    def __str__(self) -> str:
        if self.method == "getLogger":
            return f"{self.path}:{self.line} module logger: log = get_logger(__name__)"
        args = f" ({', '.join(self.args)})" if self.args else ""
        return f"{self.path}:{self.line} {self.method} {self.message!r}{args} -> {self.suggestion()}"


def _is_logger(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in LOGGER_NAMES
    if isinstance(node, ast.Attribute):
        return node.attr in LOGGER_NAMES
    # logging.getLogger("x").info(...)
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "getLogger"
    )


def _calls(path: Path) -> Iterator[LogCall]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for statement in tree.body:  # module loggers
        if (
            isinstance(statement, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id in LOGGER_NAMES for t in statement.targets)
            and isinstance(statement.value, ast.Call)
            and isinstance(statement.value.func, ast.Attribute)
            and statement.value.func.attr == "getLogger"
        ):
            yield LogCall(path, statement.lineno, "getLogger", "", ())
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in METHODS
            and _is_logger(node.func.value)
            and node.args
        ):
            continue
        first = node.args[0]
        message = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None
        prose = (
            (message is not None and not EVENT_NAME.match(message))
            or len(node.args) > 1
            or isinstance(first, ast.JoinedStr)
            or any(kw.arg == "extra" for kw in node.keywords)
        )
        if prose:
            shown = message if message is not None else ast.unparse(first)
            args = tuple(ast.unparse(a) for a in node.args[1:])
            yield LogCall(path, node.lineno, node.func.attr, shown, args)


# Every package of the project: their log calls are structured events.
PACKAGES = (
    "alerts",
    "api",
    "broker",
    "controller",
    "devkit",
    "firmware_sim",
    "geo",
    "ingest",
    "runtime",
    "store",
    "streetlight",
)


def prose_calls(paths: Iterable[Path]) -> list[LogCall]:
    """The unstructured log calls and stdlib module loggers in ``paths`` (files or directories)."""
    found: list[LogCall] = []
    for root in paths:
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for path in files:
            found.extend(_calls(path))
    return found


def main(argv: list[str] | None = None) -> int:
    """Print the calls left in the given paths (default: every package); 1 when there are any."""
    args = sys.argv[1:] if argv is None else argv
    paths = [Path(a) for a in args] or [Path(p) for p in PACKAGES]
    calls = prose_calls(paths)
    for call in calls:
        print(call)  # noqa: T201
    print(f"{len(calls)} to convert", file=sys.stderr)  # noqa: T201
    return 1 if calls else 0


if __name__ == "__main__":
    sys.exit(main())
