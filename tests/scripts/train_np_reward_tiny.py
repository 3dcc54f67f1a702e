# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Train a tiny LoRA NP-BTL reward model with [`NPRewardTrainer`], offline, under any `accelerate launch` config.

Used by `tests/test_distributed.py` with the CPU configs of `recipes/accelerate_configs/` (`multi_gpu_cpu.yaml`,
`zero2_cpu.yaml`, `zero3_cpu.yaml`: DDP, ZeRO-2, ZeRO-3 on 2 processes), and with `fsdp2.yaml` and
`zero3_offload.yaml` given `--num_processes 2 --mixed_precision no` (FSDP2 on CPU needs `--fsdp_on_cpu true`, see
`tiny_launch.force_fsdp_on_cpu`):

```sh
HF_HUB_OFFLINE=1 accelerate launch --config_file recipes/accelerate_configs/zero3_cpu.yaml \
    tests/scripts/train_np_reward_tiny.py --output_dir /tmp/np-rm-zero3 --use_cpu true
```

`--use_cpu true` is needed on a machine without GPU even though the config says `use_cpu: true`: accelerate's
DeepSpeed and torchrun (MULTI_GPU, FSDP) launchers do not pass that key on, and without it every process believes it
is the only one (two "main" processes writing one output folder), while DeepSpeed partitions over both.

The tiny base model and its tokenizer are built in code and written to `<output_dir>/base` by the main process; the
trainer then loads the base from that path, so the saved adapter records it as `base_model_name_or_path` and
`SteerableRewardModel.from_pretrained(<output_dir>)` finds it. Any [`NPRewardConfig`] field can be given as a flag.
"""

from __future__ import annotations

from peft import LoraConfig
from tiny_launch import TinyArguments, prepare_base, write_run_info
from trl import TrlParser

from fssa_trl import NPRewardConfig, NPRewardTrainer
from fssa_trl.testing_utils import style_preference_dataset, tiny_reward_model, word_tokenizer


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
    # Built before the training arguments exist (see `prepare_base`).
    tokenizer = word_tokenizer()
    base_model = tiny_reward_model(tokenizer)
    script_args, training_args = make_parser().parse_args_and_config()
    base_path = prepare_base(base_model, tokenizer, script_args, training_args)
    del base_model

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
    write_run_info(trainer, metrics)
    trainer.end()  # destroys the process group; without it a rank can abort at exit ("terminate called ...")


if __name__ == "__main__":
    main()
