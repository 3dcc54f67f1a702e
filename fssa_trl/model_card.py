# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Model cards of steerable models and of the per-user artifacts exported from them, in TRL's conventions.

A card is a [`huggingface_hub.ModelCard`] rendered from a Jinja template (`resources/templates/`, as TRL renders
`trl/templates/*.md`): YAML metadata (`base_model`, `library_name`, tags), a quick start, the few-shot accuracy table
when there is one, the framework versions, and the citations of the method paper and of TRL.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from importlib import metadata, resources

from huggingface_hub import ModelCard, ModelCardData

from .evaluation import FewShotResults

KINDS = ("reward-model", "dpo")
ARTIFACTS = ("steerable", "exported-user")
BASE_TAGS = ("fssa-trl", "trl", "few-shot-steerable-alignment")
TEMPLATE = "resources/templates/steerable_model_card.md"

PAPER = {
    "title": "Few-shot Steerable Alignment: Adapting Rewards and LLM Policies with Neural Processes",
    "id": "2412.13998",
    # docstyle-ignore
    "citation": textwrap.dedent("""\
        @article{kobalczyk2024fewshot,
            title        = {{Few-shot Steerable Alignment: Adapting Rewards and LLM Policies with Neural Processes}},
            author       = {Katarzyna Kobalczyk and Claudio Fanconi and Hao Sun and Mihaela van der Schaar},
            year         = 2024,
            eprint       = {arXiv:2412.13998},
        }"""),
}

# What the model is, by (kind, artifact): the first paragraph of the card.
_SUMMARIES = {
    ("reward-model", "steerable"): (
        "A few-shot steerable reward model: it scores responses for one user after reading a handful of that user's "
        "pairwise choices (a context set), at inference time and with no gradient step. A neural-process encoder maps "
        "the context to a latent z that conditions the reward; an empty context gives the population's reward."
    ),
    ("dpo", "steerable"): (
        "A few-shot steerable policy: it generates for one user after reading a handful of that user's pairwise "
        "choices (a context set), at inference time and with no gradient step. A neural-process encoder maps the "
        "context to a latent z, and a hypernetwork turns z into gates of every LoRA layer; an empty context gives the "
        "population's policy."
    ),
    ("reward-model", "exported-user"): (
        "One user's reward model, exported from a few-shot steerable reward model: the latent z inferred from this "
        "user's context is fixed (folded into the weights where the model is a LoRA model), so it loads without "
        "fssa_trl and scores every input for this user."
    ),
    ("dpo", "exported-user"): (
        "One user's policy, exported from a few-shot steerable policy: the latent z inferred from this user's context "
        "is folded into a plain LoRA adapter, so it loads with PEFT and transformers alone and generates for this user."
    ),
}
_TRAINER_NAMES = {"reward-model": "NP-BTL", "dpo": "NP-DPO"}
_METHOD_NOTES = {
    "reward-model": (
        "NP-BTL extends the Bradley-Terry-Luce model to heterogeneous preferences: "
        "p(a > b | x, z) = sigmoid(r(x, a, z) - r(x, b, z)), with z inferred from the user's context set."
    ),
    "dpo": (
        "NP-DPO conditions the policy on z and trains it with the objective of "
        "[Direct Preference Optimization](https://huggingface.co/papers/2305.18290) (TRL's `DPOTrainer` loss) on each "
        "user's pairs given that user's context."
    ),
}
# Pipelines that load an exported artifact without fssa_trl.
_PIPELINE_TAGS = {"reward-model": "text-classification", "dpo": "text-generation"}
_FEW_SHOT_KEY = re.compile(r"^(?:(?P<prefix>.+)_)?accuracy_ctx(?P<size>\d+)$")
_PREFIX_LABELS = {"eval": "evaluation set", "heldout": "held-out training pairs", "": "training episodes"}
_FRAMEWORKS = (
    ("fssa_trl", "fssa_trl"),
    ("TRL", "trl"),
    ("PEFT", "peft"),
    ("Transformers", "transformers"),
    ("Pytorch", "torch"),
    ("Datasets", "datasets"),
    ("Tokenizers", "tokenizers"),
)


