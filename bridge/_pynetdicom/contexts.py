"""Supported presentation contexts that are cheap to copy for every association.

pynetdicom's server gives every association it accepts a ``deepcopy`` of the server's
supported contexts (``RequestHandler._create_association``).
Deep-copying the bridge's 251 contexts with 7,269 transfer syntaxes costs 68 ms of CPU
for every association accepted. The copies :func:`cheap_to_copy` makes copy themselves in
microseconds: UIDs are immutable strings, only the list of transfer syntaxes (the private
``PresentationContext._transfer_syntax`` behind the ``transfer_syntax`` property) needs a
copy of its own.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from pynetdicom.presentation import PresentationContext


def cheap_to_copy(contexts: Iterable[PresentationContext]) -> list[PresentationContext]:
    """``contexts``, each as a context whose ``deepcopy`` copies only what may change."""
    return [_CheapCopyContext.of(context) for context in contexts]


class _CheapCopyContext(PresentationContext):
    @classmethod
    def of(cls, context: PresentationContext) -> _CheapCopyContext:
        cheap = cls.__new__(cls)
        cheap.__dict__.update(vars(context))
        return cheap

    def __deepcopy__(self, memo: dict[int, Any]) -> _CheapCopyContext:
        clone = copy.copy(self)
        clone._transfer_syntax = list(self._transfer_syntax)
        return clone
