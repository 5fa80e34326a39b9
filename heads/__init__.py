"""Output-head registry: `register_head`, `create_head`, `list_heads`, `head_complexity` (`HEADS` is the table).

A head maps backbone features (B, d) to a distribution over C classes; see `heads.base.Head`.
Every module of this package is imported, so a new head is one new file (plus its tests):
its class declares its options, its search ranges (`suggest`) and its cost note.
"""
from common.registry import import_submodules
from heads._registry import HEADS, create_head, head_class, head_complexity, list_heads, register_head

import_submodules(__name__, skip=("base", "speed"))  # speed: the heads' speed layer, no heads

__all__ = ["HEADS", "create_head", "head_class", "head_complexity", "list_heads", "register_head"]
