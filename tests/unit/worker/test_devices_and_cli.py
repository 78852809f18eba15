"""Device selection fails early and clearly; the CLI reports a start-up failure with a non-zero exit."""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("torch")

import torch

from infleet_devcluster.ports import free_port
from infleet_worker.cli import build_parser, main
from infleet_worker.devices import DeviceUnavailableError, resolve_device


def test_cpu_and_auto() -> None:
    spec = resolve_device("cpu")
    assert (spec.family, spec.dtype) == ("cpu", torch.float32)
    assert resolve_device("cpu", "bfloat16").dtype == torch.bfloat16
    auto = resolve_device("auto")
    expected = "cuda" if torch.cuda.is_available() else auto.family
    assert auto.family == expected


@pytest.mark.skipif(importlib.util.find_spec("torch_neuronx") is not None, reason="torch-neuronx is installed")
def test_neuron_without_its_library_names_the_package() -> None:
    with pytest.raises(DeviceUnavailableError, match="torch-neuronx"):
        resolve_device("neuron")


@pytest.mark.skipif(importlib.util.find_spec("torch_xla") is not None, reason="torch_xla is installed")
def test_xla_without_its_library_names_the_package() -> None:
    with pytest.raises(DeviceUnavailableError, match="torch_xla"):
        resolve_device("xla")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_says_so() -> None:
    with pytest.raises(DeviceUnavailableError, match="no CUDA device"):
        resolve_device("cuda")


def test_unknown_device_and_dtype() -> None:
    with pytest.raises(DeviceUnavailableError, match="unknown device"):
        resolve_device("tpu9")
    with pytest.raises(DeviceUnavailableError, match="unknown dtype"):
        resolve_device("cpu", "int3")


@pytest.mark.skipif(importlib.util.find_spec("torch_xla") is not None, reason="torch_xla is installed")
def test_serve_exits_non_zero_when_the_device_is_missing(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    assert main(["serve", "--device", "xla", "--host", "127.0.0.1", "--port", str(port)]) == 2
    assert "torch_xla" in caplog.text


def test_flags_fall_back_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFLEET_MODEL", "llama-1b")
    monkeypatch.setenv("INFLEET_INITIAL_STATE", "warm")
    monkeypatch.setenv("INFLEET_PORT", "9001")
    args = build_parser().parse_args(["serve"])
    assert (args.model, args.state, args.port, args.device) == ("llama-1b", "warm", 9001, "auto")
    args = build_parser().parse_args(["serve", "--state", "serving"])
    assert args.state == "serving"


def test_quantize_and_prefix_cache_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFLEET_QUANTIZE", "int8")
    monkeypatch.setenv("INFLEET_PREFIX_CACHE_BLOCKS", "128")
    args = build_parser().parse_args(["serve"])
    assert (args.quantize, args.prefix_cache_blocks) == ("int8", 128)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--quantize", "int3"])


def test_kv_pool_flags_size_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    from infleet_worker.cli import engine_config
    from infleet_worker.loader import build_engine, load_model

    # An old command line keeps its memory budget: slots x max_seq_len tokens plus the prefix blocks.
    old = engine_config(build_parser().parse_args(["serve", "--num-slots", "4", "--max-seq-len", "128",
                                                   "--prefix-cache-blocks", "10"]))
    assert (old.block_size, old.num_kv_blocks, old.prefix_cache_blocks) == (16, 4 * 8 + 10, 10)
    monkeypatch.setenv("INFLEET_BLOCK_SIZE", "8")
    monkeypatch.setenv("INFLEET_KV_BLOCKS", "40")
    config = engine_config(build_parser().parse_args(["serve", "--num-slots", "4", "--max-seq-len", "128"]))
    assert (config.block_size, config.num_kv_blocks) == (8, 40)
    engine = build_engine(load_model("tiny", resolve_device("cpu")), resolve_device("cpu"), config)
    assert (engine.pool.num_blocks, engine.pool.block_size, engine.prefix) == (40, 8, None)
    assert engine.kv_capacity_tokens == 320 and engine.kv_usage == 0.0  # the warm-up request freed its blocks


def test_loader_quantises_and_refuses_unknown_methods() -> None:
    from infleet_worker.loader import load_model
    from infleet_worker.quant import Int8Linear

    loaded = load_model("tiny", resolve_device("cpu"), quantize="int8")
    assert isinstance(loaded.model.decoder_layers()[0].qkv_proj, Int8Linear)
    with pytest.raises(ValueError, match="unknown quantisation"):
        load_model("tiny", resolve_device("cpu"), quantize="fp4")
