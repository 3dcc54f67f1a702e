from .collator import CONTEXT_KEYS, DataCollatorForContextSets
from .embeddings import ContextEmbeddingStore, TextEmbedder, pair_text
from .episodes import Episode, build_eval_episodes, build_train_episodes, group_rows_by_user
from .users import users_from_attributes

__all__ = [
    "CONTEXT_KEYS",
    "ContextEmbeddingStore",
    "DataCollatorForContextSets",
    "Episode",
    "TextEmbedder",
    "build_eval_episodes",
    "build_train_episodes",
    "group_rows_by_user",
    "pair_text",
    "users_from_attributes",
]
