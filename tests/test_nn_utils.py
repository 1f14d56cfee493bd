"""The shared numerical helpers against the torch operations they stand in for."""

import pytest
import torch

from vos.nn_utils import channel_argmax


@pytest.mark.parametrize("channels", [1, 2, 3, 7])
def test_channel_argmax_is_torch_argmax_with_ties_to_the_first(channels):
    generator = torch.Generator().manual_seed(channels)
    x = torch.randint(0, 4, (channels, 31, 17), generator=generator).float()  # few values: many ties
    assert torch.equal(channel_argmax(x), x.argmax(dim=0))
    x = torch.randn(channels, 5, 6, 7, generator=generator)
    assert torch.equal(channel_argmax(x), x.argmax(dim=0))


def test_channel_argmax_ranks_nan_highest_as_torch_does():
    x = torch.zeros(3, 4, 4)
    x[1, 0, 0] = float("nan")
    x[2, 1, 1] = 5.0
    assert torch.equal(channel_argmax(x), x.argmax(dim=0))
    assert channel_argmax(x)[0, 0] == 1
