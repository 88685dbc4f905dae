"""The local stack: broker, schema registry, Redis and ClickHouse (chDB) on 127.0.0.1, run by a supervisor.

``highwater up`` / ``down`` / ``status`` are thin wrappers over :class:`LocalStack`; see
:mod:`highwater.stack.local` for the process design and :mod:`highwater.stack.parts` for the parts.
Names are imported lazily, so ``python -m highwater.stack.supervisor`` does not import its own module
twice and light users pay for no client libraries.

Example:
    >>> from highwater.settings import get_settings
    >>> from highwater.stack import LocalStack
    >>> LocalStack(get_settings()).start()  # doctest: +SKIP
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from highwater.stack.env import settings_env
    from highwater.stack.local import LocalStack, PartStatus
    from highwater.stack.parts import StackError

_EXPORTS = {
    "LocalStack": "highwater.stack.local",
    "PartStatus": "highwater.stack.local",
    "StackError": "highwater.stack.parts",
    "settings_env": "highwater.stack.env",
}
__all__ = ["LocalStack", "PartStatus", "StackError", "settings_env"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
