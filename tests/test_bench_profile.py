"""`python -m vos bench profile`: named regions' time and FLOPs, frame 0 apart from later frames."""

from __future__ import annotations

import pytest
import torch

from vos.__main__ import main
from vos.bench import profile as bprofile
from vos.methods import tvos


def test_tvos_regions_account_for_its_counted_work():
    result = bprofile.profile("tvos", height=32, frames=3)
    assert result.size == (32, 56) and len(result.frame_seconds) == 3 and len(result.frame_flops) == 3
    frame0 = result.regions["frame 0"]
    later = result.regions["later frames"]
    # Frame 0 is the prompt: only the embedding runs; later frames also propagate.
    assert set(frame0) == {"backbone (ResNet-50 embedding)"}
    assert set(later) == {"backbone (ResNet-50 embedding)", "affinity, softmax, prior, labels"}
    backbone = later["backbone (ResNet-50 embedding)"]
    assert backbone.calls == 2 and backbone.seconds > 0
    # The backbone's count is the network's own (two frames) and the regions never count more than the frames.
    with torch.inference_mode():
        net = tvos.TransductiveEmbedding().eval()
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, 3, 32, 56))
    assert backbone.flops == 2 * counter.get_total_flops()
    assert sum(r.flops for r in later.values()) <= sum(result.frame_flops[1:])
    # Affinity of frames 1 and 2 against 1 and 2 references: 2 * cells * (refs * cells) * 256 multiply-adds.
    cells = 4 * 7
    affinity = later["affinity, softmax, prior, labels"].flops
    assert affinity >= 2 * 256 * cells * cells * (1 + 2)
    assert result.gemm_gflops and result.gemm_gflops > 0


def test_regions_are_restored_after_a_profile():
    before = tvos.propagate, tvos.TransductiveVOS.embed
    bprofile.profile("tvos", height=16, frames=2)
    assert (tvos.propagate, tvos.TransductiveVOS.embed) == before


def test_profile_command_prints_both_phases(capsys):
    assert main(["bench", "profile", "tvos", "--size", "16", "--frames", "2"]) == 0
    out = capsys.readouterr().out
    assert "frame 0:" in out and "later frames" in out and "limit s" in out and "total" in out


def test_a_method_without_regions_is_refused():
    with pytest.raises(bprofile.BenchError, match="No profile regions"):
        bprofile.profile("simvos", height=16, frames=2)
