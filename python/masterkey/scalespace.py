"""Idealised scale-space models of the keys (``masterkey scalespace``):
Gaussians, offset and centred differences, DoGs, fitted to each key."""

from __future__ import annotations

import json
from typing import Any

from . import Bank, BankLike, _bank, _core


def fit(bank: BankLike = "published8", criterion: str = "l2") -> dict[str, Any]:
    """Fits each key to every scale-space family and discretisation
    (``criterion`` ``"l2"``: largest |cos|, or ``"l1"``): the JSON
    ``masterkey scalespace fit --json`` prints."""
    return json.loads(_core.scalespace_fit(_bank(bank), criterion))


def bank(size: int = 7, from_bank: BankLike | None = None) -> Bank:
    """The idealised bank at an odd ``size`` (3 to 31): the models of the
    published 8 keys, or of ``from_bank``'s keys (their best L2 fit)."""
    source = None if from_bank is None else _bank(from_bank)
    return Bank(_core.scalespace_bank(size, source))
