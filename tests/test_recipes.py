# Copyright 2026 The fssa_trl developers. Apache-2.0.
"""Every training recipe loads into its script's parser, so recipes cannot drift from the configs."""

import glob
import importlib.util
import os
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {
    "np_reward": "train_np_reward.py",
    "np_reward_lora": "train_np_reward_lora.py",
    "np_dpo": "train_np_dpo.py",
}
RECIPES = sorted(
    p
    for p in glob.glob(os.path.join(ROOT, "recipes", "**", "*.yaml"), recursive=True)
    if "accelerate_configs" not in p
)


def load_parser(script: str):
    spec = importlib.util.spec_from_file_location(script[:-3], os.path.join(ROOT, "examples", script))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module.make_parser()


def test_every_recipe_folder_has_a_script():
    assert RECIPES
    for path in RECIPES:
        assert os.path.basename(os.path.dirname(path)) in SCRIPTS, f"no script for {path}"


def unknown_keys(path: str, parser) -> set[str]:
    """Recipe keys that no field of the script's parser knows (TrlParser would silently keep them as defaults)."""
    with open(path, encoding="utf-8") as f:
        keys = set(yaml.safe_load(f))
    return keys - {action.dest for action in parser._actions}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: os.path.relpath(p, ROOT))
def test_recipe_loads_into_its_parser(path):
    parser = load_parser(SCRIPTS[os.path.basename(os.path.dirname(path))])
    assert not unknown_keys(path, parser), f"unknown keys in {path}: {sorted(unknown_keys(path, parser))}"
    with open(path, encoding="utf-8") as f:
        keys = set(yaml.safe_load(f))
    # bf16 recipes are for GPUs; TrainingArguments refuses bf16 on a CPU-only machine while parsing.
    parsed = parser.parse_args_and_config(args=["--config", path, "--bf16", "false"])
    training_args = parsed[1]
    for key in ("num_targets", "max_context", "output_dir"):
        if key in keys:
            with open(path, encoding="utf-8") as f:
                assert getattr(training_args, key) == yaml.safe_load(f)[key]


def test_unknown_recipe_key_is_caught(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: x\nnum_targets: 4\nnum_target: 4\n")  # a typo of num_targets
    assert unknown_keys(str(bad), load_parser(SCRIPTS["np_reward"])) == {"num_target"}


def test_every_recipe_has_its_launch_line_in_the_recipes_readme():
    with open(os.path.join(ROOT, "recipes", "README.md"), encoding="utf-8") as f:
        readme = f.read()
    launches = [line for line in readme.splitlines() if "accelerate launch" in line or "--config recipes/" in line]
    for path in RECIPES:
        relative = os.path.relpath(path, ROOT)
        script = SCRIPTS[os.path.basename(os.path.dirname(path))]
        assert any(f"--config {relative}" in line for line in launches), f"no launch line for {relative}"
        block = readme[readme.index(f"--config {relative}") - 400 : readme.index(f"--config {relative}")]
        assert f"examples/{script}" in block, f"the launch line of {relative} does not run examples/{script}"
