"""Video->text retrieval with several captions per video: CLIP4Clip's `video_max` rule (the default) and the
COCO `caption_gallery` rule, their chance levels, pessimistic ties, and the config key that picks one."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from structvl.config import ConfigError, load_config
from structvl.tasks.retrieval import chance_metrics, retrieval_metrics


def clip4clip_v2t(video_embed, text_embed, text_to_video):
    """CLIP4Clip's multi-sentence video->text, written from its definition: the text->video similarities are
    stacked as (videos, max captions, videos) with padding -inf (tensor_video_to_text_sim takes the max over the
    caption axis and transposes, so x[u, v] = best similarity of video u with any of video v's captions), then
    compute_metrics ranks each row's diagonal among the row (rank = position in the descending sort)."""
    n = len(video_embed)
    per_video = [[m for m, v in enumerate(text_to_video) if v == u] for u in range(n)]
    width = max(map(len, per_video))
    stacked = torch.full((n, width, n), float("-inf"))
    for v, captions in enumerate(per_video):
        for j, m in enumerate(captions):
            stacked[v, j] = text_embed[m] @ video_embed.t()
    x = stacked.max(dim=1).values.t().numpy()  # (query video u, gallery video v)
    order = np.sort(-x, axis=1)
    ranks = np.array([int(np.where(order[u] == -x[u, u])[0][0]) for u in range(n)]) + 1
    return {"R@1": 100.0 * np.mean(ranks <= 1), "R@5": 100.0 * np.mean(ranks <= 5),
            "R@10": 100.0 * np.mean(ranks <= 10), "MdR": float(np.median(ranks)), "MnR": float(np.mean(ranks))}


def coco_v2t_ranks(video_embed, text_embed, text_to_video):
    """The COCO rule by brute force: the rank of the video's best caption among all captions (ties pessimistic)."""
    sims = video_embed @ text_embed.t()
    ranks = []
    for v in range(len(video_embed)):
        pos = [m for m, owner in enumerate(text_to_video) if owner == v]
        best = sims[v, pos].max()
        ranks.append(1 + int(sum(sims[v, m] >= best for m in range(len(text_to_video)) if m not in pos)))
    return np.array(ranks)


def multi_caption_case():
    """Three videos (the axes) with 3, 1 and 2 captions. Two of video 0's captions are closer to video 1 than
    video 1's own caption: video 1's query has them both above its caption among captions (rank 3, COCO) but
    video 0 only once above itself among videos (rank 2, CLIP4Clip). Videos 0 and 2 have an exact caption."""
    videos = torch.eye(3)
    texts = F.normalize(torch.tensor([
        [1.0, 0.0, 0.0], [0.3, 0.95, 0.0], [0.35, 0.93, 0.0],  # video 0
        [0.0, 0.9, 0.43],  # video 1
        [0.0, 0.0, 1.0], [0.5, 0.0, 0.86]]), dim=1)  # video 2
    return videos, texts, [0, 0, 0, 1, 2, 2]


def random_case(seed=0, videos=23, captions=61):
    g = torch.Generator().manual_seed(seed)
    v = F.normalize(torch.randn(videos, 16, generator=g), dim=1)
    owner = list(range(videos)) + torch.randint(0, videos, (captions - videos,), generator=g).tolist()
    t = F.normalize(v[owner] + 1.2 * torch.randn(captions, 16, generator=g), dim=1)
    return v, t, owner


@pytest.mark.parametrize("case", [multi_caption_case, random_case])
def test_video_max_equals_clip4clip(case):
    videos, texts, owner = case()
    expected = clip4clip_v2t(videos, texts, owner)
    for block in (1, 3, 10_000):  # block-wise: every block size gives the same ranks
        out = retrieval_metrics(videos, texts, owner, block_size=block, v2t_multi_caption="video_max")
        assert {k: out[f"retrieval/v2t/{k}"] for k in expected} == pytest.approx(expected)
    assert retrieval_metrics(videos, texts, owner) == out  # video_max is the default


def test_the_two_rules_differ_on_the_hand_built_case():
    videos, texts, owner = multi_caption_case()
    video_max = retrieval_metrics(videos, texts, owner, v2t_multi_caption="video_max")
    gallery = retrieval_metrics(videos, texts, owner, v2t_multi_caption="caption_gallery")
    assert video_max["retrieval/v2t/MnR"] == pytest.approx(4 / 3)  # ranks 1, 2, 1
    assert gallery["retrieval/v2t/MnR"] == pytest.approx(5 / 3)  # ranks 1, 3, 1
    assert coco_v2t_ranks(videos, texts, owner).tolist() == [1, 3, 1]
    # text->video does not depend on the rule
    assert {k: v for k, v in video_max.items() if "/t2v/" in k} == {k: v for k, v in gallery.items() if "/t2v/" in k}


@pytest.mark.parametrize("seed", [0, 1])
def test_caption_gallery_keeps_the_old_numbers(seed):
    videos, texts, owner = random_case(seed)
    out = retrieval_metrics(videos, texts, owner, block_size=7, v2t_multi_caption="caption_gallery")
    ranks = coco_v2t_ranks(videos, texts, owner)
    assert out["retrieval/v2t/MnR"] == pytest.approx(ranks.mean())
    assert out["retrieval/v2t/MdR"] == pytest.approx(float(np.median(ranks)))
    assert out["retrieval/v2t/R@1"] == pytest.approx(100.0 * np.mean(ranks <= 1))


def test_video_max_ties_are_pessimistic():
    # a constant model: every video scores the same, so the query's own video ranks last among the 4
    out = retrieval_metrics(torch.ones(4, 2), torch.ones(7, 2), [0, 1, 2, 3, 0, 1, 1])
    assert out["retrieval/v2t/MdR"] == 4 and out["retrieval/v2t/R@1"] == 0.0


def test_video_max_nonfinite_caption_ranks_its_video_above_the_positive():
    videos, texts, owner = multi_caption_case()
    texts = texts.clone()
    texts[5] = float("nan")  # video 2's second caption
    out = retrieval_metrics(videos, texts, owner, v2t_multi_caption="video_max")
    clean = retrieval_metrics(*multi_caption_case(), v2t_multi_caption="video_max")
    assert clean["retrieval/v2t/R@1"] == pytest.approx(200 / 3)
    # videos 0 and 1 rank video 2 above their own (ranks 2 and 3); video 2's query keeps its exact caption (1)
    assert out["retrieval/v2t/MnR"] == pytest.approx(2.0) and out["retrieval/v2t/R@1"] == pytest.approx(100 / 3)


def exact_best_of_c_ranks(gallery, positives):
    """Every query's rank distribution, by enumerating all orderings of a small gallery."""
    pooled = []
    for c in positives:
        for order in itertools.permutations(range(gallery)):
            pooled.append(1 + min(order.index(i) for i in range(c)))
    return np.array(pooled), len(pooled) // len(positives)


def test_chance_levels_for_both_rules():
    # caption_gallery: 3 videos with 1, 2 and 3 of the 6 captions; exact over all 720 orderings each
    ranks, per_query = exact_best_of_c_ranks(6, [1, 2, 3])
    c = chance_metrics(6, "x", positives=[1, 2, 3])
    assert c["x/MnR"] == pytest.approx(ranks.mean())
    assert c["x/R@1"] == pytest.approx(100.0 * np.mean(ranks <= 1))
    assert c["x/R@5"] == pytest.approx(100.0 * np.mean(ranks <= 5))
    assert c["x/MdR"] == pytest.approx(np.median(ranks))
    # one positive each (text->video, and video->text under video_max): uniform ranks
    assert chance_metrics(5, "y") == pytest.approx({"y/R@1": 20.0, "y/R@5": 100.0, "y/R@10": 100.0,
                                                    "y/MdR": 3.0, "y/MnR": 3.0})
    assert chance_metrics(1000)["retrieval/chance/MdR"] == 500.5

    videos, texts, owner = random_case()
    gallery = retrieval_metrics(videos, texts, owner, v2t_multi_caption="caption_gallery")
    video_max = retrieval_metrics(videos, texts, owner, v2t_multi_caption="video_max")
    per_video = np.bincount(owner).tolist()
    assert {k: gallery[k] for k in gallery if "/chance_v2t/" in k} == pytest.approx(
        chance_metrics(61, "retrieval/chance_v2t", positives=per_video))
    assert {k: video_max[k] for k in video_max if "/chance_v2t/" in k} == pytest.approx(
        chance_metrics(23, "retrieval/chance_v2t"))
    # the same R@1 (mean c / M = 1 / N) but not the same MnR: (M + 1) / (c + 1) averaged over 61 captions
    # against (N + 1) / 2 over 23 videos
    assert gallery["retrieval/chance_v2t/R@1"] == pytest.approx(video_max["retrieval/chance_v2t/R@1"])
    assert gallery["retrieval/chance_v2t/MnR"] == pytest.approx(np.mean([62 / (c + 1) for c in per_video]))
    assert video_max["retrieval/chance_v2t/MnR"] == 12.0


def test_chance_levels_match_random_models():
    """The chance numbers are what a random model scores on average (both rules, many random draws)."""
    owner = [0, 0, 0, 1, 2, 2, 3, 4, 4, 4, 4, 5]
    draws = {"video_max": [], "caption_gallery": []}
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        videos, texts = torch.randn(6, 32, generator=g), torch.randn(len(owner), 32, generator=g)
        for rule in draws:
            draws[rule].append(retrieval_metrics(videos, texts, owner, v2t_multi_caption=rule))
    for rule, outs in draws.items():
        for metric in ("R@1", "MnR"):
            observed = np.mean([o[f"retrieval/v2t/{metric}"] for o in outs])
            assert observed == pytest.approx(outs[0][f"retrieval/chance_v2t/{metric}"], rel=0.08), (rule, metric)


def test_config_key_and_its_rule():
    assert load_config(None, []).eval.v2t_multi_caption == "video_max"
    assert load_config(None, ["eval.v2t_multi_caption=caption_gallery"]).eval.v2t_multi_caption == "caption_gallery"
    with pytest.raises(ConfigError, match="eval.v2t_multi_caption"):
        load_config(None, ["eval.v2t_multi_caption=coco"])
