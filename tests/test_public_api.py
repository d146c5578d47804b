"""The public namespace is pinned (as optax does): a name added or dropped is a decision."""

import subprocess
import sys

import fpsim

TOP_LEVEL = {
    # formats
    "Format", "FORMATS", "format_names", "get_format",
    "BF16", "E2M1", "E2M3", "E3M2", "E3M4", "E4M3", "E4M3B11FNUZ", "E4M3FNUZ", "E4M3_IEEE",
    "E4M3_SAT", "E5M2", "E5M2FNUZ", "FP16", "FP32", "FP4_E2M1", "FP6_E2M3", "FP6_E3M2",
    "TF32",
    # rounding and bit patterns
    "quantize", "ulp", "next_up", "next_down", "ROUNDING_MODES", "Rounding", "FormatLike",
    "encode", "decode", "all_values", "code_dtype",
    # statistics
    "VALUE_CLASSES", "value_counts", "value_classes", "value_fractions",
    "tree_value_counts", "log2_histogram", "ValueCounts", "Log2Histogram",
    # emulated arithmetic
    "lp_sum", "lp_dot", "lp_matmul", "lp_dot_general", "ORDERS", "emulate", "Emulated",
    "EmulationPolicy", "EmulationReport", "Accumulation", "FLOAT32_OPS", "quantizer",
    "fake_quant",
    # block-scaled formats
    "E8M0", "BlockFormat", "BlockCodes", "BlockStats", "MXFP8_E4M3", "MXFP8_E5M2",
    "MXFP6_E3M2", "MXFP6_E2M3", "MXFP4", "MXINT8", "NVFP4", "get_block_format",
    "quantize_blocks", "encode_blocks", "decode_blocks", "block_stats",
    # tensor-core accumulator models
    "AccumulatorModel", "ACCUMULATOR_PRESETS", "get_accumulator", "tc_dot_general",
    "tc_matmul", "tc_scaled_matmul",
}  # fmt: skip
NN = {
    "LAYER_NAMES", "PRESETS", "PRESET_NAMES", "RECIPES", "RECIPE_NAMES",
    "AdaptiveLossScaling", "DelayedScaling", "LayerStats", "Policy", "Recipe",
    "RecipeStats", "Report", "ScaleState", "TensorStats", "TrainState", "TrainStep",
    "apply", "cross_entropy", "data_parallel_grads", "discover", "get_policy",
    "get_recipe", "init_state", "instrument", "make_train_step", "quantized_dot_general",
    "recipe_dot_general", "recipe_scope", "train", "underflow_fraction", "value_and_grad",
    "with_recipe",
}  # fmt: skip
BLOCKS = {
    "BLOCK_FORMATS", "E8M0", "EXPONENTS", "FP32_SCALE_MODES", "FP8_BLOCK_1x128",
    "FP8_BLOCK_128x128", "FP8_TENSOR", "FP8_TENSOR_POW2", "MXFP4", "MXFP6_E2M3",
    "MXFP6_E3M2", "MXFP8_E4M3", "MXFP8_E5M2", "MXINT8", "NVFP4", "NVFP4_16x16",
    "SCALE_MODES", "TILE_FORMATS", "BlockCodes", "BlockFormat", "BlockStats",
    "BlockSummary", "block_format_names", "block_stats", "decode_blocks",
    "encode_blocks", "get_block_format", "hadamard_matrix", "inverse_random_hadamard",
    "quantize_blocks", "quantize_with_summary", "random_hadamard",
}  # fmt: skip
SUBPACKAGES = {
    "blocks", "cli", "comm", "nn", "numerics", "optim", "plot", "reference", "scaling",
    "showcase",
    "stats",
}  # fmt: skip


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_top_level_names_are_exactly_these():
    assert set(fpsim.__all__) == TOP_LEVEL | {"__version__"}
    assert set(fpsim._NAMES) == TOP_LEVEL


def test_nn_and_blocks_names_are_exactly_these():
    import fpsim.blocks
    import fpsim.nn

    assert set(fpsim.nn.__all__) == NN
    assert set(fpsim.blocks.__all__) == BLOCKS
    for mod in (fpsim.nn, fpsim.blocks):
        for name in mod.__all__:
            getattr(mod, name)


def test_every_public_name_resolves_to_its_module():
    for name, module in fpsim._NAMES.items():
        value = getattr(fpsim, name)
        assert value is getattr(sys.modules[module], name), name


def test_dir_lists_names_and_subpackages():
    listed = set(dir(fpsim))
    assert listed >= TOP_LEVEL and listed >= SUBPACKAGES


def test_moved_names_are_not_at_the_top():
    for name in ("lp_all_reduce", "lp_reduce", "wire_counts", "data_parallel_grads"):
        assert name not in fpsim.__all__ and name not in dir(fpsim)
    assert "demo" not in dir(fpsim) and "figures" not in dir(fpsim)


def test_unknown_attribute_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fpsim.nope  # noqa: B018


def test_import_fpsim_imports_neither_jax_nor_numpy():
    code = (
        "import sys, fpsim; fpsim.FP16; fpsim.get_format('e4m3');"
        "print(sorted(m for m in ('jax', 'numpy', 'matplotlib') if m in sys.modules))"
    )
    assert _run(code) == "[]"


def test_cli_explain_and_formats_import_neither_jax_nor_numpy():
    code = (
        "import sys, io, contextlib; from fpsim.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['explain', '0.1', '-f', 'fp16']); main(['explain', '1e-8', '--all'])\n"
        "    main(['formats']); main(['explain', '1', '-3', '957', '-f', 'mxfp8'])\n"
        "    main(['explain', '1', '2', '-f', 'nvfp4'])\n"
        "    main(['explain', '0.3', '-f', 'e8m0'])\n"
        "print(sorted(m for m in ('jax', 'numpy') if m in sys.modules))"
    )
    assert _run(code) == "[]"


def test_a_lazy_name_loads_its_module_on_first_use():
    code = "import sys, fpsim; fpsim.quantize; print('jax' in sys.modules)"
    assert _run(code) == "True"


def test_subpackages_load_as_attributes():
    import fpsim.showcase

    assert fpsim.showcase.run_halp_least_squares.__module__ == "fpsim.showcase.halp"
    assert fpsim.plot.new_figure is fpsim.plot._style.new_figure


def test_py_typed_ships():
    from importlib.resources import files

    assert files("fpsim").joinpath("py.typed").is_file()
