# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Train a tiny LoRA NP-BTL reward model with [`NPRewardTrainer`], offline, under any `accelerate launch` config.

Used by `tests/test_distributed.py` with DeepSpeed ZeRO-3 on CPU:

```sh
HF_HUB_OFFLINE=1 accelerate launch --config_file recipes/accelerate_configs/zero3_cpu.yaml \
    tests/scripts/train_np_reward_tiny.py --output_dir /tmp/np-rm-zero3 --use_cpu true
```

`--use_cpu true` is needed on a machine without GPU even though the config says `use_cpu: true`: accelerate's
DeepSpeed launcher does not pass that key on, and without it every process believes it is the only one (two "main"
processes writing one output folder) while DeepSpeed partitions over both.

The tiny base model and its tokenizer are built in code and written to `<output_dir>/base` by the main process; the
trainer then loads the base from that path, so the saved adapter records it as `base_model_name_or_path` and
`SteerableRewardModel.from_pretrained(<output_dir>)` finds it. Any [`NPRewardConfig`] field can be given as a flag.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from accelerate import PartialState
from peft import LoraConfig
from trl import TrlParser

from fssa_trl import NPRewardConfig, NPRewardTrainer
from fssa_trl.testing_utils import style_preference_dataset, tiny_reward_model, word_tokenizer


@dataclass
class TinyArguments:
    pairs_per_user: int = field(default=32, metadata={"help": "Preference pairs of each of the two users."})
    eval_pairs_per_user: int = field(default=12, metadata={"help": "Evaluation pairs per user (0: no eval)."})
    lora_r: int = field(default=4, metadata={"help": "LoRA rank."})
    zero3_param_persistence_threshold: int | None = field(
        default=None,
        metadata={
            "help": "DeepSpeed `stage3_param_persistence_threshold`: ZeRO-3 never partitions parameters with at most "
            "this many elements. DeepSpeed's default (1e5) keeps every parameter of the tiny model whole on every "
            "process, so set 0 to really partition them."
        },
    )


def make_parser() -> TrlParser:
    parser = TrlParser((TinyArguments, NPRewardConfig))
    # Small and fast by default; every value can be overridden on the command line.
    parser.set_defaults(
        report_to="none",
        bf16=False,
        max_steps=4,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        num_targets=8,
        max_context=4,
        eval_context_sizes=[0, 2],
        latent_dim=8,
        encoder_hidden_dim=16,
        hypernetwork_hidden_dim=16,
        context_max_length=32,
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        disable_tqdm=True,
    )
    return parser


def main() -> None:
    # Built before the training arguments exist: once they do, ZeRO-3's `zero.Init` partitions every model built,
    # collectively, so the main process could not build one on its own.
    tokenizer = word_tokenizer()
    base_model = tiny_reward_model(tokenizer)
    script_args, training_args = make_parser().parse_args_and_config()

    base_path = os.path.join(training_args.output_dir, "base")
    if training_args.process_index == 0:
        tokenizer.save_pretrained(base_path)
        base_model.save_pretrained(base_path)
    PartialState().wait_for_everyone()  # the state was set up by the training arguments
    del base_model

    threshold = script_args.zero3_param_persistence_threshold
    if threshold is not None and training_args.deepspeed_plugin is not None:  # the accelerate config has no such key
        zero_config = training_args.deepspeed_plugin.deepspeed_config["zero_optimization"]
        zero_config["stage3_param_persistence_threshold"] = threshold

    eval_pairs = script_args.eval_pairs_per_user
    trainer = NPRewardTrainer(
        model=base_path,  # loaded from the path (partitioned at load under ZeRO-3), recorded in the adapter config
        args=training_args,
        train_dataset=style_preference_dataset(script_args.pairs_per_user, seed=0),
        eval_dataset=style_preference_dataset(eval_pairs, seed=1) if eval_pairs else None,
        # Not loaded from base_path: for a folder whose config.json says qwen2, transformers 5's AutoTokenizer builds
        # a Qwen2Tokenizer (qwen2 is in MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS), which drops all our words.
        processing_class=tokenizer,
        peft_config=LoraConfig(
            task_type="SEQ_CLS",
            r=script_args.lora_r,
            lora_alpha=2 * script_args.lora_r,
            target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
        ),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    metrics = trainer.evaluate() if eval_pairs else {}
    if trainer.accelerator.is_main_process:  # what actually ran, for the test to check
        plugin = trainer.accelerator.state.deepspeed_plugin
        info = {
            "distributed_type": str(trainer.accelerator.distributed_type),
            "num_processes": trainer.accelerator.num_processes,
            "zero_stage": None if plugin is None else plugin.zero_stage,
            "global_step": trainer.state.global_step,
            "train_losses": [log["loss"] for log in trainer.state.log_history if "loss" in log],
            "eval_metrics": metrics,
        }
        with open(os.path.join(training_args.output_dir, "run_info.json"), "w", encoding="utf-8") as f:
            json.dump(info, f)
    trainer.end()  # destroys the process group; without it a rank can abort at exit ("terminate called ...")


if __name__ == "__main__":
    main()
