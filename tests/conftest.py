import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def decoded(monkeypatch) -> list:
    """Timestamps of every frame the video decoder outputs during the test (all decoding goes through
    ``videoformer.data.video._decode_packet``)."""
    from videoformer.data import video as video_mod

    frames_out: list = []
    orig = video_mod._decode_packet

    def counting(cc, packet):
        frames = orig(cc, packet)
        frames_out.extend(f.pts for f in frames)
        return frames

    monkeypatch.setattr(video_mod, "_decode_packet", counting)
    return frames_out
