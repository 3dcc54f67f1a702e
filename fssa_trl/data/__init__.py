from .collator import CONTEXT_KEYS, DataCollatorForContextSets, right_pad
from .embeddings import ContextEmbeddingStore, TextEmbedder, embedding_dim, make_embedder, pair_text
from .episode_dataset import EPISODE_COLUMNS, add_text_keys, build_episode_dataset, embedding_indices
from .episodes import Episode, build_eval_episodes, build_train_episodes, group_rows_by_user
from .users import users_from_attributes
from .validation import EMBEDDING_COLUMNS, TEXT_KEY_COLUMNS, check_preference_dataset

__all__ = [
    "CONTEXT_KEYS",
    "EMBEDDING_COLUMNS",
    "EPISODE_COLUMNS",
    "TEXT_KEY_COLUMNS",
    "ContextEmbeddingStore",
    "DataCollatorForContextSets",
    "Episode",
    "TextEmbedder",
    "add_text_keys",
    "build_episode_dataset",
    "build_eval_episodes",
    "build_train_episodes",
    "check_preference_dataset",
    "embedding_dim",
    "embedding_indices",
    "group_rows_by_user",
    "make_embedder",
    "pair_text",
    "right_pad",
    "users_from_attributes",
]
