# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Train a tiny LoRA NP-DPO policy with [`NPDPOTrainer`], offline, under any `accelerate launch` config.

Used by `tests/test_distributed.py` with the CPU configs of `recipes/accelerate_configs/` (`multi_gpu_cpu.yaml`,
`zero2_cpu.yaml`, `zero3_cpu.yaml`: DDP, ZeRO-2, ZeRO-3 on 2 processes), and with `fsdp2.yaml` and
`zero3_offload.yaml` given `--num_processes 2 --mixed_precision no` (FSDP2 on CPU needs `--fsdp_on_cpu true`, see
`tiny_launch.force_fsdp_on_cpu`):

```sh
HF_HUB_OFFLINE=1 accelerate launch --config_file recipes/accelerate_configs/zero3_cpu.yaml \
    tests/scripts/train_np_dpo_tiny.py --output_dir /tmp/np-dpo-zero3 --use_cpu true
```

The same set-up as `train_np_reward_tiny.py` (read its docstring for why `--use_cpu true` is needed), with a tiny
causal LM: the base model and tokenizer are written to `<output_dir>/base`, the trainer loads the base from there, and
`SteerablePolicy.from_pretrained(<output_dir>)` finds it. Any [`NPDPOConfig`] field can be given as a flag.
"""

from __future__ import annotations

from peft import LoraConfig
from tiny_launch import TinyArguments, prepare_base, write_run_info
from trl import TrlParser

from fssa_trl import NPDPOConfig, NPDPOTrainer
from fssa_trl.testing_utils import style_preference_dataset, tiny_causal_lm, word_tokenizer


def make_parser() -> TrlParser:
    parser = TrlParser((TinyArguments, NPDPOConfig))
    # Small and fast by default; every value can be overridden on the command line.
    parser.set_defaults(
        pairs_per_user=16,
        eval_pairs_per_user=0,
        report_to="none",
        bf16=False,
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        beta=0.1,
        max_length=24,
        num_targets=4,
        max_context=3,
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
    base_model = tiny_causal_lm(tokenizer)
    script_args, training_args = make_parser().parse_args_and_config()
    base_path = prepare_base(base_model, tokenizer, script_args, training_args)
    del base_model

    eval_pairs = script_args.eval_pairs_per_user
    trainer = NPDPOTrainer(
        model=base_path,  # loaded from the path (partitioned at load under ZeRO-3), recorded in the adapter config
        args=training_args,
        train_dataset=style_preference_dataset(script_args.pairs_per_user, seed=0),
        eval_dataset=style_preference_dataset(eval_pairs, seed=1) if eval_pairs else None,
        processing_class=tokenizer,  # not loaded from base_path: see train_np_reward_tiny.py
        peft_config=LoraConfig(
            task_type="CAUSAL_LM",
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
