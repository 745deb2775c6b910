"""Every attention of the model goes through `F.scaled_dot_product_attention` (so a GPU can pick its flash or
memory-efficient kernels): the video blocks (joint, and divided's temporal + spatial steps), S-ViLM's grouping
blocks, Clover's fusion layers and the text tower. Counted per layer in one forward of a model with all of them.
The exceptions: `model.video.matmul_attention_max_len` sends the video's short sequences to two matmuls and a
soft-max (`matmul_attention`), which must give SDPA's result, and so does bf16 autocast on a CPU without AMX whose
bf16 matmuls are the fast ones (`runtime.precision.attention_path`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from structvl.config import load_config
from structvl.models import video_encoder
from structvl.models.video_encoder import Attention, VideoEncoder
from structvl.models.video_text import build_model
from structvl.runtime import precision

from helpers import TINY


class CountSDPA:
    """Counts `F.scaled_dot_product_attention` calls under whichever watched layer is running (a spy put in place
    of the function, which torch's MultiheadAttention and transformers' SDPA attention look up at call time)."""

    def __init__(self, model, monkeypatch):
        sdpa = F.scaled_dot_product_attention

        def spy(*args, **kwargs):
            assert self.current, "an attention outside the watched layers"
            self.counts[self.current[-1]] += 1
            return sdpa(*args, **kwargs)

        monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
        self.current: list[str] = []
        self.counts: dict[str, int] = {}
        self.handles = []
        layers = {f"video.block{i}": b for i, b in enumerate(model.video_encoder.blocks)}
        layers |= {f"grouping{i}": g for i, g in enumerate(model.video_encoder.grouping)}
        layers |= {f"text.layer{i}": layer for i, layer in enumerate(model.text_encoder.layers)}
        layers |= {f"fusion.layer{i}": layer for i, layer in enumerate(model.fusion.layers)}
        for name, module in layers.items():
            self.counts[name] = 0
            self.handles.append(module.register_forward_pre_hook(lambda m, a, name=name: self.current.append(name)))
            self.handles.append(module.register_forward_hook(self._leave))

    def _leave(self, module, args, output) -> None:  # a hook returning something would replace the output
        self.current.pop()


@pytest.mark.parametrize("attention", ["joint", "divided"])
def test_every_attention_reaches_sdpa(attention, monkeypatch, one_thread):
    cfg = load_config("demo", TINY + [f"model.video.attention={attention}", "model.video.depth=2",
                                      "model.video.num_group_tokens=4", "model.video.group_layers=[0,1]",
                                      "model.text.depth=2", "model.fusion.layers=1"])
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    video = torch.randn(2, 4, 3, 32, 32)
    ids = torch.randint(1000, 2000, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0  # a padded caption
    counter = CountSDPA(model, monkeypatch)
    frames = torch.ones(2, 4, dtype=torch.bool)
    frames[1, 2:] = False  # a padded clip: its attention masks must stay on SDPA too
    v = model.encode_video(video, frames)
    t = model.encode_text(ids, mask)
    model.fuse(v.encoder, t.encoder)
    per_block = 2 if attention == "divided" else 1  # divided: a temporal and a spatial attention per block
    assert counter.counts == {"video.block0": per_block, "video.block1": per_block, "grouping0": 1, "grouping1": 1,
                              "text.layer0": 1, "text.layer1": 1, "fusion.layer0": 1}


@pytest.mark.parametrize("cpu", ["amx", "fast_bf16", "slow_bf16", "fast_bf16_long"])
def test_video_attention_under_bf16_autocast_takes_the_cpus_fastest_path(cpu, monkeypatch, one_thread):
    """With AMX the video attention stays on SDPA in bf16; without AMX it runs as matmuls in bf16 where bf16
    matmuls are the fast ones, and on SDPA in fp32 where they are not or where the scores would pass
    MATMUL_ATTENTION_MAX_SCORES. Either way the block hands bf16 back and agrees with the fp32 block to bf16
    accuracy, gradients included."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: cpu == "amx")
    monkeypatch.setattr(precision, "fast_bf16", lambda device: cpu != "slow_bf16")
    if cpu == "fast_bf16_long":
        monkeypatch.setattr(video_encoder, "MATMUL_ATTENTION_MAX_SCORES", 2 * 2 * 9 * 9 - 1)  # batch x heads x 9^2
    precision.attention_path.cache_clear()
    seen = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, *a, **k: seen.append(q.dtype) or sdpa(q, *a, **k))
    torch.manual_seed(0)
    attention = Attention(64, 2)
    x = torch.randn(2, 9, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(x)
    precision.attention_path.cache_clear()  # the faked CPU stays in this test
    (grad,) = torch.autograd.grad(out.float().square().sum(), x)
    reference = attention(x)
    (reference_grad,) = torch.autograd.grad(reference.square().sum(), x)
    in_autocast = {"amx": [torch.bfloat16], "fast_bf16": [], "slow_bf16": [torch.float32],
                   "fast_bf16_long": [torch.float32]}[cpu]
    assert seen == in_autocast + [torch.float32]  # then the fp32 reference's own call
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=0.05, rtol=0.05)
    torch.testing.assert_close(grad, reference_grad, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("attention", ["joint", "divided"])
def test_short_sequences_leave_sdpa_only_when_asked_and_give_its_result(attention, monkeypatch, one_thread):
    """With matmul_attention_max_len=2, divided attention's temporal step (2 tubelets) runs as matmuls and its
    spatial step (17 tokens) and joint attention (33 tokens) stay on SDPA; the encoder's output, with a padded
    clip's frame mask and its gradients, is SDPA's to float accuracy."""
    base = TINY + [f"model.video.attention={attention}", "model.video.depth=2"]
    frames = torch.ones(2, 4, dtype=torch.bool)
    frames[1, 2:] = False  # the second clip's last tubelet is padding
    video = torch.randn(2, 4, 3, 32, 32)
    outputs, grads = [], []
    sdpa = F.scaled_dot_product_attention
    for max_len in (0, 2):
        cfg = load_config("demo", base + [f"model.video.matmul_attention_max_len={max_len}"])
        torch.manual_seed(0)
        encoder = VideoEncoder(cfg.model.video).train()
        calls = []
        monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, *a, **k: calls.append(q.shape[-2]) or
                            sdpa(q, *a, **k))
        out = encoder(video, frames)
        (out.pooled.square().sum() + out.tokens.sum()).backward()
        expected = {"joint": [33, 33], "divided": [2, 17, 2, 17]}[attention]
        assert calls == (expected if max_len == 0 else [n for n in expected if n > max_len])
        outputs.append(torch.cat([out.pooled.flatten(), out.tokens.flatten()]))
        grads.append(torch.cat([p.grad.flatten() for p in encoder.parameters() if p.grad is not None]))
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_a_compiled_attention_takes_its_path_in_without_a_graph_break(one_thread):
    """attention_path is one answer a process: torch.compile bakes it into the graph instead of breaking there
    (the CPU probe behind it is nothing a graph can hold)."""
    torch._dynamo.reset()
    attention = Attention(64, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(attention)(torch.randn(2, 9, 64))
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0
