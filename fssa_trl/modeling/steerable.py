# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""What steerable reward models and steerable policies share: a user's context set -> latent z, saving and loading.

The inputs a caller passes (texts, contexts, latents) are checked by [`fssa_trl.modeling.inputs`].
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from huggingface_hub import CommitInfo
from huggingface_hub.utils import HFValidationError
from peft import PeftModel
from torch import nn

from ..data.embeddings import ContextEmbeddingStore, TextEmbedder, pair_text
from .config import FSSA_CONFIG_NAME, ContextEmbeddingConfig, GatedLoRAModelConfig, SteerableConfig
from .gated_lora import gated_lora_config
from .inputs import Context, check_batch_size, check_latent, check_texts, context_pairs
from .np_modules import NPModules, check_safetensors, load_np_modules, save_np_modules

if TYPE_CHECKING:
    from ..evaluation import FewShotResults

# Weight files that are unpickled on load: never read (see [`require_file`]).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclasses.dataclass
class PriorCalibration:
    """What [`SteerableModel.calibrate_prior`] did.

    Args:
        loss_before (`float`): mean negative log-likelihood of the pairs' choices at the empty context, before.
        loss_after (`float`): the same after fitting.
        shift_norm (`float`): norm of the fitted `prior_shift` (how far the 0-shot latent moved).
        num_pairs (`int`): pairs it was fitted on.
    """

    loss_before: float
    loss_after: float
    shift_norm: float
    num_pairs: int


