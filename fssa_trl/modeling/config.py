# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The saved configuration of a steerable model (`fssa_config.json`): typed, validated and versioned.

Every folder written by an NP trainer holds `fssa_config.json` beside `fssa_np.safetensors` (the NP modules). Its
`model_type` selects one [`SteerableConfig`] subclass, one per kind of model:

| `model_type` | class | written by | loaded by |
|---|---|---|---|
| `np_lora_reward_model` | [`LoRARewardModelConfig`] | `NPRewardTrainer` | `SteerableRewardModel` (LoRA) |
| `np_embedding_reward_model` | [`EmbeddingRewardModelConfig`] | `NPEmbeddingRewardTrainer` | `SteerableRewardModel` (embedding) |
| `np_dpo_policy` | [`PolicyConfig`] | `NPDPOTrainer` | `SteerablePolicy` |

Reading checks the file against the class: an unknown or missing key, a value of the wrong type, a newer
`format_version` or a `model_type` of the wrong kind raise a `ValueError` that names the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from ..version import __version__

FSSA_CONFIG_NAME = "fssa_config.json"
FORMAT_VERSION = 1
EMBEDDING_SOURCES = ("base", "precomputed", "encoder")


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def _matches(value, annotation) -> bool:
    """Whether a JSON value has the annotated type (`bool` is not an `int`; an `int` is a `float`)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(annotation))
    if origin is list:
        return isinstance(value, list) and all(_matches(v, typing.get_args(annotation)[0]) for v in value)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _from_dict(cls, data: Any, source: str, prefix: str = ""):
    """Build dataclass `cls` from JSON `data`, checking keys and types; errors name `source` and the field."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: field {prefix.rstrip('.') or '<root>'!r} must be an object, got {data!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"{source}: unknown field {prefix + unknown[0]!r} for {cls.__name__} (known: {sorted(fields)}). The file "
            "was written by another fssa_trl version or edited by hand."
        )
    kwargs = {}
    for name, spec in fields.items():
        if name not in data:
            if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ValueError(f"{source}: missing field {prefix + name!r} of {cls.__name__}.")
            continue
        annotation, value = hints[name], data[name]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) and value is not None:
            nested = [a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a)]
            annotation = nested[0] if nested else annotation  # `SubConfig | None` holding an object
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = _from_dict(annotation, value, source, f"{prefix}{name}.")
        elif not _matches(value, annotation):
            raise ValueError(
                f"{source}: field {prefix + name!r} must be {_type_name(annotation)}, got {type(value).__name__} "
                f"{value!r}."
            )
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from error


def _positive(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"field {name!r} of {type(config).__name__} must be >= 1, got {value}.")


@dataclass(kw_only=True)
class LatentEncoderConfig:
    """Arguments of [`NPLatentEncoder`]."""

    embedding_dim: int
    latent_dim: int
    hidden_dim: int
    aggregation: str
    latent_type: str
    num_heads: int
    pair_features: str = "concat"  # files written before 0.2 used the concatenation
    bounded: bool = False  # files written before the bounded latent have an unbounded one

    def __post_init__(self):
        _positive(self, "embedding_dim", "hidden_dim", "num_heads")  # latent_dim 0: a context-free baseline
        if self.latent_dim < 0:
            raise ValueError(f"field 'latent_dim' of LatentEncoderConfig must be >= 0, got {self.latent_dim}.")


@dataclass(kw_only=True)
class HypernetworkConfig:
    """Arguments of [`LoRAHypernetwork`]."""

    latent_dim: int
    num_layers: int
    rank: int
    hidden_dim: int
    head_dim: int | None = None
    init_std: float = 0.0

    def __post_init__(self):
        _positive(self, "num_layers", "rank", "hidden_dim", "head_dim")


@dataclass(kw_only=True)
class RewardDecoderConfig:
    """Arguments of [`EmbeddingRewardDecoder`]."""

    embedding_dim: int
    latent_dim: int
    hidden_dim: int
    num_layers: int
    head: str
    conditioning: str = "concat"  # files written before 0.2 used the concatenation

    def __post_init__(self):
        _positive(self, "embedding_dim", "hidden_dim", "num_layers")


@dataclass(kw_only=True)
class ContextEmbeddingConfig:
    """Where the context embeddings e(prompt, response) come from.

    `source` is `"base"` (the model's own frozen base, adapters off; for a frozen-embedding reward model, the backbone
    at `name_or_path`), `"encoder"` (the Hugging Face encoder at `name_or_path`) or `"precomputed"` (vectors given
    by the user).
    """

    source: str
    name_or_path: str | None = None
    pooling: str = "mean"
    max_length: int = 256

    def __post_init__(self):
        if self.source not in EMBEDDING_SOURCES:
            raise ValueError(f"field 'source' must be one of {EMBEDDING_SOURCES}, got {self.source!r}.")
        if self.source == "encoder" and not self.name_or_path:
            raise ValueError("field 'name_or_path' is required when 'source' is 'encoder'.")
        _positive(self, "max_length")


