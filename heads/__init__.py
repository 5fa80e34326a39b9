"""Output-head registry: `register_head`, `create_head`, `list_heads`, `head_complexity`.

A head maps backbone features (B, d) to a distribution over C classes; see `heads.base.Head`.
"""
from heads._registry import create_head, head_class, head_complexity, list_heads, register_head
from heads import adaptive, gumbel, hierarchical, sampled, softmax  # noqa: F401  (fill the registry)

__all__ = ["create_head", "head_class", "head_complexity", "list_heads", "register_head"]
