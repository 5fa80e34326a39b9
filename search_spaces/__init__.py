"""Named search spaces: `register_space`, `get_space`, `list_spaces`.

A space is a pure Optuna define-by-run function (only `trial.suggest_*` calls and
`if`s for conditional parameters; it returns keys derived from what it suggested)
plus the constants every trial gets and the search settings (ASHA, resources, metric).
"""
from search_spaces._registry import SPACES, Space, get_space, list_spaces, register_space, sample_config
from search_spaces import spaces  # noqa: F401  (fill the registry)

__all__ = ["SPACES", "Space", "get_space", "list_spaces", "register_space", "sample_config"]
