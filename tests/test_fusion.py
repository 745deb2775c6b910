"""models/fusion.py: what the fusion encoder computes when a caller reads only some of its outputs."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from structvl.config import load_config
from structvl.models.video_text import build_model

from helpers import TINY, without_dropout


def _model(*extra):
    """A tiny model with a 2-layer fusion encoder (a layer copied from the text tower, a fresh one), dropout off."""
    torch.manual_seed(0)
    cfg = load_config("demo", TINY + ["data.root=unused", "model.fusion.layers=2", *extra])
    return without_dropout(build_model(cfg.model))


def _inputs(model, lengths=(6, 3, 5, 2)):
    b = len(lengths)
    video = torch.randn(b, model.cfg.video.num_frames, 3, model.cfg.video.image_size, model.cfg.video.image_size)
    ids = torch.randint(5, 90, (b, max(lengths)))
    mask = (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()
    return model.encode_video(video).encoder, model.encode_text(ids, mask).encoder, mask.bool()


def test_read_rows_give_the_whole_encoder_numbers():
    """The [CLS] and the positions read, computed by the last layer alone, equal the whole encoder's there; rows
    that read nothing but [CLS] and rows whose read positions are padding-short mix in one call."""
    model = _model().eval()
    video, text, mask = _inputs(model)
    read = torch.zeros_like(mask)
    read[0, [2, 4]] = True
    read[2, 1] = True
    read[3, 0] = True  # [CLS] read as a state too
    with torch.no_grad():
        full = model.fuse(video, text)
        part = model.fuse(video, text, read=read)
        cls = model.fuse(video, text, read="cls")
    torch.testing.assert_close(part.cls, full.cls, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls.cls, full.cls, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(part.read_states, full.text_states[read], rtol=1e-5, atol=1e-5)
    assert part.text_states is None and part.video_states is None and cls.read_states is None


@pytest.mark.parametrize("recompute", [False, True])
def test_read_rows_give_the_whole_encoder_gradients(recompute):
    """A loss on the rows read has the same gradients through the partial last layer (checkpointed or not)."""
    model = _model(f"model.fusion.activation_checkpointing={str(recompute).lower()}").train()
    video, text, mask = _inputs(model)
    read = torch.zeros_like(mask)
    read[1, 2] = read[0, 5] = True

    def grads(partial: bool):
        model.zero_grad(set_to_none=True)
        out = model.fuse(video, text, read=read if partial else None)
        states = out.read_states if partial else out.text_states[read]
        (out.cls.square().sum() + states.sum()).backward(retain_graph=True)
        return {n: p.grad.clone() for n, p in model.fusion.named_parameters() if p.grad is not None}

    whole, part = grads(False), grads(True)
    assert whole.keys() == part.keys() and any("layers.1.intermediate" in n for n in part)
    for name in whole:
        torch.testing.assert_close(part[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)


def test_reading_the_cls_alone_skips_most_of_the_last_layer():
    """FLOPs: the last layer's keys and values for every position, the rest for [CLS] alone."""
    model = _model().eval()
    video, text, _ = _inputs(model)

    def flops(read):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.fuse(video, text, read=read)
        return counter.get_total_flops()

    whole, cls = flops(None), flops("cls")
    assert cls < 0.75 * whole  # 2 layers: the last one's 12 d^2 a token cut to its keys and values (2 d^2)


def test_read_must_be_cls_or_a_mask_of_the_text():
    model = _model().eval()
    video, text, mask = _inputs(model)
    with pytest.raises(ValueError, match="'cls' or a mask"):
        model.fuse(video, text, read="all")
    with pytest.raises(ValueError, match="mask of text positions"):
        model.fuse(video, text, read=mask[:, :2])
