import numpy as np
import pytest
import torch
import torch.nn.functional as F

from structvl.tasks.hard_negative import hard_negative_accuracy
from structvl.tasks.retrieval import chance_metrics, metrics_from_ranks, ranks_blockwise, retrieval_metrics


def test_ranks_hand_computed_case():
    # 3 videos (unit vectors e0, e1, e2); captions: c0 -> v0 exact, c1 -> v1 but closest to v2, c2 -> v2.
    videos = torch.eye(3)
    texts = F.normalize(torch.tensor([[1.0, 0, 0], [0, 0.6, 0.8], [0, 0, 1.0]]), dim=1)
    ranks = ranks_blockwise(texts, videos, [[0], [1], [2]])
    assert ranks.tolist() == [1, 2, 1]
    m = metrics_from_ranks(ranks, "t2v")
    assert m["t2v/R@1"] == pytest.approx(200 / 3)
    assert m["t2v/MdR"] == 1 and m["t2v/MnR"] == pytest.approx(4 / 3)


def test_ties_count_against_the_query():
    # A constant model: every score equal -> the positive is ranked last, never "first".
    ranks = ranks_blockwise(torch.ones(4, 2), torch.ones(4, 2), [[i] for i in range(4)])
    assert ranks.tolist() == [4, 4, 4, 4]


def test_blockwise_equals_full_and_multi_caption_v2t():
    g = torch.Generator().manual_seed(0)
    videos = F.normalize(torch.randn(17, 8, generator=g), dim=1)
    text_to_video = [i % 17 for i in range(40)]  # several captions per video
    texts = F.normalize(videos[text_to_video] + 0.9 * torch.randn(40, 8, generator=g), dim=1)
    full = retrieval_metrics(videos, texts, text_to_video, block_size=10_000)
    blocked = retrieval_metrics(videos, texts, text_to_video, block_size=3)
    assert full == blocked
    # v2t by brute force: rank of the best of the video's captions among all captions.
    sims = videos @ texts.t()
    expected = []
    for v in range(17):
        pos = [m for m, vv in enumerate(text_to_video) if vv == v]
        best = sims[v, pos].max()
        neg = [m for m in range(40) if m not in pos]
        expected.append(1 + int((sims[v, neg] >= best).sum()))
    assert full["retrieval/v2t/MnR"] == pytest.approx(np.mean(expected))
    assert full["retrieval/chance/R@1"] == pytest.approx(100 / 17)


def test_chance_metrics():
    c = chance_metrics(1000)
    assert c["retrieval/chance/R@10"] == pytest.approx(1.0) and c["retrieval/chance/MdR"] == 500.5


def test_hard_negative_accuracy_per_factor():
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    true = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    good, bad = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])
    out = hard_negative_accuracy(video, true, [(0, "colour", good), (1, "colour", bad), (0, "shape", good)])
    # clip 1's colour twin equals clip 0's truth direction: for clip 1 score 0 vs true 1 -> win.
    assert out["hard_negative/colour"] == 100.0 and out["hard_negative/shape"] == 100.0
    out = hard_negative_accuracy(video, true, [(0, "colour", torch.tensor([1.0, 0.0]))])
    assert out["hard_negative/colour"] == 0.0  # a tie is not a win
