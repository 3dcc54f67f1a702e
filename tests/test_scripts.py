# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""The example scripts take TRL's script flags: quantization through `get_quantization_config` (refused with a clear
error before any weight is loaded: quantized layers cannot be gated) and `--push_to_hub`."""

import importlib.util
import os
import sys

import pytest
from transformers import BitsAndBytesConfig

from fssa_trl import NPDPOConfig, NPDPOTrainer, NPRewardConfig, NPRewardTrainer
from fssa_trl.testing_utils import style_preference_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(ROOT, "examples", name))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("trainer_class", "config_class"), [(NPRewardTrainer, NPRewardConfig), (NPDPOTrainer, NPDPOConfig)]
)
@pytest.mark.parametrize("where", ["argument", "model_init_kwargs"])
def test_lora_trainers_refuse_a_quantized_base_before_loading_it(trainer_class, config_class, where, tmp_path):
    quantization = BitsAndBytesConfig(load_in_4bit=True)
    init_kwargs = {"quantization_config": quantization} if where == "model_init_kwargs" else None
    args = config_class(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, model_init_kwargs=init_kwargs
    )
    kwargs = {"quantization_config": quantization} if where == "argument" else {}
    # A model name that does not exist: the error must come before any attempt to load it.
    with pytest.raises(ValueError, match="quantized base model.*--load_in_4bit"):
        trainer_class(
            model="no-such-org/no-such-model", args=args, train_dataset=style_preference_dataset(8), **kwargs
        )


@pytest.mark.parametrize("script", ["train_np_reward_lora.py", "train_np_dpo.py", "train_np_reward.py"])
def test_scripts_honour_the_quantization_flags_with_a_clear_error(script, tmp_path):
    module = load_script(script)
    argv = ["--output_dir", str(tmp_path), "--load_in_4bit", "--report_to", "none", "--use_cpu", "--bf16", "false"]
    with pytest.raises(ValueError, match="load_in_4bit"):
        module.main(*module.make_parser().parse_args_and_config(args=argv))


@pytest.mark.parametrize("script", ["train_np_reward_lora.py", "train_np_dpo.py"])
def test_scripts_push_to_hub_like_trl_scripts(script, tmp_path, hub):
    module = load_script(script)
    argv = ["--output_dir", str(tmp_path), "--report_to", "none", "--use_cpu", "--bf16", "false", "--max_steps", "1"]
    argv += ["--save_strategy", "no", "--push_to_hub", "--hub_model_id", "org/np-model", "--eval_context_sizes", "0"]
    module.main(*module.make_parser().parse_args_and_config(args=argv))
    uploaded = hub.files("org/np-model")
    assert {"fssa_np.safetensors", "fssa_config.json", "adapter_model.safetensors", "README.md"} <= uploaded


def ultrafeedback_like():
    """Rows in UltraFeedback's layout: 3 rated responses per prompt (ratings are strings, "N/A" when missing)."""
    from datasets import Dataset

    def completion(text, helpful, honest):
        return {"response": text, "annotations": {"helpfulness": {"Rating": helpful}, "honesty": {"Rating": honest}}}

    rows = []
    for i in range(20):
        rows.append(
            {
                "instruction": f"question {i}",
                "completions": [
                    completion(f"long answer {i}", "5", "2"),
                    completion(f"short answer {i}", "2", "5"),
                    completion(f"other answer {i}", "N/A", "4"),
                ],
            }
        )
    return Dataset.from_list(rows)


def test_prepare_attribute_users_makes_one_user_per_attribute_split_by_prompt():
    module = load_script("prepare_attribute_users.py")
    train, test = module.prepare(ultrafeedback_like(), ["helpfulness", "honesty"], True, test_size=0.25, seed=0)
    assert not set(train["prompt"]) & set(test["prompt"])
    assert len(set(test["prompt"])) == 5
    rows = train.to_list() + test.to_list()
    # Per prompt: (long, short) conflicts -> one row per attribute; (long, other) and (short, other) are decided by
    # honesty only ("N/A" helpfulness), so they are not conflicting and are dropped.
    assert len(rows) == 20 * 2
    for row in rows:
        i = row["prompt"].split()[-1]
        expected = {"helpfulness": f"long answer {i}", "honesty": f"short answer {i}"}[row["user_id"]]
        assert row["chosen"] == expected and row["rejected"] != expected


def test_prepare_attribute_users_names_the_layout_it_reads():
    from datasets import Dataset

    module = load_script("prepare_attribute_users.py")
    with pytest.raises(ValueError, match="'instruction'.*users_from_attributes"):
        module.prepare(Dataset.from_dict({"prompt": ["q"]}), ["helpfulness"], False, 0.5, 0)