class SteerableModel(nn.Module):
    """Base of the steerable reward models and [`SteerablePolicy`]: the trained model with its NP modules
    (`model.fssa_np`), the tokenizer and the context embedder; infers a user's latent from a context set.

    Args:
        model (`nn.Module`): the trained model, with [`NPModules`] attached as `model.fssa_np`.
        tokenizer: its tokenizer (`None` for a frozen-embedding model on precomputed embeddings).
        fssa_config ([`SteerableConfig`]): the saved configuration (`fssa_config.json`).
        embedder ([`TextEmbedder`], *optional*): embeds context texts (`None`: contexts are given as embeddings).

    Attributes:
        max_context (`int` or `None`): the largest context the model was trained with (the trainer's `max_context`,
            recorded in `fssa_config.json`; `None` when unknown, e.g. a folder saved before it was recorded). A larger
            context is still used whole, with one warning per model.
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
        self.max_context: int | None = getattr(fssa_config, "max_context", None)
        self._warned_max_context = False

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
        """Load a model saved by an NP trainer or by [`save_pretrained`], from a folder or a Hub repository. The
        class of the returned model follows the saved `model_type`; a folder of another kind raises an error naming
        the file and the field.

        What is read: `fssa_config.json` and `fssa_np.safetensors`; for LoRA models `adapter_config.json`,
        `adapter_model.safetensors` and the tokenizer's files, then the base model named in the adapter config (or
        `base_model_name_or_path`); for a frozen-embedding model the tokenizer and its backbone (unless trained on
        precomputed embeddings). Weights are read from safetensors only: a folder or base model with only pickled
        weights (`.bin`) is refused, never unpickled. A missing, truncated or mismatched file raises an error naming
        it.

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
        if isinstance(config, GatedLoRAModelConfig):
            _check_gates(model.modulator, config, path)
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
        prompts, responses = check_texts(prompts, responses)
        if self.embedder is None:
            raise ValueError(
                "This model was trained on precomputed embeddings: give context pairs as dicts with "
                "'chosen_embedding' and 'rejected_embedding' vectors."
            )
        texts = [pair_text(p, r, self.tokenizer) for p, r in zip(prompts, responses, strict=True)]
        indices = self._store.add_texts(texts)
        return self._store.vectors[indices]

    def _context_tensors(self, context: Context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(1, C, D)` chosen and rejected embeddings and the `(1, C)` mask of a checked context."""
        dim = self.np_modules.encoder.embedding_dim
        pairs, chosen, rejected = context_pairs(context, dim)
        if chosen is None:
            prompts = [p["prompt"] for p in pairs]
            chosen = self.embed_pairs(prompts, [p["chosen"] for p in pairs]) if pairs else torch.zeros(0, dim)
            rejected = self.embed_pairs(prompts, [p["rejected"] for p in pairs]) if pairs else torch.zeros(0, dim)
        if chosen.shape[-1] != dim:
            raise ValueError(f"Context embeddings have dimension {chosen.shape[-1]}, the encoder expects {dim}.")
        return chosen.unsqueeze(0), rejected.unsqueeze(0), torch.ones(1, len(chosen), dtype=torch.bool)

    def _warn_large_context(self, size: int) -> None:
        if self.max_context is not None and size > self.max_context and not self._warned_max_context:
            self._warned_max_context = True
            warnings.warn(
                f"The context has {size} pairs, more than the {self.max_context} this model was trained with: all "
                "are used (the encoder pools a set of any size), but the latent may drift from what training saw. "
                f"Pass at most {self.max_context} pairs to stay within it.",
                stacklevel=3,
            )

    @torch.no_grad()
    def latent(self, context: Context = None) -> torch.Tensor:
        """The user latent z `(latent_dim,)` inferred from `context` (the population prior for `[]` or `None`).

        `context` is a list of `{"prompt", "chosen", "rejected"}` pairs (or embedding pairs), a `datasets.Dataset` of
        them, or a dict of columns; it is checked (see [`fssa_trl.modeling.inputs`]) before anything is embedded. Every
        pair is used, however many: the encoder pools the set (a mean, shrunk mean, sum or attention over pairs), so
        any size is well defined. A model trained with `max_context` has seen sets of at most that size; when
        [`max_context`] is set, a larger context is still used whole, with a warning (once per model).
        """
        encoder = self.np_modules.encoder
        param = next(encoder.parameters())
        chosen, rejected, mask = self._context_tensors(context)
        self._warn_large_context(mask.shape[1])
        chosen, rejected, mask = chosen.to(param.device), rejected.to(param.device), mask.to(param.device)
        return encoder(chosen.to(param.dtype), rejected.to(param.dtype), mask).mean[0]

    def check_latent(self, latent, rows: int | None = None) -> torch.Tensor:
        """`latent` as a finite float tensor of shape `(latent_dim,)` (or `(rows, latent_dim)`, one per prompt, where
        `rows` is given); a `ValueError` otherwise."""
        return check_latent(latent, self.np_modules.encoder.latent_dim, rows)

    def _user_latent(self, context: Context, latent, rows: int | None = None) -> torch.Tensor:
        """The latent to score or generate at: `latent` (checked) or the latent of `context`, never both."""
        if latent is None:
            return self.latent(context)
        if context is not None:
            raise ValueError(
                "Pass either `context` (the user's choices) or `latent` (their z), not both: the context would be "
                "ignored."
            )
        return self.check_latent(latent, rows)

    # Every model with a latent defines `_scores_at(prompts, responses, latent, batch_size)`: `score` at a given
    # latent, on checked inputs, with autograd left as the caller set it (`(N,)` float32 CPU).
    def _scoring_inputs(self, prompts: list, responses: list):
        """What `_scores_at` takes as responses (texts here; embeddings for a frozen-embedding reward model)."""
        return responses

    def calibrate_prior(self, pairs: Context, max_iter: int = 20, batch_size: int = 16) -> PriorCalibration:
        """Fit the population prior, the latent of an empty context (an unknown user), to `pairs`: choices of many
        users, in any form `context` takes. The 0-shot latent becomes the one that best explains all these choices
        together (the largest mean log-likelihood of the BTL choice, or for a policy of DPO's implicit-reward choice):
        an empirical-Bayes prior. Only `encoder.prior_shift` changes; the latent of any non-empty context, and the other
        weights, do not. It is saved with the model.

        Training leaves the 0-shot model wherever the last updates from single users' episodes put it. When users
        disagree, a residual tilt far smaller than the margins a context gives can still decide every 0-shot choice:
        with two users of opposite tastes, the 0-shot model then sides with one of them on almost every pair. Fitted on
        pairs balanced across users, the prior sides with the population (for opposite users: with no one).

        Args:
            pairs: the population's choices, as `context` (texts; embedding pairs for a frozen-embedding model on
                precomputed embeddings). Give about as many pairs of each user: the prior weighs users as their pairs.
            max_iter (`int`): L-BFGS iterations (each scores every pair once or a few times).
            batch_size (`int`): sequences per forward pass.

        Returns:
            [`PriorCalibration`]: the loss before and after, and the size of the shift.
        """
        if self.np_modules is None or self.np_modules.encoder.latent_dim == 0:
            raise ValueError(f"{type(self).__name__} has no latent: there is no prior to calibrate.")
        check_batch_size(batch_size)
        if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
            raise ValueError(f"`max_iter` must be a positive int, got {max_iter!r}.")
        encoder = self.np_modules.encoder
        text_pairs, chosen, rejected = context_pairs(pairs, encoder.embedding_dim)
        if chosen is not None and not self.scores_embeddings:
            raise ValueError(
                "`pairs` gives embeddings, but this model scores texts: give {'prompt', 'chosen', 'rejected'} pairs."
            )
        if chosen is None and self.scores_embeddings:
            raise ValueError(
                "This model was trained on precomputed embeddings and scores them: give `pairs` as dicts with "
                "'chosen_embedding' and 'rejected_embedding' vectors."
            )
        prompts = [p["prompt"] for p in text_pairs] if chosen is None else [""] * len(chosen)
        if not prompts:
            raise ValueError("`pairs` is empty: the prior is fitted to the choices of a population of users.")
        if chosen is None:
            chosen = self._scoring_inputs(prompts, [p["chosen"] for p in text_pairs])
            rejected = self._scoring_inputs(prompts, [p["rejected"] for p in text_pairs])
        num_pairs = len(prompts)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                base = self.latent(None).float().cpu() - encoder.prior_shift.float().cpu()
            shift = encoder.prior_shift.detach().float().cpu().clone().requires_grad_(True)

            def objective(with_grad: bool = True) -> torch.Tensor:
                total, grad = 0.0, torch.zeros_like(shift)
                for start in range(0, num_pairs, batch_size):
                    end = min(start + batch_size, num_pairs)
                    with torch.enable_grad() if with_grad else torch.no_grad():
                        latent = base + shift
                        margins = self._scores_at(prompts[start:end], chosen[start:end], latent, batch_size)
                        margins = margins - self._scores_at(
                            prompts[start:end], rejected[start:end], latent, batch_size
                        )
                        loss = nn.functional.softplus(-margins.double()).sum() / num_pairs
                        if with_grad:
                            grad += torch.autograd.grad(loss, shift)[0]
                    total += loss.item()
                shift.grad = grad
                return torch.tensor(total, dtype=torch.float64)

            loss_before = objective(with_grad=False).item()
            optimizer = torch.optim.LBFGS(
                [shift], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-12
            )
            optimizer.step(objective)
            loss_after = objective(with_grad=False).item()
            if not loss_after <= loss_before:  # never worse than where it started
                return PriorCalibration(loss_before, loss_before, encoder.prior_shift.norm().item(), num_pairs)
            with torch.no_grad():
                encoder.prior_shift.copy_(shift.detach().to(encoder.prior_shift))
        finally:
            self.model.train(was_training)
        return PriorCalibration(loss_before, loss_after, encoder.prior_shift.norm().item(), num_pairs)

    def suggest_queries(
        self,
        candidates: Sequence[Mapping],
        context: Context = None,
        k: int = 1,
        strategy: str = "bald",
        num_samples: int = 32,
        seed: int = 0,
        batch_size: int = 16,
    ):
        """The `k` unlabelled candidate pairs to ask this user next, best first (`.indices`, `.scores`), by `"bald"`
        (needs `latent_type="gaussian"`), `"entropy"` or `"random"`; see [`fssa_trl.active.suggest_queries`]."""
        from ..active import suggest_queries

        return suggest_queries(self, candidates, context, k, strategy, num_samples, seed, batch_size)


# ----------------------------------------------------------------------------------------------------- loading
def require_file(folder: str, name: str, what: str) -> str:
    """`<folder>/<name>`, or a `ValueError` naming the folder and the missing file; a pickled file in its place
    (`adapter_model.bin` for `adapter_model.safetensors`) is refused, never read."""
    file = os.path.join(folder, name)
    if os.path.isfile(file):
        return file
    stem = name.split(".")[0]
    pickles = sorted(f for f in os.listdir(folder) if f.startswith(stem) and f.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ValueError(
            f"{folder!r} has {pickles[0]} but no {name} ({what}): fssa_trl reads weights from safetensors only, "
            "never from pickled files (loading one can run arbitrary code). If you trust the file, convert it: "
            f"`safetensors.torch.save_file(torch.load({pickles[0]!r}, weights_only=True), {name!r})` in that folder."
        )
    raise ValueError(
        f"{folder!r} has no {name} ({what}): the folder is incomplete (an interrupted save, copy or download?). Save "
        "or download the model again."
    )


def _only_pickled_weights(folder: str) -> bool:
    names = os.listdir(folder)
    return not any(n.endswith(".safetensors") for n in names) and any(n.endswith(PICKLE_SUFFIXES) for n in names)


def load_pretrained_model(auto_class, name_or_path: str | None, source: str, fix: str, **kwargs) -> nn.Module:
    """`auto_class.from_pretrained(name_or_path, use_safetensors=True, **kwargs)`: safetensors weights only. Errors
    say where the name came from (`source`) and how to give another (`fix`)."""
    if not name_or_path:
        raise ValueError(f"No model is named ({source}). {fix}")
    try:
        return auto_class.from_pretrained(name_or_path, use_safetensors=True, **kwargs)
    except (OSError, HFValidationError) as error:
        if os.path.isdir(name_or_path) and _only_pickled_weights(name_or_path):
            raise ValueError(
                f"{name_or_path!r} ({source}) holds only pickled weights (.bin): fssa_trl reads safetensors only, "
                "never pickled files (loading one can run arbitrary code). If you trust it, load it with transformers "
                "and `save_pretrained` it again (safetensors by default)."
            ) from error
        raise OSError(f"Cannot load {name_or_path!r} ({source}): {error}\n{fix}") from error


def _check_gates(modulator, config: GatedLoRAModelConfig, path: str) -> None:
    """The adapter's gated LoRA layers must be those the saved hypernetwork gates."""
    expected = (config.hypernetwork.num_layers, config.hypernetwork.rank)
    found = (modulator.num_layers, modulator.rank)
    if found != expected:
        raise ValueError(
            f"{os.path.join(path, FSSA_CONFIG_NAME)}: fields 'hypernetwork.num_layers' and 'hypernetwork.rank' are "
            f"{expected}, but the adapter in {path!r} has {found[0]} LoRA layers of rank {found[1]}: the files come "
            "from different models. Save or download the model again."
        )


def embedder_from_config(
    source: ContextEmbeddingConfig, model: nn.Module | None = None, tokenizer=None, fix: str | None = None
) -> TextEmbedder | None:
    """The context embedder a saved config names: `model` itself for `"base"` (LoRA models), the encoder at
    `name_or_path` otherwise (for a frozen-embedding model, `"base"` is its backbone), `None` for precomputed. An
    encoder is loaded from safetensors only; `fix` says how to name another when it cannot be loaded."""
    kwargs = dict(pooling=source.pooling, max_length=source.max_length)
    if source.source == "precomputed":
        return None
    if source.source == "base" and model is not None:
        return TextEmbedder(model, tokenizer, **kwargs)
    from transformers import AutoModel, AutoTokenizer

    where = f"{FSSA_CONFIG_NAME} field 'context_embedding.name_or_path'"
    fix = fix or "Make it loadable (offline: download it into the Hugging Face cache), or edit that field."
    encoder = load_pretrained_model(AutoModel, source.name_or_path, where, fix)
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(source.name_or_path)
    return TextEmbedder(encoder.eval().requires_grad_(False), tokenizer, name=source.name_or_path, **kwargs)


BASE_MODEL_FIX = (
    "Pass `base_model_name_or_path=` (in the CLI, `--base-model`): a local copy of the base model, or a Hub id "
    "that can be reached (offline: one in the cache)."
)


def load_gated_peft_model(
    path: str, auto_class, config: GatedLoRAModelConfig, modules: NPModules, base_model_name_or_path, dtype, **kw
):
    """Base model + gated PEFT adapter + NP modules from a local folder written by an NP trainer: `adapter_config.json`,
    `adapter_model.safetensors` and the tokenizer's files (never a pickle); the base model is loaded with transformers
    (safetensors only) from `base_model_name_or_path` or the name in the adapter config.

    Returns the PEFT model (with `fssa_np` attached), its tokenizer and the context embedder.
    """
    from peft import LoraConfig
    from transformers import AutoTokenizer

    adapter_config = require_file(path, "adapter_config.json", "the PEFT adapter's config")
    check_safetensors(require_file(path, "adapter_model.safetensors", "the PEFT adapter's weights"))
    require_file(path, "tokenizer_config.json", "the tokenizer")
    lora_config = gated_lora_config(LoraConfig.from_pretrained(path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if base_model_name_or_path:
        source = "given as `base_model_name_or_path`"
    else:
        source = f"the base model recorded in {adapter_config}, field 'base_model_name_or_path'"
    base_name = base_model_name_or_path or lora_config.base_model_name_or_path
    base = load_pretrained_model(auto_class, base_name, source, BASE_MODEL_FIX, dtype=dtype, **kw)
    if tokenizer.pad_token_id is not None:
        base.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    # PEFT would fall back to `adapter_model.bin`; the safetensors file was required above, and PEFT reads it first.
    model = PeftModel.from_pretrained(base, path, adapter_name=config.adapter_name, config=lora_config)
    model.fssa_np = modules.to(next(p.dtype for p in model.parameters() if p.is_floating_point()))
    return model, tokenizer, embedder_from_config(config.context_embedding, model, tokenizer)
