# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Export one user: a steerable model with one user's latent z folded in, written as a standard artifact that loads
without fssa_trl.

| steerable model | artifact | loads with |
|---|---|---|
| [`SteerableLoRARewardModel`] | PEFT LoRA adapter (`merge=True`: full weights) | `AutoPeftModelForSequenceClassification` |
| [`SteerablePolicy`] | PEFT LoRA adapter (`merge=True`: full weights) | `AutoPeftModelForCausalLM` |
| [`SteerableEmbeddingRewardModel`] | sentence-transformers folder, one output: the reward | `SentenceTransformer` |

The folding is exact (up to float rounding):

- gated LoRA: `W x + B diag(g(z)) A x * scaling` is plain LoRA with `B' = B diag(g(z))`; with `condition_reward_head`,
  the head term `score(h) + h . head(z)` is a score head with weights `w + head(z)`;
- concat decoder: `W1 [e; z] + b1 = W1_e e + (W1_z z + b1)`: z goes into the first Dense bias;
- FiLM decoder: `w . (h * (1 + gamma(z)) + beta(z)) + c = (w * (1 + gamma(z))) . h + (w . beta(z) + c)`: z goes into
  the read-out; the DPL head keeps its mean row only.

Beside the artifact: the tokenizer, a model card (`README.md`) and `fssa_export.json` ([`ExportRecord`]).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass

import torch
from torch import nn

from ..data.embeddings import _backbone
from ..version import __version__
from .gated_lora import folded_lora_weights
from .hypernetwork import Modulation
from .inputs import context_rows
from .policy import SteerablePolicy
from .reward_head import EmbeddingRewardDecoder
from .reward_model import SteerableEmbeddingRewardModel, SteerableLoRARewardModel
from .steerable import Context, SteerableModel

EXPORT_RECORD_NAME = "fssa_export.json"
EXPORT_FORMAT_VERSION = 1
ARTIFACTS = ("peft-adapter", "merged", "sentence-transformers")


