# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Model cards: `steerable_model_card` in TRL's conventions, and the cards the NP trainers write (save_model, TRL's
checkpoint path), each read back with `huggingface_hub.ModelCard.load`."""

import os
import re

import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig

from fssa_trl import (
    FewShotResults,
    NPDPOConfig,
    NPDPOTrainer,
    NPEmbeddingRewardConfig,
    NPEmbeddingRewardTrainer,
    NPRewardConfig,
    NPRewardTrainer,
)
from fssa_trl.model_card import few_shot_metrics, steerable_model_card, steerable_usage
from fssa_trl.testing_utils import style_preference_dataset, tiny_causal_lm, tiny_reward_model, word_tokenizer

TINY = dict(
    report_to="none",
    use_cpu=True,
    bf16=False,
    disable_tqdm=True,
    save_strategy="no",
    per_device_train_batch_size=4,
    learning_rate=3e-3,
    num_targets=8,
    max_context=4,
    eval_context_sizes=[0, 2],
    latent_dim=8,
    encoder_hidden_dim=16,
    seed=0,
)
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


def bibtex_blocks(text: str) -> list[str]:
    return re.findall(r"```bibtex\n(.*?)```", text, flags=re.S)


def load_card(folder) -> ModelCard:
    return ModelCard.load(os.path.join(folder, "README.md"))


def save_and_load(card: ModelCard, tmp_path) -> ModelCard:
    card.save(tmp_path / "README.md")
    return load_card(tmp_path)


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


# ------------------------------------------------------------------------------------------ steerable_model_card
def test_card_metadata_usage_table_versions_and_citations(tmp_path):
    usage = steerable_usage("reward-model", "me/np-rm")
    few_shot = {"eval_accuracy_ctx0": 0.5, "eval_accuracy_ctx4": 0.875, "eval_loss": 0.6, "heldout_accuracy_ctx4": 1}
    card = save_and_load(
        steerable_model_card(
            model_name="np-rm",
            base_model="Qwen/Qwen2.5-0.5B-Instruct",
            kind="reward-model",
            artifact="steerable",
            usage=usage,
            few_shot=few_shot,
            hub_model_id="me/np-rm",
            tags=["np-btl", "trl"],
            library_name="peft",
            dataset_name="me/prefs",
        ),
        tmp_path,
    )
    assert card.data.base_model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert card.data.library_name == "peft"
    assert card.data.datasets == "me/prefs"
    assert card.data.tags == ["fssa-trl", "trl", "few-shot-steerable-alignment", "reward-model", "np-btl"]
    assert card.data.pipeline_tag is None  # a steerable model needs fssa_trl: no Hub pipeline loads it
    text = card.text
    assert f"```python\n{usage}\n```" in text
    assert 'SteerableRewardModel.from_pretrained("me/np-rm")' in usage and "context=context" in usage
    assert "| evaluation set (`eval`) | 50.0 | 87.5 |" in text
    assert "| held-out training pairs (`heldout`) |  | 100.0 |" in text
    assert "eval_loss" not in text
    for name in ("fssa_trl", "TRL", "PEFT", "Transformers", "Pytorch"):
        assert f"- {name}: " in text
    ours, trl = bibtex_blocks(text)
    assert "arXiv:2412.13998" in ours and "Kobalczyk" in ours and "Few-shot Steerable Alignment" in ours
    assert "vonwerra2020trl" in trl
    assert "https://huggingface.co/papers/2412.13998" in text


def test_dpo_card_credits_np_dpo_and_cites_dpo_only_as_the_objective(tmp_path):
    card = save_and_load(
        steerable_model_card(
            model_name="np-dpo",
            base_model="Qwen/Qwen2.5-0.5B-Instruct",
            kind="dpo",
            artifact="steerable",
            usage=steerable_usage("dpo", "me/np-dpo"),
        ),
        tmp_path,
    )
    text = card.text
    assert "dpo" in card.data.tags
    assert "trained with NP-DPO, a method introduced in [Few-shot Steerable Alignment" in text
    assert "Cite NP-DPO as" in text
    blocks = bibtex_blocks(text)
    assert len(blocks) == 2 and "2412.13998" in blocks[0]
    assert not any("rafailov" in b or "Direct Preference" in b for b in blocks)
    (introduced,) = [line for line in text.splitlines() if "a method introduced in" in line]
    assert "2412.13998" in introduced and "2305.18290" not in introduced
    assert "the objective of [Direct Preference Optimization](https://huggingface.co/papers/2305.18290)" in text
    assert "## Few-shot accuracy" not in text  # no evaluation given
    assert 'SteerablePolicy.from_pretrained("me/np-dpo")' in text and "context=context" in text


def test_few_shot_results_give_one_row_per_user_and_all_users(tmp_path):
    records = [
        {"user": "A", "context_size": 0, "accuracy": 0.5, "num_pairs": 4},
        {"user": "A", "context_size": 3, "accuracy": 0.75, "num_pairs": 4},
        {"user": "B", "context_size": 0, "accuracy": 0.25, "num_pairs": 4},
        {"user": "B", "context_size": 3, "accuracy": 1.0, "num_pairs": 4},
    ]
    card = steerable_model_card(
        model_name="m",
        base_model=None,
        kind="reward-model",
        artifact="steerable",
        usage="print('hi')",
        few_shot=FewShotResults(records, name="NP-BTL"),
    )
    text = save_and_load(card, tmp_path).text
    assert "Accuracy (%) of `NP-BTL`" in text
    assert "| user | 0 | 3 |" in text
    for row in ("| A | 50.0 | 75.0 |", "| B | 25.0 | 100.0 |", "| all users | 37.5 | 87.5 |"):
        assert row in text


def test_exported_user_card_takes_the_library_and_gets_a_pipeline(tmp_path):
    card = save_and_load(
        steerable_model_card(
            model_name="user-a",
            base_model="Qwen/Qwen2.5-0.5B-Instruct",
            kind="dpo",
            artifact="exported-user",
            usage="from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained('me/a')",
            library_name="peft",
        ),
        tmp_path,
    )
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert "One user's policy, exported" in card.text and "AutoPeftModelForCausalLM" in card.text
    embedder = steerable_model_card(
        model_name="user-a",
        base_model=None,
        kind="reward-model",
        artifact="exported-user",
        usage="x = 1",
        library_name="sentence-transformers",
        pipeline_tag="feature-extraction",
    )
    assert embedder.data.library_name == "sentence-transformers" and embedder.data.pipeline_tag == "feature-extraction"


def test_a_local_base_model_is_left_out_of_the_metadata(tmp_path):
    card = steerable_model_card(
        model_name="m", base_model=str(tmp_path), kind="reward-model", artifact="steerable", usage="x = 1"
    )
    assert card.data.base_model is None and str(tmp_path) not in card.text


def test_bad_arguments_are_named():
    kwargs = dict(model_name="m", base_model=None, kind="reward-model", artifact="steerable", usage="x = 1")
    with pytest.raises(ValueError, match="`kind` must be one of"):
        steerable_model_card(**{**kwargs, "kind": "rm"})
    with pytest.raises(ValueError, match="`artifact` must be one of"):
        steerable_model_card(**{**kwargs, "artifact": "user"})
    with pytest.raises(ValueError, match="no pipeline loads a steerable model"):
        steerable_model_card(**kwargs, pipeline_tag="text-classification")
    with pytest.raises(ValueError, match="`usage` must be a Python snippet"):
        steerable_model_card(**{**kwargs, "usage": "  "})
    with pytest.raises(ValueError, match="no accuracy-by-context-size metric"):
        steerable_model_card(**kwargs, few_shot={"eval_loss": 0.3})
    with pytest.raises(TypeError, match="FewShotResults or a dict"):
        steerable_model_card(**kwargs, few_shot=[0.5])


def test_few_shot_metrics_keep_the_last_evaluation_and_drop_training_metrics():
    history = [
        {"loss": 0.7, "accuracy_ctx2": 0.9, "step": 1},
        {"eval_accuracy_ctx0": 0.4, "eval_accuracy_ctx2": 0.6, "step": 1},
        {"eval_accuracy_ctx0": 0.5, "eval_accuracy_ctx2": 0.8, "heldout_accuracy_ctx2": 0.7, "step": 2},
    ]
    assert few_shot_metrics(history) == {
        "eval_accuracy_ctx0": 0.5,
        "eval_accuracy_ctx2": 0.8,
        "heldout_accuracy_ctx2": 0.7,
    }


# ------------------------------------------------------------------------------------------------ trainer cards
def test_reward_trainer_save_model_writes_our_card_with_its_evaluation(tokenizer, tmp_path):
    base = tiny_reward_model(tokenizer)
    base.config._name_or_path = base.name_or_path = "fssa-testing/tiny-qwen2-rm"  # as if loaded from the Hub
    trainer = NPRewardTrainer(
        model=base,
        args=NPRewardConfig(output_dir=str(tmp_path / "np-rm"), max_steps=1, hypernetwork_hidden_dim=16, **TINY),
        train_dataset=style_preference_dataset(24),
        eval_dataset=style_preference_dataset(12, seed=1),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="SEQ_CLS", **LORA),
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()
    card = load_card(tmp_path / "np-rm")  # written after PEFT's own card, which it replaces
    assert card.data.base_model == "fssa-testing/tiny-qwen2-rm"
    assert card.data.library_name == "peft"
    for tag in ("fssa-trl", "trl", "few-shot-steerable-alignment", "reward-model", "np-btl", "generated_from_trainer"):
        assert tag in card.data.tags
    text = card.text
    assert f'SteerableRewardModel.from_pretrained("{tmp_path / "np-rm"}")' in text and "context=context" in text
    row = f"| evaluation set (`eval`) | {100 * metrics['eval_accuracy_ctx0']:.1f} | {100 * metrics['eval_accuracy_ctx2']:.1f} |"
    assert row in text
    assert "trained with NP-BTL Reward" in text and "2412.13998" in bibtex_blocks(text)[0]

    # TRL's own card hook (push_to_hub, checkpoints) writes the same card, not TRL's template.
    os.remove(tmp_path / "np-rm" / "README.md")
    trainer.create_model_card(model_name="np-rm", dataset_name="me/prefs")
    again = load_card(tmp_path / "np-rm")
    assert (
        again.data.datasets == "me/prefs" and "fssa-trl" in again.data.tags and "rewarder = pipeline" not in again.text
    )


def test_trl_checkpoints_carry_our_card(tokenizer, tmp_path):
    """TRL's `_save_checkpoint` writes a card to `output_dir` and saves the checkpoint: both are ours."""
    out = tmp_path / "out"
    trainer = NPRewardTrainer(
        model=tiny_reward_model(tokenizer),
        args=NPRewardConfig(
            output_dir=str(out), max_steps=1, hypernetwork_hidden_dim=16, **{**TINY, "save_strategy": "steps"}
        ),
        train_dataset=style_preference_dataset(24),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="SEQ_CLS", **LORA),
    )
    trainer.train()
    for folder in (out, out / "checkpoint-1"):
        card = load_card(folder)
        assert "fssa-trl" in card.data.tags and "2412.13998" in card.text, folder
        assert card.data.model_name == "out"


