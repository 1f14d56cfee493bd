from __future__ import annotations

import numpy as np
import pytest
import torch

import tests.fakes  # noqa: F401 -- registers the test-only methods
from vos import device as vdevice
from vos import methods
from vos.errors import VosError
from vos.methods.base import Option, OptionError, PromptError, UnknownMethod, check_first_mask
from vos.video import Clip


def test_registry_lists_and_creates():
    assert "fake_copy" in methods.list_keys()
    info = methods.get_info("fake_copy")
    assert info.default_variant == "default"
    method = methods.create("fake_copy", device="cpu", weights="random", shift=2)
    assert method.variant == "default"
    assert method.options["shift"] == 2 and method.options["delay"] == 0.0
    config = method.config()
    assert config["options"]["size"] == [32, 48]
    assert config["device"] == "cpu"


def test_builtin_methods_come_first_in_product_order():
    keys = methods.list_keys()
    builtin = [k for k in keys if not k.startswith("fake_")]
    order = [k for k in ("mixture", "simvos", "tvos", "ba", "abr") if k in builtin]
    assert builtin[: len(order)] == order
    assert keys.index("fake_copy") > max((keys.index(k) for k in order), default=-1)


def test_unknown_method_suggests():
    with pytest.raises(UnknownMethod, match="Did you mean 'fake_copy'"):
        methods.create("fake_cpy")
    with pytest.raises(KeyError):  # also catchable as the builtin it resembles
        methods.get_info("nope")


def test_option_parsing_and_errors():
    info = methods.get_info("fake_copy")
    values = info.resolve_options({"shift": "3", "size": "160x240", "mode": "exact", "delay": None})
    assert values == {"shift": 3, "delay": 0.0, "size": (160, 240), "mode": "exact"}
    with pytest.raises(OptionError, match="Valid options: shift, delay, size, mode"):
        info.resolve_options({"shfit": 1})
    with pytest.raises(OptionError, match="expects an integer"):
        info.resolve_options({"shift": "1.5"})
    with pytest.raises(OptionError, match="Valid values: fast, exact"):
        info.resolve_options({"mode": "slow"})
    with pytest.raises(OptionError, match="size like 320x480"):
        info.resolve_options({"size": "320"})
    with pytest.raises(OptionError, match="Valid variants: default, other"):
        methods.create("fake_copy", variant="large")


@pytest.mark.parametrize(
    ("text", "expected"), [("true", True), ("0", False), ("Yes", True), ("off", False), (True, True)]
)
def test_bool_option(text, expected):
    assert Option("flag", bool, False, "").parse(text) is expected


def test_first_mask_checks():
    good = np.zeros((8, 10), np.uint8)
    good[2:4, 2:4] = 1
    assert check_first_mask(good, (8, 10)).dtype == np.uint8
    with pytest.raises(PromptError, match="10x8 but the clip is 12x8"):
        check_first_mask(good, (8, 12))
    with pytest.raises(PromptError, match="empty"):
        check_first_mask(np.zeros((8, 10), np.uint8), (8, 10))
    with pytest.raises(PromptError, match="integer"):
        check_first_mask(good.astype(np.float32), (8, 10))


def test_segment_validates_before_work():
    clip = Clip.from_frames([np.zeros((8, 10, 3), np.uint8)] * 2)
    method = methods.create("fake_copy", device="cpu")
    with pytest.raises(PromptError):
        list(method.segment(clip, np.zeros((8, 9), np.uint8)))


def test_option_ranges():
    window = Option("window", int, 44, "", minimum=9)
    assert window.parse("9") == 9 and window.parse(100) == 100
    with pytest.raises(OptionError, match="'window' got '3'; the valid range is 9 or more"):
        window.parse("3")
    ratio = Option("ratio", float, 0.5, "", minimum=0, maximum=1)
    with pytest.raises(OptionError, match="valid range is 0 to 1"):
        ratio.parse("1.5")
    assert ratio.parse("0") == 0.0
    cap = Option("cap", int, 3, "", maximum=5)
    with pytest.raises(OptionError, match="5 or less"):
        cap.parse(6)
    size = Option("size", tuple, (32, 48), "", minimum=8)
    with pytest.raises(OptionError, match="8 or more"):
        size.parse("4x48")
    with pytest.raises(ValueError, match="default 2 is outside 9 or more"):  # a typo in a declaration shows at import
        Option("window", int, 2, "", minimum=9)


def test_option_describe():
    assert Option("window", int, 44, "", minimum=9).describe() == "integer, 9 or more"
    assert Option("ratio", float, 0.5, "", minimum=0, maximum=1).describe() == "number, 0 to 1"
    assert Option("mode", str, "a", "", choices=("a", "b")).describe() == "text, one of a, b"
    assert Option("flag", bool, False, "").describe() == "true/false"
    assert Option("size", tuple, (8, 8), "", minimum=8).describe() == "size like 320x480, each side 8 or more"


def test_device_choice():
    assert vdevice.pick_device("cpu").type == "cpu"
    assert vdevice.pick_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(vdevice.DeviceUnavailable, match="--device cpu"):
            vdevice.pick_device("cuda")
    with pytest.raises(vdevice.DeviceUnavailable, match="Unknown device 'gpu'"):
        vdevice.pick_device("gpu")
    with pytest.raises(ValueError, match="fp16"):
        vdevice.pick_dtype("fp16", torch.device("cpu"))
    assert vdevice.pick_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_device_and_dtype_errors_are_user_errors():
    # The CLI prints VosError as one line (exit 2); the builtin bases keep older `except` clauses working.
    assert issubclass(vdevice.DeviceUnavailable, VosError) and issubclass(vdevice.DeviceUnavailable, RuntimeError)
    assert issubclass(vdevice.DtypeUnavailable, VosError) and issubclass(vdevice.DtypeUnavailable, ValueError)
    with pytest.raises(vdevice.DtypeUnavailable, match="--dtype bf16"):
        vdevice.pick_dtype("fp16", torch.device("cpu"))
    with pytest.raises(vdevice.DtypeUnavailable, match="Unknown dtype 'fp8'"):
        vdevice.pick_dtype("fp8", torch.device("cpu"))


def test_out_of_memory_detection():
    assert vdevice.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert vdevice.is_out_of_memory(MemoryError())
    assert vdevice.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried ..."))
    assert not vdevice.is_out_of_memory(RuntimeError("shape mismatch"))


def test_cpu_memory_probe_sees_an_allocation():
    with vdevice.memory_probe(torch.device("cpu")) as probe:
        block = np.ones(300 * 2**20, np.uint8)
        block.sum()
        del block
    assert probe.kind == "cpu_rss"
    assert probe.peak_bytes - probe.baseline_bytes > 250 * 2**20


def test_freed_memory_is_kept_for_reuse_and_given_back_on_request():
    import sys

    from vos import device as vdevice

    kept = vdevice.keep_freed_memory()
    assert kept is (sys.platform.startswith("linux") and vdevice._glibc() is not None)
    vdevice.release_freed_memory()  # never raises, with or without glibc