def steerable_model_card(
    *,
    model_name: str,
    base_model: str | None,
    kind: str,
    artifact: str,
    usage: str,
    few_shot: FewShotResults | Mapping[str, float] | None = None,
    hub_model_id: str | None = None,
    tags: Sequence[str] = (),
    library_name: str | None = None,
    dataset_name: str | None = None,
    trainer_name: str | None = None,
    pipeline_tag: str | None = None,
) -> ModelCard:
    r"""The model card of a steerable model or of one user's exported artifact, as a [`~huggingface_hub.ModelCard`]
    (save it with `card.save(os.path.join(folder, "README.md"))`).

    Args:
        model_name (`str`): the title of the card.
        base_model (`str` or `None`): the Hub id of the model fine-tuned (metadata `base_model`); a local path is
            left out of the metadata, which the Hub would reject.
        kind (`str`): `"reward-model"` or `"dpo"` (a policy).
        artifact (`str`): `"steerable"` (the encoder and hypernetwork, loaded with fssa_trl) or `"exported-user"`
            (one user's folded adapter or pipeline, loadable without fssa_trl).
        usage (`str`): a Python snippet, shown under "Quick start" (see [`steerable_usage`]).
        few_shot ([`FewShotResults`] or `dict`, *optional*): the accuracy on unseen pairs by context size, as
            returned by [`evaluate_few_shot`] (one row per user), or metrics as logged by the NP trainers
            (`eval_accuracy_ctx0`, `heldout_accuracy_ctx3`, ...; one row per prefix, other keys ignored).
        hub_model_id (`str`, *optional*): the repository the card is for (metadata `model_name` falls back to it).
        tags (`Sequence[str]`): tags added to `fssa-trl`, `trl`, `few-shot-steerable-alignment` and `kind`.
        library_name (`str`, *optional*): the library that loads the folder's weights, for the Hub (`"peft"` for an
            adapter, `"transformers"` for a full model, `"sentence-transformers"`, ...); `None` leaves it out.
        dataset_name (`str`, *optional*): the Hub id of the training dataset.
        trainer_name (`str`, *optional*): the method named in the card; defaults to `NP-BTL` or `NP-DPO` by `kind`.
        pipeline_tag (`str`, *optional*): the Hub task of an exported artifact; defaults to `text-classification`
            (reward model) or `text-generation` (policy). A steerable artifact has none: no Hub pipeline loads it.

    Example:

    ```python
    >>> from fssa_trl.model_card import steerable_model_card, steerable_usage
    >>> card = steerable_model_card(
    ...     model_name="np-rm",
    ...     base_model="Qwen/Qwen2.5-0.5B-Instruct",
    ...     kind="reward-model",
    ...     artifact="steerable",
    ...     usage=steerable_usage("reward-model", "me/np-rm"),
    ...     few_shot={"eval_accuracy_ctx0": 0.52, "eval_accuracy_ctx5": 0.81},
    ...     library_name="peft",
    ... )
    >>> card.data.tags
    ['fssa-trl', 'trl', 'few-shot-steerable-alignment', 'reward-model']
    ```
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}.")
    if artifact not in ARTIFACTS:
        raise ValueError(f"`artifact` must be one of {ARTIFACTS}, got {artifact!r}.")
    if pipeline_tag is not None and artifact == "steerable":
        raise ValueError(
            f"`pipeline_tag={pipeline_tag!r}` names a Hub pipeline, but no pipeline loads a steerable model (it needs "
            "fssa_trl): drop it, or use it with `artifact='exported-user'`."
        )
    if not usage or not usage.strip():
        raise ValueError("`usage` must be a Python snippet that loads the model; got an empty string.")
    if base_model is not None and _is_local_path(base_model):
        base_model = None
    caption, table = few_shot_table(few_shot) if few_shot is not None else (None, None)
    snippet = usage.strip("\n")
    card_data = ModelCardData(
        base_model=base_model,
        datasets=dataset_name,
        library_name=library_name,
        model_name=model_name,
        pipeline_tag=(pipeline_tag or _PIPELINE_TAGS[kind]) if artifact == "exported-user" else None,
        tags=list(dict.fromkeys([*BASE_TAGS, kind, *tags])),
    )
    template = resources.files("fssa_trl").joinpath(TEMPLATE)
    return ModelCard.from_template(
        card_data,
        template_str=template.read_text(encoding="utf-8"),
        model_name=model_name,
        base_model=base_model,
        hub_model_id=hub_model_id,
        dataset_name=dataset_name,
        summary=_SUMMARIES[(kind, artifact)],
        usage_block=f"```python\n{snippet}\n```",  # fenced here: a formatter would reformat a fenced template
        few_shot_caption=caption,
        few_shot_table=table,
        trainer_name=trainer_name or _TRAINER_NAMES[kind],
        method_note=_METHOD_NOTES[kind],
        paper_title=PAPER["title"],
        paper_id=PAPER["id"],
        paper_citation=PAPER["citation"],
        framework_versions=framework_versions(),
    )


def steerable_model_card_of(
    model,
    fssa_config,
    *,
    model_name: str,
    model_id: str,
    few_shot: FewShotResults | Mapping[str, float] | None = None,
    hub_model_id: str | None = None,
    tags: Sequence[str] = (),
    dataset_name: str | None = None,
    trainer_name: str | None = None,
) -> ModelCard:
    """The card of a steerable model (artifact `"steerable"`): kind, base model, library and usage follow its saved
    config. What `SteerableModel.save_pretrained` and the NP trainers' `save_model` write as README.md.

    Args:
        model (`nn.Module`): the trained model (the PEFT model of a LoRA model, whose adapter config names the base).
        fssa_config ([`SteerableConfig`]): its saved configuration.
        model_name (`str`): the title of the card.
        model_id (`str`): the Hub id or folder the usage snippet loads.
        few_shot, hub_model_id, tags, dataset_name, trainer_name: as in [`steerable_model_card`].
    """
    from .modeling.config import GatedLoRAModelConfig, PolicyConfig

    kind = "dpo" if isinstance(fssa_config, PolicyConfig) else "reward-model"
    if isinstance(fssa_config, GatedLoRAModelConfig):  # the PEFT adapter is loaded on its base model
        peft_config = getattr(model, "peft_config", {}).get(fssa_config.adapter_name)
        base_model, library_name = getattr(peft_config, "base_model_name_or_path", None), "peft"
    else:  # frozen embeddings: only the NP modules are saved; the backbone is named in the config
        base_model, library_name = fssa_config.context_embedding.name_or_path, None
    precomputed = fssa_config.context_embedding.source == "precomputed"
    return steerable_model_card(
        model_name=model_name,
        base_model=base_model,
        kind=kind,
        artifact="steerable",
        usage=steerable_usage(kind, model_id, precomputed_embeddings=precomputed),
        few_shot=few_shot,
        hub_model_id=hub_model_id,
        tags=["np-dpo" if kind == "dpo" else "np-btl", *tags],
        library_name=library_name,
        dataset_name=dataset_name,
        trainer_name=trainer_name,
    )


def few_shot_metrics(log_history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The last logged value of every evaluation metric `<prefix>_accuracy_ctx<C>` (`eval_`, `heldout_`, ...) in a
    trainer's `state.log_history`; training metrics (no prefix) are left out."""
    latest = {}
    for logs in log_history:
        for key, value in logs.items():
            match = _FEW_SHOT_KEY.match(key)
            if match and match["prefix"]:
                latest[key] = value
    return latest


