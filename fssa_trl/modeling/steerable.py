# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""What steerable reward models and steerable policies share: a user's context set -> latent z, and loading."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from huggingface_hub import CommitInfo
from peft import PeftModel
from torch import nn

from ..data.embeddings import ContextEmbeddingStore, TextEmbedder, pair_text
from .config import ContextEmbeddingConfig, GatedLoRAModelConfig, SteerableConfig
from .gated_lora import gated_lora_config
from .np_modules import NPModules, load_np_modules, save_np_modules

if TYPE_CHECKING:
    from ..evaluation import FewShotResults

Context = Sequence[dict[str, Any]] | None


class SteerableModel(nn.Module):
    """Base of the steerable reward models and [`SteerablePolicy`]: the trained model with its NP modules
    (`model.fssa_np`), the tokenizer and the context embedder; infers a user's latent from a context set.

    Args:
        model (`nn.Module`): the trained model, with [`NPModules`] attached as `model.fssa_np`.
        tokenizer: its tokenizer (`None` for a frozen-embedding model on precomputed embeddings).
        fssa_config ([`SteerableConfig`]): the saved configuration (`fssa_config.json`).
        embedder ([`TextEmbedder`], *optional*): embeds context texts (`None`: contexts are given as embeddings).
    """

    # The saved config this class loads; `from_pretrained` reads it and dispatches on its class.
    config_class: ClassVar[type[SteerableConfig] | None] = None
    # Whether the model ignores the context (a plain reward model used as a baseline).
    is_context_free: ClassVar[bool] = False
    _loaders: ClassVar[dict[type[SteerableConfig], type[SteerableModel]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.config_class is not None and cls.config_class.model_type:
            SteerableModel._loaders.setdefault(cls.config_class, cls)

    def __init__(
        self,
        model: nn.Module,
        tokenizer=None,
        fssa_config: SteerableConfig | None = None,
        embedder: TextEmbedder | None = None,
    ):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.fssa_config = fssa_config
        self.embedder = embedder
        self._store = ContextEmbeddingStore(embedder)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str,
        base_model_name_or_path: str | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        *,
        revision: str | None = None,
        token: str | None = None,
    ) -> SteerableModel:
        """Load a model saved by an NP trainer or by [`save_pretrained`] (`fssa_config.json`, `fssa_np.safetensors`
        and, for LoRA models, the PEFT adapter and tokenizer), from a folder or a Hub repository. Only safetensors,
        JSON and the tokenizer's text files are downloaded and read; for LoRA models the base model named in the
        adapter config is loaded with transformers as usual. The class of the returned model follows the saved
        `model_type`; a folder of another kind raises an error naming the file and the field.

        Args:
            pretrained_model_name_or_path (`str`): an output or checkpoint folder, or a Hub repository id.
            base_model_name_or_path (`str`, *optional*): override the base model recorded in the adapter config.
            dtype (`torch.dtype`, *optional*): dtype of the base model (default float32).
            device (`str` or `torch.device`, *optional*): where to put the model.
            revision (`str`, *optional*): branch, tag or commit of the Hub repository (not for a folder).
            token (`str`, *optional*): token for a private or gated Hub repository.
        """
        # `SteerableModel.from_pretrained` loads any kind (the CLI does); a subclass only its own kinds.
        config_class = SteerableConfig if cls is SteerableModel else cls.config_class
        if config_class is None:
            raise ValueError(f"{cls.__name__} has no saved form to load.")
        from ..hub import resolve_pretrained

        path = resolve_pretrained(pretrained_model_name_or_path, revision=revision, token=token)
        modules, config = load_np_modules(path, config_class)
        # Each concrete class builds its model in `_from_folder(path, config, modules, base_model_name_or_path, dtype)`.
        target = cls if cls.config_class is type(config) else SteerableModel._loaders[type(config)]
        model = target._from_folder(path, config, modules, base_model_name_or_path, dtype)
        if device is not None:
            model.model.to(device)
            if model.embedder is not None and model.embedder.model is not model.model:
                model.embedder.model.to(device)
        model.model.eval()
        return model

    # ------------------------------------------------------------------------------------------- saving and hub
    def save_pretrained(
        self,
        save_directory: str,
        *,
        model_name: str | None = None,
        few_shot: FewShotResults | Mapping[str, float] | None = None,
        model_id: str | None = None,
    ) -> None:
        """Write the files an NP trainer's `save_model` writes, so that [`from_pretrained`] loads them back:
        `fssa_config.json`, `fssa_np.safetensors`, the PEFT adapter (LoRA models), the tokenizer and the model card
        (README.md). Safetensors and JSON only.

        Args:
            save_directory (`str`): the folder (created if needed).
            model_name (`str`, *optional*): the card's title (default: the folder's name).
            few_shot ([`FewShotResults`] or `dict`, *optional*): accuracy by context size for the card.
            model_id (`str`, *optional*): what the card's usage snippet loads (default: `save_directory`).
        """
        from ..model_card import steerable_model_card_of

        if self.fssa_config is None:
            raise ValueError(f"{type(self).__name__} has no saved form: it holds no NP modules to save.")
        os.makedirs(save_directory, exist_ok=True)
        if isinstance(self.model, PeftModel):
            # The adapter only (as the trainers save it), with its config naming the base model.
            self.model.save_pretrained(save_directory, selected_adapters=[self.fssa_config.adapter_name])
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(save_directory)
        save_np_modules(save_directory, self.np_modules.state_dict(), self.fssa_config)
        card = steerable_model_card_of(
            self.model,
            self.fssa_config,
            model_name=model_name or os.path.basename(os.path.abspath(save_directory)),
            model_id=model_id or save_directory,
            few_shot=few_shot,
        )
        card.save(os.path.join(save_directory, "README.md"))  # after PEFT's, which it replaces

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        few_shot: FewShotResults | Mapping[str, float] | None = None,
    ) -> CommitInfo:
        """Upload the model to the Hub repository `repo_id` (created if needed), as [`save_pretrained`] writes it;
        load it back with `from_pretrained(repo_id)`.

        Args:
            repo_id (`str`): `"<namespace>/<name>"`.
            private (`bool`, *optional*): whether a new repository is private.
            token (`str`, *optional*): a token with write access (default: the saved login or `HF_TOKEN`).
            revision (`str`, *optional*): the branch to commit to, created if missing.
            commit_message (`str`, *optional*): the commit message.
            few_shot ([`FewShotResults`] or `dict`, *optional*): accuracy by context size for the card.

        Returns:
            [`~huggingface_hub.CommitInfo`]
        """
        from ..hub import push_folder_to_hub

        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, model_name=repo_id.split("/")[-1], few_shot=few_shot, model_id=repo_id)
            return push_folder_to_hub(
                folder, repo_id, private=private, token=token, revision=revision, commit_message=commit_message
            )

    @property
    def np_modules(self) -> NPModules | None:
        return getattr(self.model, "fssa_np", None)

    @property
    def scores_embeddings(self) -> bool:
        """Whether `score` takes response embeddings instead of text (a frozen-embedding model trained on
        precomputed embeddings)."""
        return False

    # ---------------------------------------------------------------------------------------------- embeddings
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def embed_pairs(self, prompts: Sequence, responses: Sequence) -> torch.Tensor:
        """`(N, D)` embeddings e(prompt, response), each distinct text embedded once per model instance."""
        if self.embedder is None:
            raise ValueError(
                "This model was trained on precomputed embeddings: give context pairs as dicts with "
                "'chosen_embedding' and 'rejected_embedding' vectors."
            )
        texts = [pair_text(p, r, self.tokenizer) for p, r in zip(prompts, responses, strict=True)]
        indices = self._store.add_texts(texts)
        return self._store.table[indices]

    def _context_tensors(self, context: Context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dim = self.np_modules.encoder.embedding_dim
        if not context:
            empty = torch.zeros(1, 0, dim)
            return empty, empty.clone(), torch.zeros(1, 0, dtype=torch.bool)
        for i, pair in enumerate(context):
            if not isinstance(pair, dict) or not (
                {"chosen", "rejected"} <= set(pair) or {"chosen_embedding", "rejected_embedding"} <= set(pair)
            ):
                raise ValueError(
                    f"context[{i}] must be a dict with 'chosen' and 'rejected' (and optionally 'prompt'), or with "
                    f"'chosen_embedding' and 'rejected_embedding'; got {pair!r}."
                )
        if "chosen_embedding" in context[0]:
            chosen = torch.tensor([p["chosen_embedding"] for p in context], dtype=torch.float32)
            rejected = torch.tensor([p["rejected_embedding"] for p in context], dtype=torch.float32)
        else:
            prompts = [p.get("prompt", "") for p in context]
            chosen = self.embed_pairs(prompts, [p["chosen"] for p in context])
            rejected = self.embed_pairs(prompts, [p["rejected"] for p in context])
        if chosen.shape[-1] != dim:
            raise ValueError(f"Context embeddings have dimension {chosen.shape[-1]}, the encoder expects {dim}.")
        return chosen.unsqueeze(0), rejected.unsqueeze(0), torch.ones(1, len(context), dtype=torch.bool)

    @torch.no_grad()
    def latent(self, context: Context = None) -> torch.Tensor:
        """The user latent z `(latent_dim,)` inferred from `context` (the population prior for `[]` or `None`)."""
        encoder = self.np_modules.encoder
        param = next(encoder.parameters())
        chosen, rejected, mask = (t.to(param.device) for t in self._context_tensors(context))
        return encoder(chosen.to(param.dtype), rejected.to(param.dtype), mask).mean[0]


def embedder_from_config(
    source: ContextEmbeddingConfig, model: nn.Module | None = None, tokenizer=None
) -> TextEmbedder | None:
    """The context embedder a saved config names: `model` itself for `"base"` (LoRA models), the encoder at
    `name_or_path` otherwise (for a frozen-embedding model, `"base"` is its backbone), `None` for precomputed."""
    kwargs = dict(pooling=source.pooling, max_length=source.max_length)
    if source.source == "precomputed":
        return None
    if source.source == "base" and model is not None:
        return TextEmbedder(model, tokenizer, **kwargs)
    return TextEmbedder.from_pretrained(source.name_or_path, tokenizer=tokenizer, **kwargs)


def load_gated_peft_model(
    path: str, auto_class, config: GatedLoRAModelConfig, modules: NPModules, base_model_name_or_path, dtype, **kw
):
    """Base model + gated PEFT adapter + NP modules from a local folder written by an NP trainer (safetensors and
    JSON); the base model is loaded with transformers from the name or path in the adapter config.

    Returns the PEFT model (with `fssa_np` attached), its tokenizer and the context embedder.
    """
    from peft import LoraConfig
    from transformers import AutoTokenizer

    lora_config = gated_lora_config(LoraConfig.from_pretrained(path))
    base_name = base_model_name_or_path or lora_config.base_model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = auto_class.from_pretrained(base_name, dtype=dtype, **kw)
    if tokenizer.pad_token_id is not None:
        base.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    model = PeftModel.from_pretrained(base, path, adapter_name=config.adapter_name, config=lora_config)
    model.fssa_np = modules.to(next(p.dtype for p in model.parameters() if p.is_floating_point()))
    return model, tokenizer, embedder_from_config(config.context_embedding, model, tokenizer)
