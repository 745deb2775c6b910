"""S-ViLM: group tokens, cut-and-paste, the two losses against hand-computed cases, and a tiny training run."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from structvl.config import ConfigError, SvilmConfig, VideoEncoderConfig, load_config
from structvl.models.grouping import GroupingBlock
from structvl.models.video_encoder import VideoEncoder
from structvl.objectives.svilm import (
    cut_and_paste,
    embed_phrases,
    grounding_loss,
    reverse_steps,
    temporal_grouping_loss,
)
from structvl.tasks.grounding import group_peak, permutation_accuracy, random_label_chance, two_means

from helpers import TINY


# ----------------------------------------------------------------------------- groups
def test_grouping_block_assigns_every_patch_to_exactly_one_group():
    torch.manual_seed(0)
    block = GroupingBlock(dim=16, heads=2, noise=True).train()
    groups, patches = torch.randn(2, 5, 16), torch.randn(2, 12, 16, requires_grad=True)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 8:] = False  # a padded time step
    out, assign, soft = block(groups, patches, mask)
    assert out.shape == (2, 5, 16) and assign.shape == soft.shape == (2, 5, 12)
    hard = assign.detach()
    assert torch.all((hard.round() == hard) | (hard.abs() < 1e-6))  # one-hot values only
    torch.testing.assert_close(hard.sum(1)[0], torch.ones(12))  # every real patch: exactly one group
    torch.testing.assert_close(hard.sum(1)[1], mask[1].float())  # padded patches: none
    torch.testing.assert_close(soft.detach().sum(1)[0], torch.ones(12))
    # Straight-through: the hard assignment still passes gradient back to the patches' keys.
    (out.sum() + (assign * torch.randn_like(assign)).sum()).backward()
    assert patches.grad is not None and patches.grad.abs().sum() > 0


def _encoder_cfg(**kw):
    return VideoEncoderConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, width=32, depth=2,
                              heads=2, **kw)


def test_encoder_returns_groups_and_leaves_the_plain_path_unchanged():
    torch.manual_seed(0)
    plain = VideoEncoder(_encoder_cfg()).eval()
    torch.manual_seed(0)
    grouped = VideoEncoder(_encoder_cfg(num_group_tokens=6, group_layers=[0, -1])).eval()
    assert grouped.group_layers == [0, 1] and len(grouped.grouping) == 2
    video = torch.randn(3, 4, 3, 32, 32)
    a, b = plain(video), grouped(video)
    # Groups are built last and never feed back into the tokens: same init, same outputs bit for bit.
    assert torch.equal(a.pooled, b.pooled) and torch.equal(a.tokens, b.tokens)
    assert a.groups is None and a.group_assignment is None
    assert b.groups.shape == (3, 6, 32)
    assert b.group_assignment.shape == (3, 2, 16) and b.group_probs.shape == (3, 6, 2, 16)
    assert int(b.group_assignment.min()) >= 0 and int(b.group_assignment.max()) < 6
    torch.testing.assert_close(b.group_probs.sum(1), torch.ones(3, 2, 16))
    assert torch.equal(b.group_assignment, b.group_probs.argmax(1))  # no noise in eval: hard = argmax of soft
    # A padded time step belongs to no group.
    frame_mask = torch.tensor([[True, True, False, False]] * 3)
    assert torch.all(grouped(video, frame_mask).group_assignment[:, 1] == -1)


# ----------------------------------------------------------------------------- cut-and-paste
def numbered_clips(b: int, t: int) -> torch.Tensor:
    """(b, t, 3, 2, 2) clips whose frame f of clip i is filled with 100 * i + f: every frame says where it came from."""
    video = (100 * torch.arange(b)[:, None] + torch.arange(t)[None]).float()[:, :, None, None, None]
    return video.expand(b, t, 3, 2, 2).contiguous()


def last_frame_padded(b: int, t: int, clip: int) -> torch.Tensor:
    """(b, t) frame mask, all real but the last frame of `clip`."""
    frame_mask = torch.ones(b, t, dtype=torch.bool)
    frame_mask[clip, -1] = False
    return frame_mask


def assert_one_pasted_interval(is_a: torch.Tensor) -> None:
    """One clip's (T',) part mask: both parts present, the pasted steps contiguous."""
    pasted = (~is_a).nonzero().flatten()
    assert 1 <= len(pasted) <= len(is_a) - 1
    assert torch.equal(pasted, torch.arange(int(pasted[0]), int(pasted[-1]) + 1))


def test_cut_and_paste_masks_and_frame_provenance():
    b, t, steps = 5, 8, 4
    video, frame_mask = numbered_clips(b, t), last_frame_padded(b, t, clip=2)
    for seed in range(20):
        cut = cut_and_paste(video, steps, frame_mask=frame_mask, generator=torch.Generator().manual_seed(seed))
        value = cut.video[:, :, 0, 0, 0]
        torch.testing.assert_close(value, (100 * cut.source + torch.arange(t)).float())  # same time position
        assert torch.all(cut.partner != torch.arange(b))
        frame_is_a = cut.is_a.repeat_interleave(2, dim=1)
        assert torch.equal(cut.source == torch.arange(b)[:, None], frame_is_a)
        assert torch.equal(cut.source[~frame_is_a], cut.partner[:, None].expand(b, t)[~frame_is_a])
        for i in range(b):
            assert_one_pasted_interval(cut.is_a[i])
            assert torch.equal(cut.frame_mask[i], frame_mask[cut.source[i], torch.arange(t)])
    fixed = cut_and_paste(video, steps, min_steps=2, max_steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.all((~fixed.is_a).sum(1) == 2)
    chosen = cut_and_paste(video, steps, partner=torch.tensor([4, 0, 1, 2, 3]))
    assert chosen.partner.tolist() == [4, 0, 1, 2, 3]
    with pytest.raises(ValueError):
        cut_and_paste(video[:1], steps)
    with pytest.raises(ValueError, match="own partner"):
        cut_and_paste(video, steps, partner=torch.tensor([0, 0, 1, 2, 3]))


def test_reverse_steps_plays_each_pasted_step_backwards_and_keeps_the_rest():
    b, t, steps = 4, 8, 4
    video, frame_mask = numbered_clips(b, t), last_frame_padded(b, t, clip=1)
    for seed in range(20):
        cut = reverse_steps(video, steps, frame_mask=frame_mask, generator=torch.Generator().manual_seed(seed))
        value = cut.video[:, :, 0, 0, 0] - 100 * torch.arange(b)[:, None]  # the frame index each position shows
        assert torch.equal(cut.source, torch.arange(b)[:, None].expand(b, t))  # only the clip's own frames
        for i in range(b):
            assert_one_pasted_interval(cut.is_a[i])
            for k in range(steps):
                shown, own = value[i, 2 * k:2 * k + 2].tolist(), [2 * k, 2 * k + 1]
                # Every step keeps its own two frames (same appearance); a pasted step shows them backwards.
                assert shown == (own if cut.is_a[i, k] else own[::-1])
            assert torch.equal(cut.frame_mask[i], frame_mask[i, value[i].long()])
    with pytest.raises(ValueError, match="2 frames per time step"):
        reverse_steps(video, t)


@pytest.mark.parametrize("source", ["batch", "reversed_steps"])
def test_temporal_objective_pastes_from_the_configured_source(source):
    from structvl.objectives.svilm import TemporalGroupingObjective

    b, t, steps = 6, 8, 4
    video = numbered_clips(b, t)
    seen = {}

    class RecordingEncoder:  # records the clips the objective encodes; per-step features = the step's pixels
        time = steps

        def __call__(self, clips, frame_mask):
            seen["video"] = clips
            features = clips.reshape(b, steps, -1).requires_grad_()
            return SimpleNamespace(per_time_features=lambda: features,
                                   frame_mask=torch.ones(b, steps, dtype=torch.bool))

    model = SimpleNamespace(video_encoder=RecordingEncoder())
    cfg = SimpleNamespace(svilm=SvilmConfig(paste_source=source))
    objective = TemporalGroupingObjective(cfg, model, None)
    out = objective({"video": video, "frame_mask": torch.ones(b, t, dtype=torch.bool)}, None, model)
    assert torch.isfinite(out["loss"])
    shown = seen["video"][:, :, 0, 0, 0]
    own_clip = (shown // 100 == torch.arange(b)[:, None]).all(1)
    own_frames = torch.equal(shown.sort(1).values, video[:, :, 0, 0, 0])
    if source == "batch":
        assert not own_clip.any()  # every clip got another clip's steps
    else:
        assert own_clip.all() and own_frames and not torch.equal(shown, video[:, :, 0, 0, 0])


@pytest.mark.parametrize("contrastive", ["uncut", "a_part"])
def test_temporal_clips_cuts_only_the_first_clips(contrastive):
    """`svilm.temporal_clips: n` encodes the first n of the cuts every clip would get, pasted from the whole batch;
    the A part meets the first n captions."""
    from structvl.objectives.svilm import TemporalGroupingObjective

    b, t, steps, n, dim = 6, 8, 4, 2, 12
    video = numbered_clips(b, t)
    seen = {}

    class RecordingEncoder:
        time = steps

        def __call__(self, clips, frame_mask):
            seen["video"] = clips
            features = clips.reshape(len(clips), steps, -1)[..., :dim].float().requires_grad_()
            return SimpleNamespace(per_time_features=lambda: features,
                                   frame_mask=torch.ones(len(clips), steps, dtype=torch.bool))

    model = SimpleNamespace(video_encoder=RecordingEncoder(), video_proj=nn.Identity(), logit_scale=torch.tensor(10.0))
    outputs = SimpleNamespace(text=SimpleNamespace(embed=F.normalize(torch.randn(b, dim), dim=-1)))
    batch = {"video": video, "frame_mask": torch.ones(b, t, dtype=torch.bool)}
    torch.manual_seed(3)
    every = cut_and_paste(video, steps)
    torch.manual_seed(3)
    cfg = SimpleNamespace(svilm=SvilmConfig(temporal_clips=n, temporal_contrastive=contrastive))
    out = TemporalGroupingObjective(cfg, model, None)(batch, outputs, model)
    assert torch.equal(seen["video"], every.video[:n])  # the same cuts as with every clip, the first n of them
    assert torch.isfinite(out["loss"]) and ("a_part_nce" in out) == (contrastive == "a_part")
    torch.manual_seed(3)
    TemporalGroupingObjective(SimpleNamespace(svilm=SvilmConfig(temporal_clips=0)), model, None)(batch, outputs, model)
    assert torch.equal(seen["video"], every.video)  # 0: every clip


@pytest.mark.parametrize("centroids", ["all", "leave_one_out"])
def test_temporal_objective_uses_the_configured_centroids(centroids):
    from structvl.objectives.svilm import TemporalGroupingObjective

    b, steps = 6, 4

    class DistinctStepsEncoder:  # every step's feature unlike every other's: the degenerate solution
        time = steps

        def __call__(self, clips, frame_mask):
            features = torch.eye(steps).expand(b, steps, steps).clone().requires_grad_()
            return SimpleNamespace(per_time_features=lambda: features,
                                   frame_mask=torch.ones(b, steps, dtype=torch.bool))

    model = SimpleNamespace(video_encoder=DistinctStepsEncoder())
    cfg = SimpleNamespace(svilm=SvilmConfig(temporal_centroids=centroids))
    out = TemporalGroupingObjective(cfg, model, None)({"video": torch.zeros(b, 8, 3, 2, 2)}, None, model)
    if centroids == "all":
        assert out["accuracy"].item() == 1.0 and out["loss"].item() < 0.01
    else:
        assert out["loss"].item() == pytest.approx(math.log(2))


def test_reversed_steps_needs_two_frames_per_step(tiny_corpus):
    with pytest.raises(ConfigError, match="svilm.paste_source"):
        load_config("svilm", TINY + [f"data.root={tiny_corpus}", "svilm.paste_source=reversed_steps",
                                     "model.video.tubelet_size=1"])


# ----------------------------------------------------------------------------- losses
def test_temporal_grouping_loss_hand_computed():
    f = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]])
    is_a = torch.tensor([[True, True, False]])
    c_a = torch.tensor([0.8, 0.4]) / math.hypot(0.8, 0.4)  # normalised mean of the two A steps
    c_b = torch.tensor([0.0, 1.0])
    tau = 0.5
    expected = 0.0
    for step, label in ((0, 0), (1, 0), (2, 1)):
        logits = torch.stack([f[0, step] @ c_a, f[0, step] @ c_b]) / tau
        expected += float(torch.logsumexp(logits, 0) - logits[label]) / 3
    out = temporal_grouping_loss(3.0 * f, is_a, None, tau)  # feature scale must not matter
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["accuracy"].item() == 1.0
    # An invalid step takes no part, neither as a sample nor in its centroid.
    f2 = torch.cat([f, torch.tensor([[[-1.0, 0.0]]])], 1)
    valid = torch.tensor([[True, True, True, False]])
    out2 = temporal_grouping_loss(f2, torch.tensor([[True, True, False, True]]), valid, tau)
    assert out2["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_temporal_grouping_leave_one_out_hand_computed():
    f = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]]])
    is_a = torch.tensor([[True, True, False, False]])
    tau = 0.5
    expected = 0.0
    parts = {0: [0, 1], 1: [2, 3]}
    for step in range(4):
        label = 0 if step < 2 else 1
        centroids = []
        for part in (0, 1):
            members = [k for k in parts[part] if k != step]  # the step itself is left out of its own part
            centroids.append(F.normalize(f[0, members].mean(0), dim=0))
        logits = torch.stack([f[0, step] @ c for c in centroids]) / tau
        expected += float(torch.logsumexp(logits, 0) - logits[label]) / 4
    out = temporal_grouping_loss(f, is_a, None, tau, leave_one_out=True)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["loss"].item() != pytest.approx(temporal_grouping_loss(f, is_a, None, tau)["loss"].item(), rel=1e-3)
    # Every step unlike every other: with itself in its centroid each step finds its part; left out, none can.
    distinct = torch.eye(4)[None]
    assert temporal_grouping_loss(distinct, is_a, None, 0.1)["accuracy"].item() == 1.0
    assert temporal_grouping_loss(distinct, is_a, None, 0.1, leave_one_out=True)["loss"].item() == pytest.approx(math.log(2))
    # A step alone in its part is not scored (its part has no other step); it is still the other part's centroid.
    single = temporal_grouping_loss(f[:, :3], torch.tensor([[True, True, False]]), None, tau, leave_one_out=True)
    c_b = f[0, 2]
    expected_single = 0.0
    for step, other in ((0, 1), (1, 0)):
        logits = torch.stack([f[0, step] @ f[0, other], f[0, step] @ c_b]) / tau
        expected_single += float(torch.logsumexp(logits, 0) - logits[0]) / 2
    assert single["loss"].item() == pytest.approx(expected_single, rel=1e-5)


def test_grounding_loss_hand_computed():
    tau = 0.5
    groups = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],  # clip 0
                           [[0.6, 0.8], [-1.0, 0.0]]])  # clip 1
    phrases = torch.tensor([[[1.0, 0.0], [5.0, 5.0]],  # caption 0: phrase a + a padded slot
                            [[0.8, -0.6], [0.6, 0.8]]])  # caption 1: phrases b and c
    mask = torch.tensor([[True, False], [True, True]])
    # s(n, j) = max over j's groups of the dot product (clip 1's second group is never the max).
    s = {("a", 0): 1.0, ("a", 1): 0.6, ("b", 0): 0.8, ("b", 1): 0.0, ("c", 0): 0.8, ("c", 1): 1.0}
    def nll(pos, others):
        return math.log(sum(math.exp(x / tau) for x in [pos, *others])) - pos / tau
    p2v = (nll(s["a", 0], [s["a", 1]]) + nll(s["b", 1], [s["b", 0]]) + nll(s["c", 1], [s["c", 0]])) / 3
    # clip -> phrase: own phrase vs the other captions' phrases (the clip's other own phrases left out).
    v2p = (nll(s["a", 0], [s["b", 0], s["c", 0]]) + nll(s["b", 1], [s["a", 1]]) + nll(s["c", 1], [s["a", 1]])) / 3
    one_way = grounding_loss(phrases, mask, groups, tau, symmetric=False)
    assert one_way["loss"].item() == pytest.approx(p2v, rel=1e-5)
    both = grounding_loss(phrases, mask, groups, tau, symmetric=True)
    assert both["v2p"].item() == pytest.approx(v2p, rel=1e-5)
    assert both["loss"].item() == pytest.approx(0.5 * (p2v + v2p), rel=1e-5)
    # The max over groups: a group that is never any phrase's best match gets no gradient.
    g = groups.clone().requires_grad_(True)
    grounding_loss(phrases, mask, g, tau, symmetric=False)["loss"].backward()
    assert torch.all(g.grad[1, 1] == 0) and g.grad[0, 0].abs().sum() > 0
    none = grounding_loss(phrases, torch.zeros_like(mask), groups, tau)
    assert none["loss"].item() == 0.0


def test_span_phrase_embedding_pools_the_phrase_tokens():
    model = SimpleNamespace(text_proj=nn.Identity())
    states = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [4.0, 0.0], [0.0, 3.0], [0.0, 0.0]]])
    # "[CLS] a red box [SEP]" -> offsets per token; the phrase "red box" spans characters 2..9.
    offsets = [[(0, 0), (0, 1), (2, 5), (6, 9), (0, 0)]]
    embed, mask = embed_phrases(model, [[(2, 9), (20, 25)]], 3, "span", token_states=states, offsets=offsets)
    assert mask.tolist() == [[True, False, False]]  # second span lies outside the (truncated) caption
    torch.testing.assert_close(embed[0, 0], torch.nn.functional.normalize(torch.tensor([2.0, 1.5]), dim=0))


def test_alone_phrase_embedding_encodes_the_phrase_text(tiny_corpus):
    from structvl.data.text import Tokenizer
    from structvl.models.video_text import build_model

    model = build_model(load_config("svilm", TINY + [f"data.root={tiny_corpus}"]).model).eval()
    tokenizer = Tokenizer(24)
    captions = ["a red circle and a blue square", "the big star"]
    embed, mask = embed_phrases(model, [[(0, 12), (17, 30)], [(0, 12)]], 3, "alone", captions=captions,
                                tokenizer=tokenizer)
    assert mask.tolist() == [[True, True, False], [True, False, False]]
    torch.testing.assert_close(embed[0, 1], model.encode_text(**tokenizer(["a blue square"])).embed[0])
    assert embed[1, 1].abs().sum() == 0


def test_default_phrase_encoding_does_not_depend_on_the_rest_of_the_caption(tiny_corpus):
    # Why "alone" is the default: a span of the caption's token states carries the whole caption, so the same
    # phrase in two captions gets two embeddings and grounding can match it to a clip-level group instead.
    from structvl.data.text import Tokenizer
    from structvl.models.video_text import build_model

    cfg = load_config("svilm", TINY + [f"data.root={tiny_corpus}"])
    assert cfg.svilm.phrase_encoding == "alone"
    model = build_model(cfg.model).eval()
    tokenizer = Tokenizer(24)
    captions = ["a red circle jumps", "a blue star spins next to a red circle"]
    spans = [[(0, 12)], [(26, 38)]]
    assert captions[0][0:12] == captions[1][26:38] == "a red circle"
    with torch.no_grad():
        alone, _ = embed_phrases(model, spans, 1, cfg.svilm.phrase_encoding, captions=captions, tokenizer=tokenizer)
        tokens, offsets = tokenizer.encode_with_offsets(captions)
        states = model.text_encoder(tokens["input_ids"], tokens["attention_mask"]).tokens
        span, _ = embed_phrases(model, spans, 1, "span", token_states=states, offsets=offsets)
    torch.testing.assert_close(alone[0, 0], alone[1, 0])
    assert (span[0, 0] - span[1, 0]).abs().max() > 1e-3


# ----------------------------------------------------------------------------- evaluation helpers
def test_scene_change_helpers():
    features = torch.tensor([[1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.1, 0.9]])
    labels = two_means(features)
    assert permutation_accuracy(labels, torch.tensor([1, 1, 0, 0])) == 1.0
    assert permutation_accuracy(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1])) == 0.75
    assert random_label_chance(4) == pytest.approx(11 / 16)
    assignment = torch.tensor([[0, 1, 1, 0]])
    probs = torch.tensor([[[0.9, 0.45, 0.4, 0.2]], [[0.1, 0.55, 0.6, 0.8]]])
    assert group_peak(assignment, probs, 1, 0) == 2  # among the patches group 1 owns
    assert group_peak(torch.zeros(1, 4, dtype=torch.long), probs, 1, 0) == 3  # owns none: the soft peak


# ----------------------------------------------------------------------------- end to end
def test_grounding_logits_leave_bf16_autocast():
    """At S-ViLM's temperature 0.05 the phrase-group logits are computed in fp32 under bf16 autocast too
    (runtime.precision.full_precision): the loss equals that of the same embeddings without autocast."""
    g = torch.Generator().manual_seed(0)
    phrases = F.normalize(torch.randn(4, 3, 32, generator=g), dim=-1)
    groups = F.normalize(torch.randn(4, 5, 32, generator=g), dim=-1)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    expected = grounding_loss(phrases, mask, groups, 0.05)["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = grounding_loss(phrases, mask, groups, 0.05)["loss"]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_grounding_needs_group_tokens(tiny_corpus):
    from structvl.models.video_text import build_model
    from structvl.objectives.svilm import SpatialGroundingObjective

    with pytest.raises(ConfigError, match="num_group_tokens"):  # refused by the config's checks, before any work
        load_config("svilm", TINY + [f"data.root={tiny_corpus}", "model.video.num_group_tokens=0"])
    cfg = load_config("svilm", TINY + [f"data.root={tiny_corpus}"])
    cfg.model.video.num_group_tokens = 0  # a config built in code, past the checks: the objective refuses it too
    with pytest.raises(ConfigError, match="num_group_tokens"):
        SpatialGroundingObjective(cfg, build_model(cfg.model), None)


def test_few_steps_lower_both_svilm_losses(tiny_corpus, tmp_path):
    from structvl.tasks.evaluate import pretrain_and_evaluate

    cfg = load_config("svilm", TINY + [f"data.root={tiny_corpus}", "train.max_steps=24", "train.checkpoint_every=0",
                                       "model.video.num_group_tokens=8", "model.video.group_layers=[0]",
                                       "svilm.eval_clips=6", "train.precision=fp32"])
    metrics = pretrain_and_evaluate(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for key in ("svilm_grounding/loss", "svilm_temporal/loss"):
        first = sum(r[key] for r in rows[:4]) / 4
        last = sum(r[key] for r in rows[-4:]) / 4
        assert last < first, (key, first, last)
    for key in ("grounding/pointing", "grounding/pointing_random", "grounding/pointing_best_patch",
                "temporal/scene_change_acc", "temporal/scene_change_acc_reversed_steps", "retrieval/t2v/R@1"):
        assert key in metrics