@dataclass(kw_only=True)
class ExportRecord:
    """The steering facts of an export, written to `fssa_export.json` beside it (provenance: nothing reads it back).

    Args:
        artifact (`str`): `"peft-adapter"`, `"merged"` or `"sentence-transformers"`.
        source_model_type (`str`): the `model_type` of the steerable model's `fssa_config.json`.
        base_model (`str`, *optional*): the base model of the adapter, or the frozen backbone.
        latent (`list[float]`): the user latent z that was folded in.
        num_context_pairs (`int`, *optional*): how many context pairs z was inferred from (`0`: the population prior);
            `None` when z was given directly.
    """

    artifact: str
    source_model_type: str
    base_model: str | None
    latent: list[float]
    num_context_pairs: int | None
    format_version: int = EXPORT_FORMAT_VERSION
    fssa_trl_version: str = __version__

    def __post_init__(self):
        if self.artifact not in ARTIFACTS:
            raise ValueError(f"field 'artifact' must be one of {ARTIFACTS}, got {self.artifact!r}.")

    def save(self, output_dir: str) -> None:
        with open(os.path.join(output_dir, EXPORT_RECORD_NAME), "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(self), f, indent=2, sort_keys=True)
            f.write("\n")


def export_user(
    model: SteerableModel,
    output_dir: str,
    context: Context = None,
    latent: torch.Tensor | None = None,
    merge: bool = False,
    *,
    base_model_name_or_path: str | None = None,
) -> str:
    r"""Write the model of one user, given by `context` (their choices) or `latent` (their z), as a standard artifact
    that loads without fssa_trl: a PEFT LoRA adapter (LoRA reward models and policies), full merged weights
    (`merge=True`), or a sentence-transformers folder whose single output is the reward (frozen-embedding reward
    models). Neither `context` nor `latent` exports the population prior (an unknown user). The live model is not
    changed; `merge=True` holds a second copy of the model while it writes.

    Also writes the tokenizer, a model card (`README.md`, with a usage snippet that shows the exact input format)
    and `fssa_export.json` (the latent, the number of context pairs, the fssa_trl version).

    Args:
        model ([`SteerableLoRARewardModel`], [`SteerablePolicy`] or [`SteerableEmbeddingRewardModel`]): the model.
        output_dir (`str`): the folder to write.
        context (`list[dict]`, *optional*): the user's choices, `{"prompt", "chosen", "rejected"}` dicts.
        latent (`torch.Tensor` of shape `(latent_dim,)`, *optional*): the user's z, instead of `context`.
        merge (`bool`, *optional*, defaults to `False`): write merged full weights instead of an adapter (LoRA models).
        base_model_name_or_path (`str`, *optional*): the base model the adapter names (default: the one it was
            trained on); e.g. a Hub id when the model was trained from a local copy.

    Returns:
        `str`: `output_dir`.

    Example:

    ```python
    >>> from fssa_trl import SteerableRewardModel
    >>> rm = SteerableRewardModel.from_pretrained("np-rm")
    >>> rm.export("rm-alice", context=alice_choices)  # a PEFT adapter: AutoPeftModelForSequenceClassification
    ```
    """
    if isinstance(model, SteerableEmbeddingRewardModel):
        if merge:
            raise ValueError(
                "A frozen-embedding reward model exports a whole sentence-transformers model already: drop `merge=True`."
            )
        if base_model_name_or_path is not None:
            raise ValueError(
                "A frozen-embedding reward model exports its backbone's weights: drop `base_model_name_or_path`."
            )
    elif not isinstance(model, (SteerableLoRARewardModel, SteerablePolicy)):
        raise ValueError(
            f"Only steerable models can export a user, got a {type(model).__name__}: a context-free reward model is a "
            "plain model already (save it with `save_pretrained`)."
        )
    z, num_pairs = _user_latent(model, context, latent)
    os.makedirs(output_dir, exist_ok=True)
    if isinstance(model, SteerableEmbeddingRewardModel):
        base_model = _export_sentence_transformer(model, output_dir, z)
        artifact = "sentence-transformers"
    else:
        base_model = _export_gated_lora(model, output_dir, z, merge, base_model_name_or_path)
        artifact = "merged" if merge else "peft-adapter"
    ExportRecord(
        artifact=artifact,
        source_model_type=model.fssa_config.model_type,
        base_model=base_model,
        latent=z.tolist(),
        num_context_pairs=num_pairs,
    ).save(output_dir)
    name = os.path.basename(os.path.normpath(os.path.abspath(output_dir)))
    _write_model_card(model, output_dir, name, base_model, artifact)
    return output_dir


def _user_latent(model: SteerableModel, context: Context, latent) -> tuple[torch.Tensor, int | None]:
    """The user's z `(latent_dim,)` (float32, CPU) and the number of context pairs it came from; `context` and
    `latent` are checked as `score` checks them."""
    if context is not None and latent is not None:
        raise ValueError("Pass either `context` (the user's choices) or `latent` (their z) to export, not both.")
    if latent is None:
        return model.latent(context).detach().float().cpu(), len(context_rows(context))
    return model.check_latent(latent).detach().float().cpu(), None


# --------------------------------------------------------------------------------------------------- gated LoRA
def _export_gated_lora(model, output_dir: str, z: torch.Tensor, merge: bool, base_model_name_or_path) -> str | None:
    """Fold z into the LoRA B matrices (and the reward head), save an adapter or merged weights and the tokenizer.
    Returns the base model the adapter names."""
    peft_model = model.model
    adapter = model.fssa_config.adapter_name
    base_model = base_model_name_or_path or _recorded_base(peft_model, adapter)
    if not merge and not base_model:
        raise ValueError(
            "The adapter records no base model (it was trained on a model built in memory): pass "
            "`base_model_name_or_path` (where the base model can be loaded from), or `merge=True` for full weights."
        )
    hypernetwork = model.np_modules.hypernetwork
    param = next(hypernetwork.parameters())
    with torch.no_grad():
        modulation = hypernetwork(z.to(param.device, param.dtype).unsqueeze(0))
    folded = _folded_parameters(peft_model, modulation, adapter, getattr(model.modulator, "head_module", None), merge)
    if merge:
        _save_merged(peft_model, folded, output_dir)
    else:
        _save_adapter(peft_model, folded, adapter, output_dir, base_model)
    # Reward models score right-padded batches (as the live model does); generation pads prompts on the left.
    _save_tokenizer(model.tokenizer, output_dir, "left" if isinstance(model, SteerablePolicy) else "right")
    return base_model


def _save_tokenizer(tokenizer, output_dir: str, padding_side: str) -> None:
    """Save a copy of `tokenizer` that pads on `padding_side` once loaded (transformers 5 saves the padding side
    only from the init arguments)."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.padding_side = tokenizer.init_kwargs["padding_side"] = padding_side
    tokenizer.save_pretrained(output_dir)


def _recorded_base(peft_model, adapter: str) -> str | None:
    recorded = peft_model.peft_config[adapter].base_model_name_or_path
    return recorded or getattr(peft_model.get_base_model(), "name_or_path", None) or None


@torch.no_grad()
def _folded_parameters(peft_model, modulation: Modulation, adapter: str, head_module, merge: bool) -> dict:
    """`{parameter name: folded value}` for one user: every gated `lora_B` times its gates (B diag(g)), and the
    reward head's weight plus the head direction (`score(h) + h . head = (w + head) . h`)."""
    names = {id(p): name for name, p in peft_model.named_parameters(remove_duplicate=False)}
    folded = {
        names[id(weight)]: value for weight, value in folded_lora_weights(peft_model, modulation.gates[0], adapter)
    }
    if modulation.head is not None:
        from peft.utils import ModulesToSaveWrapper

        wrapped = isinstance(head_module, ModulesToSaveWrapper)
        target = head_module.modules_to_save[adapter] if wrapped else head_module
        if not isinstance(target, nn.Linear) or target.out_features != 1:
            raise ValueError(f"Cannot fold the latent into a reward head of type {type(target).__name__}.")
        if not wrapped and not merge:
            raise ValueError(
                "The reward head is not part of the adapter (not in the LoRA config's `modules_to_save`), so the "
                "user's head direction cannot be saved in it: export with `merge=True`."
            )
        weight = target.weight  # (1, hidden)
        folded[names[id(weight)]] = (weight + modulation.head[0].to(weight.dtype).unsqueeze(0)).detach()
    return folded


def _save_adapter(peft_model, folded: dict, adapter: str, output_dir: str, base_model: str) -> None:
    """PEFT's own `save_pretrained` on the model's state dict with the folded values in place of the live ones."""
    state_dict = {**peft_model.state_dict(), **folded}
    peft_model.save_pretrained(output_dir, selected_adapters=[adapter], state_dict=state_dict)
    if adapter != "default":  # PEFT writes other adapters into a subfolder; the export is the only adapter
        subfolder = os.path.join(output_dir, adapter)
        for name in os.listdir(subfolder):
            os.replace(os.path.join(subfolder, name), os.path.join(output_dir, name))
        os.rmdir(subfolder)
    # PEFT's config as written (plain LoRA: the gated layers' registration is not saved), with the base model named.
    path = os.path.join(output_dir, "adapter_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config["base_model_name_or_path"] = base_model
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def _save_merged(peft_model, folded: dict, output_dir: str) -> None:
    """Full weights: a copy of the model with the folded values, LoRA merged in and unloaded."""
    merged = copy.deepcopy(peft_model)
    if hasattr(merged, "fssa_np"):
        del merged.fssa_np
    with torch.no_grad():
        for name, value in folded.items():
            merged.get_parameter(name).copy_(value)
    merged = merged.merge_and_unload()
    merged.save_pretrained(output_dir)


# ------------------------------------------------------------------------------------------- frozen embeddings
def _export_sentence_transformer(model: SteerableEmbeddingRewardModel, output_dir: str, z: torch.Tensor) -> str:
    """Transformer + Pooling (as [`TextEmbedder`] embeds) + the decoder as Dense layers with z folded in."""
    embedder = model.embedder
    if embedder is None:
        raise ValueError(
            "This model was trained on precomputed embeddings: it has no text encoder to export, and the reward needs "
            "your embeddings. Export a model trained with a text backbone (`context_embedding='base'` or an encoder)."
        )
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise ImportError(
            "Exporting a frozen-embedding reward model writes a sentence-transformers model: "
            "`pip install 'fssa_trl[export]'` (or `pip install sentence-transformers`)."
        ) from error
    try:
        from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Dense, Pooling, Transformer

    tokenizer = embedder.tokenizer
    if tokenizer.pad_token is None:  # TextEmbedder pads with EOS (masked out); sentence-transformers needs a pad token
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if tokenizer.pad_token is None:
            raise ValueError("The embedder's tokenizer has no pad, EOS or unknown token to pad with.")
    _backbone(embedder.model).save_pretrained(output_dir)
    _save_tokenizer(tokenizer, output_dir, "right")  # as TextEmbedder pads: positions count from the first token
    transformer = Transformer(output_dir, max_seq_length=embedder.max_length)
    pooling = Pooling(
        model.np_modules.encoder.embedding_dim, pooling_mode={"mean": "mean", "last": "lasttoken"}[embedder.pooling]
    )
    dense = [
        Dense(
            weight.shape[1],
            weight.shape[0],
            activation_function=nn.GELU() if gelu else nn.Identity(),
            init_weight=weight.contiguous().clone(),  # slices of the decoder's weights: own storage to save
            init_bias=bias.contiguous().clone(),
        )
        for weight, bias, gelu in _decoder_layers(model.np_modules.decoder, z)
    ]
    SentenceTransformer(modules=[transformer, pooling, *dense], device="cpu").save(output_dir, create_model_card=False)
    return model.fssa_config.context_embedding.name_or_path


@torch.no_grad()
def _decoder_layers(decoder: EmbeddingRewardDecoder, z: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, bool]]:
    """`(weight, bias, GELU after)` of each linear layer of `e -> decoder(e, z)` at this z (float32, CPU), the last
    one reduced to the mean row (the DPL head's second row is its log-variance)."""
    if decoder.conditioning == "concat":
        modules = list(decoder.mlp)
    else:
        modules = [*decoder.features[0], decoder.features[1], decoder.readout]
    layers: list[list] = []
    for module in modules:
        if isinstance(module, nn.Linear):
            layers.append([module.weight.float().cpu(), module.bias.float().cpu(), False])
        elif isinstance(module, nn.GELU) and module.approximate == "none" and layers and not layers[-1][2]:
            layers[-1][2] = True
        else:
            raise ValueError(f"Cannot export the decoder layer {module!r}: expected Linear layers with exact GELUs.")
    z = z.float().cpu()
    if decoder.conditioning == "concat":  # W1 [e; z] + b1 = W1_e e + (W1_z z + b1)
        weight, bias, gelu = layers[0]
        dim = weight.shape[1] - z.shape[0]
        layers[0] = [weight[:, :dim], bias + weight[:, dim:] @ z, gelu]
    elif decoder.film is not None:  # w . (h (1 + gamma) + beta) + c = (w (1 + gamma)) . h + (w . beta + c)
        gamma, beta = nn.functional.linear(
            z, decoder.film.weight.float().cpu(), decoder.film.bias.float().cpu()
        ).chunk(2)
        weight, bias, gelu = layers[-1]
        layers[-1] = [weight * (1 + gamma).unsqueeze(0), bias + weight @ beta, gelu]
    weight, bias, gelu = layers[-1]
    layers[-1] = [weight[:1], bias[:1], gelu]
    return [tuple(layer) for layer in layers]


# ------------------------------------------------------------------------------------------------ model card
def _write_model_card(model, output_dir: str, name: str, base_model: str | None, artifact: str) -> None:
    from ..model_card import steerable_model_card

    library_name = {"peft-adapter": "peft", "merged": "transformers", "sentence-transformers": "sentence-transformers"}
    card = steerable_model_card(
        model_name=name,
        base_model=base_model,
        kind="dpo" if isinstance(model, SteerablePolicy) else "reward-model",
        artifact="exported-user",
        usage=usage_snippet(model, name, artifact),
        tags=("lora",) if artifact == "peft-adapter" else (),
        library_name=library_name[artifact],
    )
    card.save(os.path.join(output_dir, "README.md"))  # after PEFT's or sentence-transformers' own, which it replaces


EXAMPLE_PROMPTS = ["Q: What is the capital of France? A: ", "Q: What is the capital of France? A: "]
EXAMPLE_RESPONSES = ["Paris.", "The capital of France is Paris, on the Seine."]


def usage_snippet(
    model: SteerableModel, model_id: str, artifact: str, prompts: list | None = None, responses: list | None = None
) -> str:
    """The Python snippet of an export's model card: loads it without fssa_trl and builds the inputs exactly as the
    steerable model does (the tests run it with their own `prompts` and `responses`)."""
    prompts = EXAMPLE_PROMPTS if prompts is None else prompts
    responses = EXAMPLE_RESPONSES if responses is None else responses
    header = f'model_id = "{model_id}"  # this folder, or the Hub repo it was pushed to\n'
    if isinstance(model, SteerableEmbeddingRewardModel):
        return _ST_USAGE.format(header=header, prompts=prompts, responses=responses)
    if isinstance(model, SteerablePolicy):
        return _POLICY_USAGE.format(load=_POLICY_LOAD[artifact].format(header=header), prompts=prompts)
    load = _REWARD_LOAD[artifact].format(header=header)
    return _REWARD_USAGE.format(load=load, prompts=prompts, responses=responses)


_REWARD_LOAD = {
    "peft-adapter": (
        "from peft import AutoPeftModelForSequenceClassification\n"
        "from transformers import AutoTokenizer\n\n{header}"
        "model = AutoPeftModelForSequenceClassification.from_pretrained(model_id, num_labels=1).eval()\n"
    ),
    "merged": (
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n{header}"
        "model = AutoModelForSequenceClassification.from_pretrained(model_id).eval()\n"
    ),
}
_REWARD_USAGE = (
    "import torch\n{load}"
    "tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
    "model.config.pad_token_id = tokenizer.pad_token_id\n\n"
    "prompts = {prompts!r}\n"
    "responses = {responses!r}\n"
    "# The text as in training (TRL's RewardTrainer): prompt + response, ending with the EOS token. Conversations:\n"
    "# input_ids = tokenizer.apply_chat_template(prompt_messages + response_messages, tokenize=True)['input_ids'].\n"
    "eos = tokenizer.eos_token or ''\n"
    "texts = [p + r if (p + r).endswith(eos) else p + r + eos for p, r in zip(prompts, responses)]\n"
    'batch = tokenizer(texts, padding=True, padding_side="right", return_tensors="pt")\n'
    "with torch.no_grad():\n"
    "    rewards = model(**batch).logits[:, 0]\n"
    "print(rewards)\n"
)
_POLICY_LOAD = {
    "peft-adapter": (
        "from peft import AutoPeftModelForCausalLM\n"
        "from transformers import AutoTokenizer\n\n{header}"
        "model = AutoPeftModelForCausalLM.from_pretrained(model_id).eval()\n"
    ),
    "merged": (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n{header}"
        "model = AutoModelForCausalLM.from_pretrained(model_id).eval()\n"
    ),
}
_POLICY_USAGE = (
    "{load}"
    "tokenizer = AutoTokenizer.from_pretrained(model_id)\n\n"
    "prompts = {prompts!r}\n"
    "# Prompts as in training: plain text as is, without special tokens added. Conversations:\n"
    "# tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True).\n"
    'batch = tokenizer(prompts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt")\n'
    "output = model.generate(**batch, max_new_tokens=64, do_sample=False, pad_token_id=tokenizer.pad_token_id)\n"
    'completions = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)\n'
    "print(completions)\n"
)
_ST_USAGE = (
    "from sentence_transformers import SentenceTransformer\n\n{header}"
    "model = SentenceTransformer(model_id)\n\n"
    "prompts = {prompts!r}\n"
    "responses = {responses!r}\n"
    "# The text the reward model embeds: prompt + response (nothing appended). Conversations:\n"
    "# tokenizer.apply_chat_template(prompt_messages + response_messages, tokenize=False) with the tokenizer's chat\n"
    '# template, else "role: content" lines joined by newlines.\n'
    "texts = [p + r for p, r in zip(prompts, responses)]\n"
    "rewards = model.encode(texts, convert_to_tensor=True)[:, 0]  # the single output is the reward\n"
    "print(rewards)\n"
)
