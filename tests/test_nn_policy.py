"""fpsim.nn.Policy: presets, overrides, validation."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

import fpsim


def test_presets_are_hashable_and_named():
    for name in fpsim.nn.PRESET_NAMES:
        pol = fpsim.nn.get_policy(name)
        assert pol.name == name
        assert hash(pol) == hash(dataclasses.replace(pol))
    assert fpsim.nn.get_policy("float32").is_float32
    fp16 = fpsim.nn.get_policy("fp16_mixed")
    assert fp16.compute is fpsim.FP16 and fp16.grad is fpsim.FP16 and fp16.storage is None
    assert fpsim.nn.get_policy("fp16_pure").storage is fpsim.FP16
    fp8 = fpsim.nn.get_policy("fp8_hybrid")
    assert (fp8.compute, fp8.grad) == (fpsim.E4M3, fpsim.E5M2)
    assert fp8.scaling == fpsim.nn.DelayedScaling()


def test_policy_is_a_jit_static_argument():
    f = jax.jit(lambda x, pol: fpsim.quantize(x, pol.compute), static_argnums=1)
    assert float(f(jnp.float32(1.0001), fpsim.nn.get_policy("bf16_mixed"))) == 1.0


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="fp16_mixed") as err:
        fpsim.nn.get_policy("fp17")
    assert "fp17" in str(err.value)


def test_bad_fields_are_clear_errors():
    with pytest.raises(ValueError, match="unknown format"):
        fpsim.nn.Policy(compute="fp12")
    with pytest.raises(ValueError, match="rounding"):
        fpsim.nn.Policy(rounding="banker")
    with pytest.raises(ValueError, match="pattern"):
        fpsim.nn.Policy(overrides=(("", "float32"),))
    with pytest.raises(ValueError, match="pairs"):
        fpsim.nn.Policy(overrides=("Dense_0",))
    with pytest.raises(ValueError, match="presets"):
        fpsim.nn.Policy(overrides=(("Dense_0", "nope"),))
    with pytest.raises(ValueError, match="history_len"):
        fpsim.nn.DelayedScaling(history_len=0)


def test_overrides_match_path_or_class_and_last_wins():
    pol = fpsim.nn.get_policy("fp16_mixed").with_overrides(
        ("decoder/*", "bf16_mixed"), ("decoder/Dense_2", "float32")
    )
    assert pol.for_module("Dense_0", "Dense").name == "fp16_mixed"
    assert pol.for_module("decoder/Dense_1", "Dense").name == "bf16_mixed"
    assert pol.for_module("decoder/Dense_2", "Dense").name == "float32"
    fp8 = fpsim.nn.get_policy("fp8_hybrid")
    assert fp8.for_module("block/ln1", "LayerNorm").is_float32  # by class name
    assert fp8.for_module("block/fc", "Dense").name == "fp8_hybrid"
