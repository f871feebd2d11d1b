"""The one reader of example inputs shared by audit, the memory simulation and compare_precision."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from training_profiler.inputs import InputSpec, spec_to_tensor, split_inputs, tensors  # noqa: E402


def test_split_inputs_positional_keyword_and_single_items():
    x = torch.ones(2)
    assert split_inputs(x) == ((x,), {})
    assert split_inputs((8, 3)) == (((8, 3),), {})  # one shape, not two ints
    assert split_inputs([(8, 3), (8,)]) == (((8, 3), (8,)), {})
    assert split_inputs({"shape": [2, 5], "dtype": "int64"}) == (({"shape": [2, 5], "dtype": "int64"},), {})
    assert split_inputs({"ids": x}) == ((), {"ids": x})
    with pytest.raises(TypeError, match="example_inputs must be a tensor, a shape, .*; got float"):
        split_inputs(3.0)


def test_spec_to_tensor_keeps_layout_and_overrides_float_dtypes():
    t = spec_to_tensor(torch.ones(4, 6).t(), "meta")
    assert (t.shape, t.stride(), t.device.type) == ((6, 4), (1, 6), "meta")
    assert spec_to_tensor({"shape": [2, 5], "dtype": "int64"}, "meta", torch.bfloat16).dtype == torch.int64
    assert spec_to_tensor((2, 5), "meta", torch.bfloat16).dtype == torch.bfloat16
    assert spec_to_tensor(InputSpec((3,), "int8"), "meta").dtype == torch.int8
    with pytest.raises(TypeError, match=r"example input #1 is a str: pass tensors"):
        spec_to_tensor("8,3", "meta", where="#1")


def test_input_spec_values_on_a_real_device():
    ids = InputSpec((4, 100), "int64", high=10).make("cpu")
    assert ids.dtype == torch.int64 and int(ids.min()) >= 0 and int(ids.max()) == 9
    assert torch.equal(InputSpec((3,)).make("cpu"), InputSpec((3,)).make("cpu"))  # seeded
    assert int(InputSpec((3,), "int64").make("cpu").abs().sum()) == 0  # ids without a range: zeros


def test_tensors_walks_nested_outputs_in_order():
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    assert [float(t) for t in tensors((a, {"x": [b, None], "y": c}, 3))] == [0.0, 1.0, 2.0]