@dataclass(kw_only=True)
class SteerableConfig:
    """Base of the saved configs: the latent encoder, the context embeddings and the versions.

    Subclasses set `model_type`, which is written to and dispatched on from the file.
    """

    model_type: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[SteerableConfig]]] = {}

    encoder: LatentEncoderConfig
    context_embedding: ContextEmbeddingConfig
    # The largest context size drawn in training (`max_context`); `None` where not recorded (files saved before 0.2).
    max_context: int | None = None
    format_version: int = FORMAT_VERSION
    fssa_trl_version: str = __version__

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.model_type:
            SteerableConfig._registry[cls.model_type] = cls

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **dataclasses.asdict(self)}

    def to_json(self, path: str) -> None:
        """Write the config to the JSON file `path`."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    def save_pretrained(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        self.to_json(os.path.join(folder, FSSA_CONFIG_NAME))

    @classmethod
    def from_json(cls, path: str) -> SteerableConfig:
        """Read and validate a config file. Called on a subclass, the file must hold that kind of model."""
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error}).") from error
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}.")
        data = dict(data)
        model_type = data.pop("model_type", None)
        if model_type is None:
            raise ValueError(
                f"{path}: missing field 'model_type'. Files without it were written by fssa_trl 0.1 (format 0): "
                "train or save the model again with this version."
            )
        target = SteerableConfig._registry.get(model_type)
        if target is None:
            raise ValueError(
                f"{path}: field 'model_type' is {model_type!r}, expected one of {sorted(SteerableConfig._registry)}."
            )
        if not issubclass(target, cls):
            raise ValueError(
                f"{path}: field 'model_type' is {model_type!r}, a {target.__name__}, but a {cls.__name__} was "
                f"expected: load this folder with {target.loaded_by}."
            )
        version = data.get("format_version", FORMAT_VERSION)
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise ValueError(
                f"{path}: field 'format_version' is {version}, but this fssa_trl reads format {FORMAT_VERSION} at "
                "most: upgrade fssa_trl."
            )
        return _from_dict(target, data, path)

    @classmethod
    def from_pretrained(cls, folder: str) -> SteerableConfig:
        """Read `<folder>/fssa_config.json` (see [`SteerableConfig.from_json`])."""
        path = os.path.join(folder, FSSA_CONFIG_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"{folder!r} has no {FSSA_CONFIG_NAME}: it was not saved by an fssa_trl trainer.")
        return cls.from_json(path)

    # The public class that loads this kind of model, for error messages.
    loaded_by: ClassVar[str] = ""


@dataclass(kw_only=True)
class GatedLoRAModelConfig(SteerableConfig):
    """Base of the configs of models whose LoRA layers the hypernetwork gates (LoRA reward models and policies)."""

    hypernetwork: HypernetworkConfig
    adapter_name: str = "default"
    # The auxiliary NP-BTL decoder on the context embeddings (trained with `context_btl_weight > 0`), kept so that
    # a checkpoint restores it; not used at inference.
    decoder: RewardDecoderConfig | None = None


@dataclass(kw_only=True)
class RewardModelConfig(SteerableConfig):
    """Base of the reward-model configs (what `SteerableRewardModel.from_pretrained` accepts)."""


@dataclass(kw_only=True)
class LoRARewardModelConfig(RewardModelConfig, GatedLoRAModelConfig):
    """A LoRA reward model (`NPRewardTrainer`): a sequence-classification model whose LoRA layers are gated by z."""

    model_type: ClassVar[str] = "np_lora_reward_model"
    loaded_by: ClassVar[str] = "SteerableRewardModel.from_pretrained"

    condition_reward_head: bool = False

    def __post_init__(self):
        if self.condition_reward_head and self.hypernetwork.head_dim is None:
            raise ValueError("field 'condition_reward_head' is true but 'hypernetwork.head_dim' is null.")


@dataclass(kw_only=True)
class EmbeddingRewardModelConfig(RewardModelConfig):
    """A reward model on frozen embeddings (`NPEmbeddingRewardTrainer`): r = MLP([e(x, y), z]) or FiLM
    (`decoder.conditioning`)."""

    model_type: ClassVar[str] = "np_embedding_reward_model"
    loaded_by: ClassVar[str] = "SteerableRewardModel.from_pretrained"

    decoder: RewardDecoderConfig

    def __post_init__(self):
        if self.context_embedding.source == "base" and not self.context_embedding.name_or_path:
            raise ValueError("field 'context_embedding.name_or_path' (the frozen backbone) is required.")


@dataclass(kw_only=True)
class PolicyConfig(GatedLoRAModelConfig):
    """A policy (`NPDPOTrainer`): a causal LM whose LoRA layers are gated by z; `beta` scales its implicit reward."""

    model_type: ClassVar[str] = "np_dpo_policy"
    loaded_by: ClassVar[str] = "SteerablePolicy.from_pretrained"

    beta: float = 0.1
