"""config_checks.py and the configurations built on it: reading a config loads no model code."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

import scratchformers
from scratchformers.config_checks import check_choice, check_heads, check_positive, check_positive_number

from conftest import run_without_package

PACKAGE = Path(scratchformers.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """The modules a file imports (``from .x import`` as ``.x``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


@pytest.mark.parametrize("name", ["configuration_transformer", "configuration_vit", "config_checks"])
def test_configurations_import_no_torch_and_no_model_code(name):
    imports = imported_modules(PACKAGE / f"{name}.py")
    assert not {module for module in imports if module.split(".")[0] == "torch" or "layers" in module
                or "modeling" in module}, imports


def test_reading_a_saved_config_loads_no_model_code(tmp_path):
    """The configuration modules as remote code (a checkpoint's copy): neither our layers or models nor
    transformers' modeling code are imported."""
    package = tmp_path / "saved_code"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("configuration_transformer", "configuration_vit", "config_checks", "input_checks", "remote_code"):
        shutil.copy(PACKAGE / f"{name}.py", package)
    result = run_without_package(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from saved_code.configuration_transformer import ScratchTransformerConfig
        from saved_code.configuration_vit import ScratchViTConfig
        assert ScratchTransformerConfig(d_model=64, encoder_attention_heads=4, decoder_attention_heads=4).d_model == 64
        assert ScratchViTConfig().num_patches == 196
        loaded = sorted(m for m in sys.modules if m.startswith("saved_code.") or m == "transformers.modeling_utils")
        print(loaded)
    """, tmp_path)
    assert result.stdout.split("\n")[-2] == str([f"saved_code.{name}" for name in
                                                 ("config_checks", "configuration_transformer", "configuration_vit",
                                                  "input_checks", "remote_code")])


@pytest.mark.parametrize("check, args, message", [
    (check_choice, ("norm_type", "batchnorm", ("layernorm", "rmsnorm")),
     "norm_type='batchnorm' is not supported; allowed values: 'layernorm', 'rmsnorm'"),
    (check_positive, ("d_model", 0), "d_model must be a positive integer, got 0"),
    (check_positive, ("d_model", True), "d_model must be a positive integer, got True"),
    (check_positive_number, ("layer_norm_eps", -1), "layer_norm_eps must be a number > 0, got -1"),
    (check_heads, ("d_model", 30, "num_heads", 4), "d_model=30 must be divisible by num_heads=4"),
])
def test_checks_name_the_field_and_what_it_allows(check, args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check(*args)
