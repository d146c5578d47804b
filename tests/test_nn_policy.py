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
    # param is the stored format (None: float32 master weights), compute the cast
    assert fp16.compute is fpsim.FP16 and fp16.grad is fpsim.FP16 and fp16.param is None
    assert fpsim.nn.get_policy("fp16_pure").param is fpsim.FP16
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


def test_repr_reads_in_jmp_and_flax_vocabulary():
    r = repr(fpsim.nn.get_policy("fp16_mixed"))
    assert r.startswith("Policy(name='fp16_mixed', param='float32', compute='fp16',")
    assert "overrides=(('*Norm', 'float32'), ('Embed', 'float32'))" in r
    assert "param='fp16'" in repr(fpsim.nn.get_policy("fp16_pure"))
    assert "saturate=True" in repr(fpsim.nn.get_policy("fp8_hybrid"))


@pytest.mark.parametrize(
    "spec", ["params=float32,compute=float16,output=float32", "p=f32,c=f16,o=f32"]
)
def test_jmp_style_strings(spec):
    pol = fpsim.nn.get_policy(spec)
    assert pol.param is None and pol.output is None
    assert pol.compute is fpsim.FP16 and pol.grad is fpsim.FP16
    assert pol.param_grad is fpsim.FP16  # unnamed gradients follow compute


def test_jmp_style_single_format_and_errors():
    pol = fpsim.nn.get_policy("bfloat16")
    assert {pol.param, pol.compute, pol.output, pol.grad, pol.param_grad} == {fpsim.BF16}
    assert fpsim.nn.get_policy("params=bf16,compute=bf16").param is fpsim.BF16
    with pytest.raises(ValueError, match="params, compute, output"):
        fpsim.nn.get_policy("weights=float32")
    with pytest.raises(ValueError, match="twice"):
        fpsim.nn.get_policy("c=bf16,compute=fp16")
    with pytest.raises(ValueError, match="unknown format"):
        fpsim.nn.get_policy("compute=fp12")


def test_float32_fields_mean_no_rounding():
    assert fpsim.nn.Policy(compute="float32", param="fp32").is_float32


def test_param_names_accepts_one_string():
    # issue 11 item 11: "kernel" became ('k', 'e', 'r', 'n', 'e', 'l') and matched nothing
    pol = fpsim.nn.Policy(compute=fpsim.E4M3, param_names="kernel")
    assert pol.param_names == ("kernel",)
    with pytest.raises(TypeError, match="param_names"):
        fpsim.nn.Policy(param_names=("kernel", 3))


def test_param_names_string_quantizes_the_kernel():
    import flax.linen as nn

    model = nn.Dense(3, use_bias=False)
    x = jnp.ones((1, 4))  # on the E4M3 grid: only the kernel's rounding shows
    params = model.init(jax.random.key(0), x)["params"]
    pol = fpsim.nn.Policy(compute=fpsim.E4M3, param_names="kernel")
    y = fpsim.nn.apply(lambda p, x: model.apply({"params": p}, x), pol, params, x)
    kq = fpsim.quantize(params["kernel"], fpsim.E4M3)
    assert not bool(jnp.all(kq == params["kernel"]))
    assert jnp.array_equal(y, x @ kq)
