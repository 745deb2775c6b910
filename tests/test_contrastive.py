"""The InfoNCE loss against a hand computation, and the all-gather version on 2 gloo processes against the
single-process loss and gradients on the same global batch."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from structvl.objectives.contrastive import info_nce
from two_ranks import run_on_ranks


def test_info_nce_matches_hand_computation():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = F.normalize(torch.tensor([[1.0, 1.0], [0.0, 1.0]]), dim=1)
    scale = torch.tensor(10.0)
    out = info_nce(v, t, scale)
    s = 10 * (v @ t.t())
    expected_v2t = -0.5 * (torch.log_softmax(s, 1)[0, 0] + torch.log_softmax(s, 1)[1, 1])
    expected_t2v = -0.5 * (torch.log_softmax(s.t(), 1)[0, 0] + torch.log_softmax(s.t(), 1)[1, 1])
    assert out["v2t"] == pytest.approx(float(expected_v2t), rel=1e-6)
    assert out["t2v"] == pytest.approx(float(expected_t2v), rel=1e-6)
    assert out["loss"] == pytest.approx(0.5 * float(expected_v2t + expected_t2v), rel=1e-6)


def test_extra_negatives_and_weights_enter_only_the_video_to_text_side():
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(3, 4, generator=g), dim=1)
    t = F.normalize(torch.randn(3, 4, generator=g), dim=1)
    extra = F.normalize(torch.randn(3, 2, 4, generator=g), dim=2)
    base = info_nce(v, t, torch.tensor(5.0))
    with_extra = info_nce(v, t, torch.tensor(5.0), extra_text_negatives=extra)
    assert with_extra["v2t"] > base["v2t"] and with_extra["t2v"] == base["t2v"]
    # Hand check for row 0: denominator gains the 2 extra captions.
    logits = torch.cat([5 * v[0] @ t.t(), 5 * extra[0] @ v[0]])
    row0 = -torch.log_softmax(logits, 0)[0]
    rows = [-torch.log_softmax(torch.cat([5 * v[i] @ t.t(), 5 * extra[i] @ v[i]]), 0)[i] for i in range(3)]
    assert with_extra["v2t"] == pytest.approx(float(sum(rows) / 3), rel=1e-5) and row0 > 0
    w = torch.full((3, 3), 2.0)
    weighted = info_nce(v, t, torch.tensor(5.0), video_negative_weights=w)
    assert weighted["v2t"] > base["v2t"]  # doubling every negative's weight raises the v2t loss


class _Towers(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.video = nn.Linear(6, 4)
        self.text = nn.Linear(5, 4)

    def forward(self, xv, xt):
        return info_nce(F.normalize(self.video(xv), dim=1), F.normalize(self.text(xt), dim=1), torch.tensor(7.0))


def _global_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randn(8, 5, generator=g)


def _worker(rank: int, world: int, result_path: str) -> None:
    import torch.distributed as dist

    model = nn.parallel.DistributedDataParallel(_Towers())
    xv, xt = _global_batch()
    per = xv.shape[0] // world
    out = model(xv[rank * per:(rank + 1) * per], xt[rank * per:(rank + 1) * per])
    out["loss"].backward()
    loss = out["loss"].detach().clone()
    dist.all_reduce(loss)
    if rank == 0:
        torch.save((float(loss) / world, {n: p.grad.clone() for n, p in model.module.named_parameters()}),
                   result_path)


def test_two_rank_gathered_loss_equals_single_process(tmp_path):
    ref = _Towers()
    out = ref(*_global_batch())
    out["loss"].backward()
    result = tmp_path / "rank0.pt"
    # Judged by the result, not the exit code: gloo occasionally aborts in process teardown under load
    # ("terminate called without an active exception") after the work is done and written.
    run_on_ranks(_worker, result)
    loss, grads = torch.load(result, weights_only=True)
    assert math.isclose(loss, float(out["loss"].detach()), rel_tol=1e-5)
    for name, param in ref.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6)


def test_logits_leave_bf16_autocast():
    """Under bf16 autocast the logits are still computed in fp32 (runtime.precision.full_precision): a bf16 logit
    near 20 is rounded to steps of 0.125, which would move the loss by about that much; here it is the loss of
    the same fp32 embeddings without autocast, extra negatives included."""
    g = torch.Generator().manual_seed(0)
    v, t = (F.normalize(torch.randn(8, 32, generator=g), dim=1) for _ in range(2))
    extra = F.normalize(torch.randn(8, 3, 32, generator=g), dim=2)
    scale = torch.tensor(20.0)
    expected = info_nce(v, t, scale, extra_text_negatives=extra)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = info_nce(v, t, scale, extra_text_negatives=extra)
    for key in ("loss", "v2t", "t2v"):
        assert out[key].dtype == torch.float32
        torch.testing.assert_close(out[key], expected[key], rtol=1e-6, atol=1e-6)
