# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Exporting one user: the LoRA reward model, the policy and the frozen-embedding reward model, each with a user's
latent folded in, give the live model's outputs when loaded with PEFT, transformers or sentence-transformers alone,
and load in a process where fssa_trl cannot be imported."""

import json
import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification, LoraConfig
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BertConfig, BertModel

from fssa_trl import (
    NPDPOConfig,
    NPDPOTrainer,
    NPEmbeddingRewardConfig,
    NPEmbeddingRewardTrainer,
    NPRewardConfig,
    NPRewardTrainer,
    export_user,
)
from fssa_trl.data.collator import right_pad
from fssa_trl.modeling import ContextFreeRewardModel, GatedLoraLinear
from fssa_trl.modeling.export import EXPORT_RECORD_NAME, usage_snippet
from fssa_trl.modeling.reward_model import reward_input_ids
from fssa_trl.testing_utils import style_preference_dataset, tiny_causal_lm, tiny_reward_model, word_tokenizer

LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
COMMON = dict(
    report_to="none",
    use_cpu=True,
    bf16=False,
    disable_tqdm=True,
    save_strategy="no",
    per_device_train_batch_size=2,
    learning_rate=1e-2,
    num_targets=6,
    max_context=4,
    episode_passes=1,
    max_steps=1,
    latent_dim=8,
    encoder_hidden_dim=16,
    seed=0,
)
ATOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="module")
def data():
    return style_preference_dataset(12, seed=0), style_preference_dataset(6, seed=1).to_list()


def context_of(rows, user="A", size=4):
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows if r["user_id"] == user][:size]


def probe(rows):
    """Prompts and responses to score: both responses of each pair."""
    prompts = [r["prompt"] for r in rows] * 2
    return prompts, [r["chosen"] for r in rows] + [r["rejected"] for r in rows]


@torch.no_grad()
def perturb(model, *names):
    """Move LoRA B and the NP modules well away from their initialisation (one training step hardly does), so that
    every gate, head direction and FiLM term the export folds in is far from trivial."""
    generator = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if any(n in name for n in names):
            param.add_(0.2 * torch.randn(param.shape, generator=generator))


@pytest.fixture(scope="module", params=[False, True], ids=["head", "conditioned-head"])
def reward_model(request, tokenizer, data, tmp_path_factory):
    """A trained LoRA reward model (base model on disk, as from the Hub), with and without `condition_reward_head`."""
    base = tmp_path_factory.mktemp("rm-base")
    tiny_reward_model(tokenizer).save_pretrained(base)
    args = NPRewardConfig(
        output_dir=str(tmp_path_factory.mktemp("rm")),
        condition_reward_head=request.param,
        hypernetwork_hidden_dim=16,
        **COMMON,
    )
    trainer = NPRewardTrainer(
        model=str(base),
        args=args,
        train_dataset=data[0],
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="SEQ_CLS", **LORA),
    )
    trainer.train()
    perturb(trainer.model, "lora_B", "fssa_np.hypernetwork")
    return trainer.steerable_model(), str(base)


@pytest.fixture(scope="module")
def policy(tokenizer, data, tmp_path_factory):
    base = tmp_path_factory.mktemp("policy-base")
    tiny_causal_lm(tokenizer).save_pretrained(base)
    args = NPDPOConfig(output_dir=str(tmp_path_factory.mktemp("dpo")), hypernetwork_hidden_dim=16, **COMMON)
    trainer = NPDPOTrainer(
        model=str(base), args=args, train_dataset=data[0], processing_class=tokenizer, peft_config=LoraConfig(**LORA)
    )
    trainer.train()
    perturb(trainer.model, "lora_B", "fssa_np.hypernetwork")
    return trainer.steerable_model(), str(base)


@pytest.fixture(scope="module")
def bert_body(tokenizer, tmp_path_factory):
    """A tiny BERT body on disk: a bidirectional encoder, and a model type whose folders `AutoTokenizer` loads with
    the tokenizer saved there (for a Qwen2 folder transformers picks Qwen2's BPE class, not the word-level test one)."""
    path = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# Concat with mean pooling; FiLM with last-token pooling, truncation to 6 tokens and the DPL head (two outputs).
EMBEDDING_OPTIONS = {
    "concat": dict(decoder_conditioning="concat"),
    "film": dict(
        decoder_conditioning="film", context_embedding_pooling="last", context_max_length=6, reward_head="dpl"
    ),
}


@pytest.fixture(scope="module", params=sorted(EMBEDDING_OPTIONS))
def embedding_model(request, tokenizer, data, bert_body, tmp_path_factory):
    args = NPEmbeddingRewardConfig(
        output_dir=str(tmp_path_factory.mktemp("emb")),
        decoder_hidden_dim=16,
        **EMBEDDING_OPTIONS[request.param],
        **COMMON,
    )
    trainer = NPEmbeddingRewardTrainer(model=bert_body, args=args, train_dataset=data[0], processing_class=tokenizer)
    trainer.train()
    perturb(trainer.model, "fssa_np.decoder")
    return trainer.steerable_model()


def read_record(path):
    with open(os.path.join(path, EXPORT_RECORD_NAME), encoding="utf-8") as f:
        return json.load(f)


def reward_batch(tokenizer, prompts, responses):
    ids = [reward_input_ids(tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
    return right_pad(ids, tokenizer.pad_token_id), right_pad([[1] * len(x) for x in ids])


# ------------------------------------------------------------------------------------------------- reward model
@pytest.mark.parametrize("merge", [False, True], ids=["adapter", "merged"])
def test_lora_reward_model_export_scores_like_the_live_model(reward_model, tokenizer, data, tmp_path, merge):
    live, base = reward_model
    context = context_of(data[1])
    prompts, responses = probe(data[1])
    expected = live.score(prompts, responses, context=context)
    before = {n: p.detach().clone() for n, p in live.model.named_parameters()}

    live.export(str(tmp_path), context=context, merge=merge)

    for name, param in live.model.named_parameters():  # the live model is not changed
        assert torch.equal(param, before[name]), name
    torch.testing.assert_close(live.score(prompts, responses, context=context), expected, atol=0, rtol=0)
    if merge:
        exported = AutoModelForSequenceClassification.from_pretrained(str(tmp_path))
        assert not any("lora" in name for name, _ in exported.named_parameters())
    else:
        with open(tmp_path / "adapter_config.json", encoding="utf-8") as f:
            adapter_config = json.load(f)
        assert adapter_config["peft_type"] == "LORA" and adapter_config["base_model_name_or_path"] == base
        assert "fssa" not in json.dumps(adapter_config) and "gated" not in json.dumps(adapter_config)
        with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:  # LoRA and the score head only
            assert all("lora_" in key or ".score." in key for key in f.keys())
        exported = AutoPeftModelForSequenceClassification.from_pretrained(str(tmp_path), num_labels=1)
        assert not any(isinstance(m, GatedLoraLinear) for m in exported.modules())  # plain PEFT LoRA
    exported.eval().config.pad_token_id = tokenizer.pad_token_id
    input_ids, mask = reward_batch(tokenizer, prompts, responses)
    with torch.no_grad():
        got = exported(input_ids=input_ids, attention_mask=mask).logits[:, 0]
    assert (got - expected).abs().max() <= ATOL
    # The user's modulation is what the export holds: the population prior scores differently.
    assert (live.score(prompts, responses) - expected).abs().max() > 1e-3

    record = read_record(tmp_path)
    assert record["artifact"] == ("merged" if merge else "peft-adapter")
    assert record["num_context_pairs"] == len(context) and record["source_model_type"] == "np_lora_reward_model"
    torch.testing.assert_close(torch.tensor(record["latent"]), live.latent(context))
    assert {"README.md", "tokenizer.json"} <= set(os.listdir(tmp_path))


def test_export_at_a_given_latent_equals_export_from_its_context(reward_model, data, tmp_path):
    live, _ = reward_model
    context = context_of(data[1], user="B")
    export_user(live, str(tmp_path / "ctx"), context=context)
    live.export(str(tmp_path / "z"), latent=live.latent(context))
    assert read_record(tmp_path / "z")["num_context_pairs"] is None
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "ctx" / name).read_bytes() == (tmp_path / "z" / name).read_bytes(), name


# ------------------------------------------------------------------------------------------------------ policy
@pytest.mark.parametrize("merge", [False, True], ids=["adapter", "merged"])
def test_policy_export_gives_the_live_logits_and_greedy_generations(policy, tokenizer, data, tmp_path, merge):
    live, _ = policy
    context = context_of(data[1], user="B")
    live.export(str(tmp_path), context=context, merge=merge)
    if merge:
        exported = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    else:
        exported = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path)).eval()
        assert not any(isinstance(m, GatedLoraLinear) for m in exported.modules())
    modulation = live.np_modules.hypernetwork(live.latent(context).unsqueeze(0))

    rows = [tokenizer(r["prompt"] + r["chosen"] + tokenizer.eos_token)["input_ids"] for r in data[1]]
    input_ids, mask = right_pad(rows, tokenizer.pad_token_id), right_pad([[1] * len(r) for r in rows])
    with torch.no_grad(), live.modulator.apply(modulation):
        expected = live.model(input_ids=input_ids, attention_mask=mask).logits
    with torch.no_grad():
        got = exported(input_ids=input_ids, attention_mask=mask).logits
    assert (got - expected)[mask.bool()].abs().max() <= ATOL

    prompts = [r["prompt"] for r in data[1][:4]]
    batch = tokenizer(prompts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt")
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad(), live.modulator.apply(modulation):
        expected_tokens = live.model.generate(**batch, **kwargs)
    tokens = exported.generate(**batch, **kwargs)
    assert torch.equal(tokens, expected_tokens)
    new = tokenizer.batch_decode(tokens[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert new == live.generate(prompts, context=context, max_new_tokens=8, do_sample=False)


# ------------------------------------------------------------------------------------------- frozen embeddings
def test_embedding_reward_model_exports_a_sentence_transformer(embedding_model, data, tmp_path):
    from sentence_transformers import SentenceTransformer

    live = embedding_model
    context = context_of(data[1])
    prompts, responses = probe(data[1])
    expected = live.score(prompts, responses, context=context)
    live.export(str(tmp_path), context=context)

    exported = SentenceTransformer(str(tmp_path), device="cpu")
    got = exported.encode([p + r for p, r in zip(prompts, responses, strict=True)], convert_to_tensor=True)
    assert got.shape == (len(prompts), 1)
    assert (got[:, 0] - expected).abs().max() <= ATOL
    assert (live.score(prompts, responses) - expected).abs().max() > 1e-3
    assert read_record(tmp_path)["artifact"] == "sentence-transformers"
    assert exported.tokenizer.padding_side == "right"  # as TextEmbedder pads


# ------------------------------------------------------------------------------------------ without fssa_trl
CHILD = """\
import sys

sys.modules["fssa_trl"] = None  # from here on, `import fssa_trl` raises ImportError
import json
import os
import shutil
import tempfile

import torch
from transformers import AutoTokenizer

load_tokenizer = AutoTokenizer.from_pretrained


def tokenizer_files_only(path, *args, **kwargs):
    # Beside a Qwen2 config.json, transformers loads any tokenizer as Qwen2's BPE class, which the word-level test
    # tokenizer is not (a real Qwen2 tokenizer is): load the tokenizer files alone.
    folder = tempfile.mkdtemp()
    for name in os.listdir(path):
        if name.startswith("tokenizer"):
            shutil.copy(os.path.join(path, name), folder)
    return load_tokenizer(folder, *args, **kwargs)


AutoTokenizer.from_pretrained = tokenizer_files_only
results = {}
for name, (snippet, logit_ids) in json.loads(sys.argv[1]).items():
    namespace = {}
    exec(snippet, namespace)
    out = results[name] = {}
    if "rewards" in namespace:
        out["rewards"] = namespace["rewards"].tolist()
    else:
        out["completions"] = namespace["completions"]
        with torch.no_grad():
            out["logits"] = namespace["model"](input_ids=torch.tensor(logit_ids)).logits.tolist()
try:
    import fssa_trl  # noqa: F401
except ImportError:
    print(json.dumps(results))
"""


@pytest.mark.parametrize("reward_model", [True], ids=["conditioned-head"], indirect=True)
@pytest.mark.parametrize("embedding_model", ["film"], indirect=True)
def test_exports_load_and_run_their_card_snippets_without_fssa_trl(
    reward_model, policy, embedding_model, tokenizer, data, tmp_path
):
    rm, _ = reward_model
    live_policy, _ = policy
    context = context_of(data[1])
    prompts, responses = probe(data[1][:3])
    logit_ids = [tokenizer(data[1][0]["prompt"] + data[1][0]["chosen"])["input_ids"]]
    jobs, expected = {}, {}
    for name, model, merge in (
        ("rm-adapter", rm, False),
        ("rm-merged", rm, True),
        ("policy-adapter", live_policy, False),
        ("policy-merged", live_policy, True),
        ("embedding", embedding_model, False),
    ):
        path = str(tmp_path / name)
        model.export(path, context=context, merge=merge)
        artifact = (
            {False: "peft-adapter", True: "merged"}[merge] if model is not embedding_model else "sentence-transformers"
        )
        snippet = usage_snippet(model, path, artifact, prompts=prompts, responses=responses)
        jobs[name] = (snippet, logit_ids)
        if model is live_policy:
            modulation = model.np_modules.hypernetwork(model.latent(context).unsqueeze(0))
            with torch.no_grad(), model.modulator.apply(modulation):
                logits = model.model(input_ids=torch.tensor(logit_ids)).logits
            completions = model.generate(prompts, context=context, max_new_tokens=64, do_sample=False)
            expected[name] = {"completions": completions, "logits": logits}
        else:
            expected[name] = {"rewards": model.score(prompts, responses, context=context)}
        with open(os.path.join(path, "README.md"), encoding="utf-8") as f:
            assert usage_snippet(model, name, artifact).strip() in f.read()  # the card shows the snippet

    outside = tmp_path / "elsewhere"  # not the repository: nothing importable from the working directory
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(jobs)], cwd=outside, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    for name, values in expected.items():
        if "rewards" in values:
            assert (torch.tensor(got[name]["rewards"]) - values["rewards"]).abs().max() <= ATOL, name
        else:
            assert got[name]["completions"] == values["completions"], name
            assert (torch.tensor(got[name]["logits"]) - values["logits"]).abs().max() <= ATOL, name


# ------------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("reward_model", [True], ids=["conditioned-head"], indirect=True)
def test_context_and_latent_together_are_refused(reward_model, data, tmp_path):
    live, _ = reward_model
    context = context_of(data[1])
    with pytest.raises(ValueError, match="either `context`.*or `latent`"):
        live.export(str(tmp_path), context=context, latent=live.latent(context))
    assert not os.path.exists(tmp_path / "adapter_model.safetensors")


@pytest.mark.parametrize("shape", [(7,), (1, 8), ()])
def test_a_latent_of_the_wrong_size_is_refused(policy, tmp_path, shape):
    live, _ = policy
    with pytest.raises(ValueError, match=r"`latent` must have shape \(8,\)"):
        live.export(str(tmp_path), latent=torch.zeros(shape))


def test_a_precomputed_embedding_model_has_no_text_encoder_to_export(tmp_path):
    g = torch.Generator().manual_seed(0)
    rows = {
        "chosen_embedding": torch.randn(16, 4, generator=g).tolist(),
        "rejected_embedding": torch.randn(16, 4, generator=g).tolist(),
        "user_id": ["u1", "u2"] * 8,
    }
    args = NPEmbeddingRewardConfig(output_dir=str(tmp_path), context_embedding="precomputed", **COMMON)
    live = NPEmbeddingRewardTrainer(model=None, args=args, train_dataset=Dataset.from_dict(rows)).steerable_model()
    with pytest.raises(ValueError, match="precomputed embeddings: it has no text encoder"):
        live.export(str(tmp_path / "out"))


@pytest.mark.parametrize("reward_model", [True], ids=["conditioned-head"], indirect=True)
@pytest.mark.parametrize("embedding_model", ["film"], indirect=True)
def test_unsupported_exports_are_refused(embedding_model, reward_model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="drop `merge=True`"):
        embedding_model.export(str(tmp_path), merge=True)
    plain = ContextFreeRewardModel(reward_model[0].model, tokenizer)
    with pytest.raises(ValueError, match="Only steerable models can export"):
        plain.export(str(tmp_path))