def steerable_usage(kind: str, model_id: str, precomputed_embeddings: bool = False) -> str:
    """The quick-start snippet of a steerable model: load it from `model_id` (a Hub id or a folder) and use it for
    one user given a context list. `precomputed_embeddings`: a reward model trained on precomputed embeddings takes
    its context and responses as embedding vectors."""
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}.")
    if kind == "dpo":
        return textwrap.dedent(f"""\
            from fssa_trl import SteerablePolicy

            policy = SteerablePolicy.from_pretrained("{model_id}")
            # A few of one user's choices: the policy adapts to this user, with no gradient step.
            context = [
                {{"prompt": "How do I boil an egg?", "chosen": "Boil it for 9 minutes, then cool it.", "rejected": "Eggs have been boiled since antiquity; the method varies."}},
                {{"prompt": "Name a prime number.", "chosen": "7.", "rejected": "A prime has exactly two divisors, so 7 is one."}},
            ]
            print(policy.generate(["Tell me about Paris."], context=context, max_new_tokens=64)[0])""")
    if precomputed_embeddings:
        return textwrap.dedent(f"""\
            from fssa_trl import SteerableRewardModel

            reward_model = SteerableRewardModel.from_pretrained("{model_id}")
            # A few of one user's choices, as the embeddings e(prompt, response) the model was trained on.
            context = [{{"chosen_embedding": chosen_vector, "rejected_embedding": rejected_vector}}]
            rewards = reward_model.score([None] * len(response_vectors), response_vectors, context=context)""")
    return textwrap.dedent(f"""\
        from fssa_trl import SteerableRewardModel

        reward_model = SteerableRewardModel.from_pretrained("{model_id}")
        # A few of one user's choices: the reward model adapts to this user, with no gradient step.
        context = [
            {{"prompt": "How do I boil an egg?", "chosen": "Boil it for 9 minutes, then cool it.", "rejected": "Eggs have been boiled since antiquity; the method varies."}},
            {{"prompt": "Name a prime number.", "chosen": "7.", "rejected": "A prime has exactly two divisors, so 7 is one."}},
        ]
        prompts = ["What is the capital of France?"] * 2
        rewards = reward_model.score(prompts, ["Paris.", "The capital of France is Paris, on the Seine."], context=context)""")