def test_dpo_trainer_card_and_paper(tokenizer, tmp_path):
    trainer = NPDPOTrainer(
        model=tiny_causal_lm(tokenizer),
        args=NPDPOConfig(
            output_dir=str(tmp_path / "np-dpo"),
            max_steps=1,
            logging_steps=1,
            heldout_fraction=0.25,  # evaluated at every log, logged as `heldout_accuracy_ctx{C}`
            hypernetwork_hidden_dim=16,
            **TINY,
        ),
        train_dataset=style_preference_dataset(24),
        processing_class=tokenizer,
        peft_config=LoraConfig(**LORA),
    )
    assert trainer._paper["id"] == "2412.13998"  # not DPOTrainer's
    trainer.train()
    trainer.save_model()
    card = load_card(tmp_path / "np-dpo")
    assert {"dpo", "np-dpo", "fssa-trl", "trl"} <= set(card.data.tags)
    assert card.data.library_name == "peft"
    text = card.text
    assert "SteerablePolicy.from_pretrained(" in text and "context=context" in text
    assert not any("rafailov" in b for b in bibtex_blocks(text))
    assert "## Few-shot accuracy" in text  # the held-out pairs were evaluated at every log
    assert "held-out training pairs (`heldout`)" in text


def test_embedding_trainer_card_on_precomputed_embeddings(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = 24
    train = {
        "chosen_embedding": torch.randn(rows, 4, generator=g).tolist(),
        "rejected_embedding": torch.randn(rows, 4, generator=g).tolist(),
        "user_id": ["u1", "u2"] * (rows // 2),
    }
    from datasets import Dataset

    options = {k: v for k, v in TINY.items() if k != "bf16"}
    trainer = NPEmbeddingRewardTrainer(
        args=NPEmbeddingRewardConfig(
            output_dir=str(tmp_path / "np-emb"),
            context_embedding="precomputed",
            max_steps=1,
            decoder_hidden_dim=16,
            **options,
        ),
        train_dataset=Dataset.from_dict(train),
    )
    trainer.train()
    trainer.save_model()
    card = load_card(tmp_path / "np-emb")
    assert card.data.base_model is None and card.data.library_name is None  # only the NP modules are saved
    assert {"reward-model", "np-btl", "fssa-trl"} <= set(card.data.tags)
    assert '"chosen_embedding"' in card.text and "context=context" in card.text
    assert "trained with NP-BTL Reward (frozen embeddings)" in card.text
