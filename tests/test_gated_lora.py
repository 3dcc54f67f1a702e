# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Gated LoRA (`fssa_trl.modeling.gated_lora`): identity without gates, per example, off with the adapter and for
other adapters, foldable, exact under gradient checkpointing, no more forward ops than plain LoRA, no hooks."""

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch.profiler import ProfilerActivity, profile

from fssa_trl.modeling import (
    GatedLoraLinear,
    LoRAHypernetwork,
    LoRAModulator,
    Modulation,
    NPLatentEncoder,
    find_gated_lora_layers,
    fold_latent_into_lora,
    gated_lora_config,
)
from fssa_trl.testing_utils import tiny_reward_model, word_tokenizer

RANK = 4


def lora_config(**kwargs):
    # init_lora_weights=False: LoRA B is random, so the adapter (and gating it) changes the output.
    return LoraConfig(
        task_type="SEQ_CLS", r=RANK, target_modules=["q_proj", "v_proj"], init_lora_weights=False, **kwargs
    )


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture
def peft_model(tokenizer):
    torch.manual_seed(0)
    return get_peft_model(tiny_reward_model(tokenizer), gated_lora_config(lora_config())).eval()


@pytest.fixture
def inputs(tokenizer):
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, len(tokenizer), (3, 7), generator=generator)  # no pad tokens
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def random_gates(modulator, rows, seed=2):
    generator = torch.Generator().manual_seed(seed)
    return 1 + torch.randn(rows, modulator.num_layers, modulator.rank, generator=generator)


def gates_set(modulator) -> list:
    return [layer._fssa_gate for _, layer in modulator.layers]


def test_peft_builds_gated_layers_and_saves_plain_lora(peft_model, tokenizer, tmp_path):
    layers = find_gated_lora_layers(peft_model)
    assert len(layers) == 2 * 2  # q_proj and v_proj in 2 decoder layers
    assert all(name.endswith(("q_proj", "v_proj")) and isinstance(m, GatedLoraLinear) for name, m in layers)
    modulator = LoRAModulator(peft_model)
    assert (modulator.num_layers, modulator.rank) == (4, RANK)
    # The saved adapter is standard LoRA: PEFT alone loads it, with plain `lora.Linear` layers and the same output.
    peft_model.save_pretrained(tmp_path)
    plain = PeftModel.from_pretrained(tiny_reward_model(tokenizer), tmp_path).eval()
    assert not any(isinstance(m, GatedLoraLinear) for m in plain.modules())
    inputs = {"input_ids": torch.tensor([[5, 6, 7]])}
    torch.testing.assert_close(logits(plain, inputs), logits(peft_model, inputs))
    # The user's LoraConfig is not modified: the registration lives on a copy.
    config = lora_config()
    gated_lora_config(config)
    assert config._custom_modules is None


def test_identity_at_init_and_outside_the_context(peft_model, inputs):
    modulator = LoRAModulator(peft_model)
    hypernet = LoRAHypernetwork(latent_dim=5, num_layers=modulator.num_layers, rank=modulator.rank, hidden_dim=16)
    modulation = hypernet(torch.randn(3, 5))
    assert modulation.gates.shape == (3, modulator.num_layers, RANK)
    torch.testing.assert_close(modulation.gates, torch.ones_like(modulation.gates))
    plain = logits(peft_model, inputs)
    with modulator.apply(modulation):
        torch.testing.assert_close(logits(peft_model, inputs), plain)
    with modulator.apply(Modulation(random_gates(modulator, 3))):
        assert not torch.allclose(logits(peft_model, inputs), plain)
    assert gates_set(modulator) == [None] * modulator.num_layers  # taken back on exit
    torch.testing.assert_close(logits(peft_model, inputs), plain)
    with peft_model.disable_adapter():
        assert not torch.allclose(plain, logits(peft_model, inputs))  # the LoRA adapter itself is not a no-op


def test_per_example_gates_equal_running_each_example_alone(peft_model, inputs):
    modulator = LoRAModulator(peft_model)
    hypernet = LoRAHypernetwork(latent_dim=5, num_layers=modulator.num_layers, rank=modulator.rank, hidden_dim=16)
    torch.nn.init.normal_(hypernet.mlp[-1].weight)  # leave the identity init: a different z, different gates
    z = torch.randn(3, 5)
    gates = hypernet(z).gates.detach()
    assert not torch.allclose(gates[0], gates[1])
    with modulator.apply(Modulation(gates)):
        batched = logits(peft_model, inputs)
    for row in range(3):
        one = {k: v[row : row + 1] for k, v in inputs.items()}
        with modulator.apply(hypernet(z[row : row + 1])):
            alone = logits(peft_model, one)
        torch.testing.assert_close(batched[row : row + 1], alone, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(batched, logits(peft_model, inputs))  # the gates changed the output


def test_gates_are_inactive_with_adapters_disabled_and_for_other_adapters(peft_model, inputs):
    modulator = LoRAModulator(peft_model)
    with peft_model.disable_adapter():
        base = logits(peft_model, inputs)
    peft_model.add_adapter("other", lora_config())  # e.g. TRL's "ref" adapter
    peft_model.set_adapter("other")
    other = logits(peft_model, inputs)
    with modulator.apply(Modulation(random_gates(modulator, 3))):
        assert not modulator.gates_active()
        torch.testing.assert_close(logits(peft_model, inputs), other)  # another adapter: not gated
        peft_model.set_adapter("default")
        assert modulator.gates_active()
        gated = logits(peft_model, inputs)
        with peft_model.disable_adapter():
            assert not modulator.gates_active()
            torch.testing.assert_close(logits(peft_model, inputs), base)
    assert not torch.allclose(gated, logits(peft_model, inputs))


def test_merged_layers_refuse_gates(peft_model, inputs):
    modulator = LoRAModulator(peft_model)
    peft_model.merge_adapter()
    with modulator.apply(Modulation(random_gates(modulator, 3))), pytest.raises(RuntimeError, match="merged"):
        logits(peft_model, inputs)


def test_fold_latent_into_lora_reproduces_the_gated_model(peft_model, inputs):
    modulator = LoRAModulator(peft_model)
    user_gates = random_gates(modulator, 1)[0]  # (num_layers, rank): one user
    with modulator.apply(Modulation(user_gates.unsqueeze(0))):  # one latent for every row
        modulated = logits(peft_model, inputs)
    folded = copy.deepcopy(peft_model)
    fold_latent_into_lora(folded, user_gates)
    torch.testing.assert_close(logits(folded, inputs), modulated, atol=1e-6, rtol=0)
    assert not torch.allclose(logits(peft_model, inputs), modulated)  # the original model is untouched
    with pytest.raises(ValueError, match="`gates` must have shape"):
        fold_latent_into_lora(folded, user_gates[:-1])


def test_batch_expansion(peft_model, inputs):
    """Gates of N rows apply to a call with k * N rows built by repeat_interleave (e.g. generation with
    num_return_sequences), and the per-row result equals the unexpanded call."""
    modulator = LoRAModulator(peft_model)
    modulation = Modulation(random_gates(modulator, 3))
    expand = {k: v.repeat_interleave(2, dim=0) for k, v in inputs.items()}
    with modulator.apply(modulation):
        small = logits(peft_model, inputs)
        expanded = logits(peft_model, expand)
    torch.testing.assert_close(expanded, small.repeat_interleave(2, dim=0), atol=1e-6, rtol=1e-5)
    with modulator.apply(modulation.repeat(2)):  # the same expansion done on the modulation
        torch.testing.assert_close(logits(peft_model, expand), expanded)
    with modulator.apply(modulation), pytest.raises(RuntimeError, match="hold 3 latents"):
        logits(peft_model, {k: v[:2] for k, v in inputs.items()})
    with pytest.raises(ValueError, match="expected \\(N, 4, 4\\)"):
        with modulator.apply(Modulation(torch.ones(3, 2, RANK))):
            pass


def test_modulation_repeat_with_sizes():
    modulation = Modulation(torch.arange(3.0).view(3, 1, 1), head=torch.arange(3.0).view(3, 1))
    repeated = modulation.repeat(torch.tensor([2, 0, 1]))
    assert repeated.gates.flatten().tolist() == [0.0, 0.0, 2.0]
    assert repeated.head.flatten().tolist() == [0.0, 0.0, 2.0]


def aten_ops(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for event in prof.events() if event.name.startswith("aten::"))


def test_a_gated_layer_dispatches_no_more_forward_ops_than_plain_lora(tokenizer):
    """The gate and the LoRA scaling are one multiply on `lora_A(x)`, replacing the `* scaling` after `lora_B`: once
    the gates are prepared (once per batch shape, for all layers), each gated layer runs no more ops than plain LoRA."""
    config = LoraConfig(task_type="SEQ_CLS", r=RANK, target_modules="all-linear")
    model = get_peft_model(tiny_reward_model(tokenizer, num_layers=4), gated_lora_config(config)).eval()
    modulator = LoRAModulator(model)
    ids = {"input_ids": torch.randint(3, len(tokenizer), (2, 9))}
    with torch.no_grad():
        plain = aten_ops(lambda: model(**ids))
        with modulator.apply(Modulation(random_gates(modulator, 2))):
            model(**ids)  # prepares the gates (scale, split) for this batch shape
            gated = aten_ops(lambda: model(**ids))
    assert modulator.num_layers == 4 * 7
    # Fewer, in fact: PEFT's `* scaling` by a Python float also converts the scalar to a tensor in every layer.
    assert gated <= plain, (gated, plain)


def test_fssa_trl_registers_no_hook_on_lora_modules(peft_model, inputs):
    modulator = LoRAModulator(peft_model)
    lora_modules = [m for _, layer in modulator.layers for m in layer.modules()]

    def hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lora_modules)

    assert hooks() == 0
    with modulator.apply(Modulation(random_gates(modulator, 3))):
        assert hooks() == 0
        logits(peft_model, inputs)
    assert hooks() == 0


def loss_and_grads(model, encoder, hypernet, inputs, context, checkpointing):
    """One reward-model training step as NPRewardTrainer does it: encode, gate, forward and backward in one scope."""
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    modulator = LoRAModulator(model)
    calls = []
    first_lora_a = modulator.layers[0][1].lora_A["default"]
    handle = first_lora_a.register_forward_hook(lambda *_: calls.append(1))  # the test's own counter
    z = encoder(*context).z  # (B, latent)
    gates = hypernet(z).gates
    with modulator.apply(Modulation(torch.cat([gates, gates]))):  # rows are [chosen; rejected]
        rewards = model(**inputs, use_cache=False).logits.squeeze(-1)
        chosen, rejected = rewards.chunk(2)
        loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
        loss.backward()  # the checkpoint recompute happens here, inside the scope
    handle.remove()
    named = [*model.named_parameters(), *encoder.named_parameters(), *hypernet.named_parameters()]
    grads = {name: p.grad.clone() for name, p in named if p.requires_grad}
    return loss.detach(), grads, len(calls)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tokenizer):
    torch.manual_seed(0)
    model = get_peft_model(tiny_reward_model(tokenizer), gated_lora_config(lora_config()))
    encoder = NPLatentEncoder(embedding_dim=8, latent_dim=4, hidden_dim=16)
    num_layers = len(find_gated_lora_layers(model))
    hypernet = LoRAHypernetwork(latent_dim=4, num_layers=num_layers, rank=RANK, hidden_dim=16)
    torch.nn.init.normal_(hypernet.mlp[-1].weight, std=0.3)  # non-identity gates, gradients into every layer
    context = (torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool))
    ids = torch.randint(3, len(tokenizer), (4, 6))  # 2 chosen, then 2 rejected
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    copies = [copy.deepcopy((model, encoder, hypernet)) for _ in range(2)]
    loss_off, grads_off, calls_off = loss_and_grads(*copies[0], inputs, context, checkpointing=False)
    loss_on, grads_on, calls_on = loss_and_grads(*copies[1], inputs, context, checkpointing=True)

    assert calls_on == 2 * calls_off  # checkpointing really recomputed the LoRA layers during backward
    torch.testing.assert_close(loss_on, loss_off)
    assert grads_on.keys() == grads_off.keys()
    assert any("lora_A" in k for k in grads_on) and any("lora_B" in k for k in grads_on)
    assert any(k.startswith("mlp.") for k in grads_on)  # hypernetwork
    assert any(k.startswith("pair_encoder.") for k in grads_on)  # latent encoder
    for name in grads_off:
        torch.testing.assert_close(grads_on[name], grads_off[name], atol=1e-6, rtol=1e-4, msg=name)
        if "lora" in name or name.startswith(("mlp.", "pair_encoder.", "latent_head.")):
            assert grads_off[name].abs().sum() > 0, name


def test_dora_raises(tokenizer):
    model = get_peft_model(tiny_reward_model(tokenizer), gated_lora_config(lora_config(use_dora=True)))
    with pytest.raises(ValueError, match="use_dora=False"):
        LoRAModulator(model)


def test_plain_peft_model_raises_with_the_fix(tokenizer):
    model = get_peft_model(tiny_reward_model(tokenizer), lora_config())
    with pytest.raises(ValueError, match="gated_lora_config"):
        LoRAModulator(model)


def test_model_without_lora_raises(tokenizer):
    with pytest.raises(ValueError, match="No LoRA layer"):
        LoRAModulator(tiny_reward_model(tokenizer))


def test_conv1d_projections_are_gated_and_fold_exactly():
    """GPT-2's projections are transformers' `Conv1D` (weights transposed): PEFT's `fan_in_fan_out` LoRA, gated too."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=16, num_labels=1, pad_token_id=0)
    lora = LoraConfig(
        task_type="SEQ_CLS", r=RANK, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False
    )
    model = get_peft_model(GPT2ForSequenceClassification(config), gated_lora_config(lora)).eval()
    modulator = LoRAModulator(model)
    assert modulator.num_layers == 2
    inputs = {"input_ids": torch.randint(1, 40, (3, 5))}
    gates = random_gates(modulator, 1)
    with modulator.apply(Modulation(gates)):
        gated = logits(model, inputs)
    assert not torch.allclose(gated, logits(model, inputs))
    fold_latent_into_lora(model, gates[0])
    torch.testing.assert_close(logits(model, inputs), gated, atol=1e-6, rtol=0)


def test_per_layer_scaling_with_alpha_pattern(tokenizer, inputs):
    """Layers with different LoRA scalings (`alpha_pattern`) each get their own scaling folded into the gate."""
    torch.manual_seed(0)
    model = get_peft_model(tiny_reward_model(tokenizer), gated_lora_config(lora_config(alpha_pattern={"v_proj": 32})))
    model.eval()
    modulator = LoRAModulator(model)
    assert len({layer.scaling["default"] for _, layer in modulator.layers}) == 2
    gates = random_gates(modulator, 1)
    with modulator.apply(Modulation(gates)):
        gated = logits(model, inputs)
    fold_latent_into_lora(model, gates[0])
    torch.testing.assert_close(logits(model, inputs), gated, atol=1e-6, rtol=0)