def few_shot_table(few_shot: FewShotResults | Mapping[str, float]) -> tuple[str, str]:
    """A caption and a Markdown table of accuracy (%) on unseen pairs, one column per context size: one row per user
    (and all users) for a [`FewShotResults`], one row per metric prefix for logged metrics (`eval_accuracy_ctx3`)."""
    if isinstance(few_shot, FewShotResults):
        sizes = few_shot.context_sizes
        rows = [(user, [few_shot.accuracy(s, user) for s in sizes]) for user in few_shot.users]
        rows.append(("all users", [few_shot.accuracy(s) for s in sizes]))
        caption = f"Accuracy (%) of `{few_shot.name}` on unseen preference pairs, by number of context pairs:"
        return caption, _markdown_table("user", sizes, rows)
    if not isinstance(few_shot, Mapping):
        raise TypeError(f"`few_shot` must be a FewShotResults or a dict of metrics, got {type(few_shot).__name__}.")
    by_prefix: dict[str, dict[int, float]] = {}
    for key, value in few_shot.items():
        match = _FEW_SHOT_KEY.match(key)
        if match:
            by_prefix.setdefault(match["prefix"] or "", {})[int(match["size"])] = float(value)
    if not by_prefix:
        raise ValueError(
            f"`few_shot` has no accuracy-by-context-size metric (keys like 'eval_accuracy_ctx0'); got {sorted(few_shot)}."
        )
    sizes = sorted({size for values in by_prefix.values() for size in values})
    rows = [
        (
            f"{_PREFIX_LABELS.get(prefix, prefix)} (`{prefix}`)" if prefix else _PREFIX_LABELS[""],
            [values.get(s) for s in sizes],
        )
        for prefix, values in by_prefix.items()
    ]
    caption = "Accuracy (%) on unseen preference pairs, by number of context pairs (the last evaluation logged):"
    return caption, _markdown_table("pairs", sizes, rows)


def _markdown_table(label: str, sizes: Sequence[int], rows: Sequence[tuple[str, Sequence[float | None]]]) -> str:
    lines = [f"| {label} | " + " | ".join(str(s) for s in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for name, values in rows:
        cells = ["" if v is None else f"{100 * v:.1f}" for v in values]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def framework_versions() -> list[tuple[str, str]]:
    """(name, version) of the libraries a card lists, as TRL's cards do; those not installed are left out."""
    versions = []
    for name, distribution in _FRAMEWORKS:
        try:
            versions.append((name, metadata.version(distribution)))
        except metadata.PackageNotFoundError:
            if distribution == "fssa_trl":
                from .version import __version__

                versions.append((name, __version__))
    return versions


def _is_local_path(name: str) -> bool:
    import os

    return os.path.isabs(name) or name.startswith((".", "~")) or os.path.isdir(name)
