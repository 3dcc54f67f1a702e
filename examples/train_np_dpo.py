# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Train a few-shot steerable policy with conditioned DPO (NP-DPO), like TRL's `trl/scripts/dpo.py`.

No pretrained causal LM installs offline, so with no arguments the script builds a small Qwen2 causal LM in code
(random weights) and trains it on two users with opposite preferences over response styles ("A" prefers words
`a*`, "B" prefers words `b*`; `fssa_trl.testing_utils.style_preference_dataset`). It then prints the implicit-reward
accuracy on unseen pairs by context size for each user and saves the policy:

```
accelerate launch examples/train_np_dpo.py
python examples/steer_and_generate.py --model_path outputs/np-dpo-default
```

With `--model_name_or_path` and `--dataset_name` it trains any hub model on any preference dataset with a user
column (LoRA is always used: the hypernetwork modulates it):

```
accelerate launch examples/train_np_dpo.py \
    --model_name_or_path Qwen/Qwen2.5-1.5B-Instruct --dataset_name <org>/<dataset> \
    --use_peft --lora_r 16 --lora_target_modules all-linear --beta 0.05 --output_dir np-dpo
```
"""

from __future__ import annotations

import os
import sys

from datasets import load_dataset
from peft import LoraConfig
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from fssa_trl import NPDPOConfig, NPDPOTrainer, evaluate_few_shot

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_RECIPE = os.path.join(HERE, "..", "recipes", "np_dpo", "tiny_default.yaml")


def main(script_args, training_args, model_args):
    processing_class = None
    if script_args.dataset_name:
        dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
        train_dataset, test_dataset = (
            dataset[script_args.dataset_train_split],
            dataset.get(script_args.dataset_test_split),
        )
    else:
        from fssa_trl.testing_utils import style_preference_dataset

        train_dataset, test_dataset = style_preference_dataset(1024, seed=0), style_preference_dataset(40, seed=1)
    if model_args.model_name_or_path:
        model = model_args.model_name_or_path
        training_args.model_init_kwargs = {
            "revision": model_args.model_revision,
            "trust_remote_code": training_args.trust_remote_code,
            "attn_implementation": model_args.attn_implementation,
            "dtype": model_args.dtype,
            **(training_args.model_init_kwargs or {}),
        }
        peft_config = get_peft_config(model_args) or LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")
    else:  # the offline default: a small causal LM built in code
        from fssa_trl.testing_utils import tiny_causal_lm, word_tokenizer

        processing_class = word_tokenizer()
        # Saved first, so that the adapter records a base model that `SteerablePolicy.from_pretrained` can load.
        model = os.path.join(training_args.output_dir, "base")
        if training_args.process_index == 0:
            tiny_causal_lm(processing_class, seed=training_args.seed).save_pretrained(model)
            processing_class.save_pretrained(model)
        training_args.distributed_state.wait_for_everyone()
        peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])

    trainer = NPDPOTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processing_class,
        peft_config=peft_config,
        quantization_config=get_quantization_config(model_args),  # quantized layers cannot be gated: a clear error
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    if test_dataset is not None and trainer.accelerator.is_main_process:
        results = evaluate_few_shot(trainer, test_dataset, training_args.eval_context_sizes, name="NP-DPO")
        print(f"\nImplicit-reward {results}")
        results.to_json(os.path.join(training_args.output_dir, "few_shot_accuracy.json"))
        print(f"\nSaved the policy to {training_args.output_dir}")
    if training_args.push_to_hub:  # adapter, NP modules, fssa_config.json and the model card
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.end()  # finish the trackers and destroy the process group


def make_parser():
    return TrlParser((ScriptArguments, NPDPOConfig, ModelConfig))


if __name__ == "__main__":
    parser = make_parser()
    if len(sys.argv) == 1:  # no arguments: the offline default recipe
        sys.argv += ["--config", DEFAULT_RECIPE]
    main(*parser.parse_args_and_config())
