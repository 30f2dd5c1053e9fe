"""Compatibility path of :mod:`ledger.registry.payloads` (the registry payloads and their codec).

Kept because many modules (privacy, registry client, manager CLI, auditor, pipeline audit chain) import it;
new code imports :mod:`ledger.registry.payloads`.
"""

from __future__ import annotations

from ledger.registry.payloads import *  # noqa: F401,F403
from ledger.registry.payloads import __all__  # noqa: F401
