# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""LoRA modulation by a latent: identity at init, per example, off with the adapter, foldable, checkpoint-safe."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from fssa_trl.modeling import (
    LoRAHypernetwork,
    LoRAModulator,
    Modulation,
    NPLatentEncoder,
    find_lora_layers,
    fold_latent_into_lora,
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
    return get_peft_model(tiny_reward_model(tokenizer), lora_config()).eval()


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


def test_finds_every_lora_layer(peft_model):
    layers = find_lora_layers(peft_model)
    assert len(layers) == 2 * 2  # q_proj and v_proj in 2 decoder layers
    assert all(name.endswith(("q_proj", "v_proj")) for name, _ in layers)
    modulator = LoRAModulator(peft_model)
    assert (modulator.num_layers, modulator.rank) == (4, RANK)


def test_identity_at_init(peft_model, inputs):
    modulator = LoRAModulator(peft_model)
    hypernet = LoRAHypernetwork(latent_dim=5, num_layers=modulator.num_layers, rank=modulator.rank, hidden_dim=16)
    modulation = hypernet(torch.randn(3, 5))
    assert modulation.gates.shape == (3, modulator.num_layers, RANK)
    torch.testing.assert_close(modulation.gates, torch.ones_like(modulation.gates))
    plain = logits(peft_model, inputs)
    with modulator.apply(modulation):
        modulated = logits(peft_model, inputs)
    torch.testing.assert_close(modulated, plain)
    with peft_model.disable_adapter():
        base = logits(peft_model, inputs)
    assert not torch.allclose(plain, base)  # the LoRA adapter itself is not a no-op


def test_per_example_modulation_equals_running_each_example_alone(peft_model, inputs):
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
    assert modulator.modulation is None  # apply() cleared it


def test_modulation_has_no_effect_when_the_adapter_is_disabled(peft_model, inputs):
    modulator = LoRAModulator(peft_model)
    with peft_model.disable_adapter():
        base = logits(peft_model, inputs)
    modulator.set(Modulation(random_gates(modulator, 3)))
    try:
        with peft_model.disable_adapter():
            torch.testing.assert_close(logits(peft_model, inputs), base)
        assert not torch.allclose(logits(peft_model, inputs), base)
    finally:
        modulator.clear()


def test_fold_latent_into_lora_reproduces_the_modulated_model(peft_model, inputs):
    modulator = LoRAModulator(peft_model)
    user_gates = random_gates(modulator, 1)[0]  # (num_layers, rank): one user
    with modulator.apply(Modulation(user_gates.unsqueeze(0))):  # one latent for every row
        modulated = logits(peft_model, inputs)
    folded = copy.deepcopy(peft_model)  # its copied hooks refer to `modulator`, which is cleared
    fold_latent_into_lora(folded, user_gates)
    assert modulator.modulation is None
    torch.testing.assert_close(logits(folded, inputs), modulated, atol=1e-6, rtol=0)
    assert not torch.allclose(logits(peft_model, inputs), modulated)  # the original model is untouched
    with pytest.raises(ValueError, match="`gates` must have shape"):
        fold_latent_into_lora(folded, user_gates[:-1])


def test_batch_expansion(peft_model, inputs):
    """A modulation of N rows applies to a call with k * N rows built by repeat_interleave (e.g. generation with
    num_return_sequences), and the per-row result equals the unexpanded call."""
    modulator = LoRAModulator(peft_model)
    modulation = Modulation(random_gates(modulator, 3))
    with modulator.apply(modulation):
        small = logits(peft_model, inputs)
        expanded = logits(peft_model, {k: v.repeat_interleave(2, dim=0) for k, v in inputs.items()})
    torch.testing.assert_close(expanded, small.repeat_interleave(2, dim=0), atol=1e-6, rtol=1e-5)
    with modulator.apply(modulation.repeat(2)):  # the same expansion done on the modulation
        torch.testing.assert_close(
            logits(peft_model, {k: v.repeat_interleave(2, dim=0) for k, v in inputs.items()}), expanded
        )
    with modulator.apply(modulation), pytest.raises(RuntimeError, match="holds 3 latents"):
        logits(peft_model, {k: v[:2] for k, v in inputs.items()})


def test_modulation_repeat_with_sizes():
    modulation = Modulation(torch.arange(3.0).view(3, 1, 1), head=torch.arange(3.0).view(3, 1))
    repeated = modulation.repeat(torch.tensor([2, 0, 1]))
    assert repeated.gates.flatten().tolist() == [0.0, 0.0, 2.0]
    assert repeated.head.flatten().tolist() == [0.0, 0.0, 2.0]


def loss_and_grads(model, encoder, hypernet, inputs, context, checkpointing):
    """One reward-model training step as NPRewardTrainer does it: encode, gate, forward, backward, then clear."""
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    modulator = LoRAModulator(model)
    calls = []
    first_lora_a = modulator.layers[0][1].lora_A["default"]
    handle = first_lora_a.register_forward_hook(lambda *_: calls.append(1))
    z = encoder(*context).z  # (B, latent)
    gates = hypernet(z).gates
    modulator.set(Modulation(torch.cat([gates, gates])))  # rows are [chosen; rejected]
    rewards = model(**inputs, use_cache=False).logits.squeeze(-1)
    chosen, rejected = rewards.chunk(2)
    loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
    loss.backward()  # the modulation stays set: the checkpoint recompute happens here
    modulator.clear()
    handle.remove()
    named = [*model.named_parameters(), *encoder.named_parameters(), *hypernet.named_parameters()]
    grads = {name: p.grad.clone() for name, p in named if p.requires_grad}
    return loss.detach(), grads, len(calls)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tokenizer):
    torch.manual_seed(0)
    model = get_peft_model(tiny_reward_model(tokenizer), lora_config())
    encoder = NPLatentEncoder(embedding_dim=8, latent_dim=4, hidden_dim=16)
    hypernet = LoRAHypernetwork(latent_dim=4, num_layers=len(find_lora_layers(model)), rank=RANK, hidden_dim=16)
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
    model = get_peft_model(tiny_reward_model(tokenizer), lora_config(use_dora=True))
    with pytest.raises(ValueError, match="DoRA"):
        LoRAModulator(model)


def test_model_without_lora_raises(tokenizer):
    with pytest.raises(ValueError, match="No LoRA layer"):
        LoRAModulator(tiny_reward_model(tokenizer))
