"""CLOP: knowledge similarity, SKP, swapped-caption hard negatives, the knowledge-grouped sampler, and a
tiny end-to-end run whose loss falls."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from structvl.config import ConfigError, load_config
from structvl.data.knowledge.vocab import KnowledgeVocab, multi_hot
from structvl.data.knowledge_sampler import KnowledgeGroupedSampler
from structvl.objectives.clop import KnowledgePredictionObjective, jaccard, text_shortcut_penalty
from structvl.objectives.contrastive import info_nce
from structvl.objectives.pretraining import PretrainOutputs
from structvl.tasks.knowledge_prediction import average_precision

from helpers import SHAPE_CAPTIONS, TINY


def test_jaccard_matches_set_overlap():
    a = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    expected = torch.tensor([[1 / 3, 1.0], [0.0, 0.0]])  # {0,1} vs {0,2}: 1/3; empty sets: 0
    torch.testing.assert_close(jaccard(a, b), expected)


def test_average_precision_hand_case():
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.1]])
    targets = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    ap, prevalence = average_precision(scores, targets)
    assert ap == [pytest.approx((1 / 1 + 2 / 3) / 2)] and prevalence == [0.5]
    # a label without positives is left out rather than counted as 0
    assert average_precision(scores, torch.zeros(4, 1)) == ([], [])


def test_weighted_and_constructed_negatives_match_hand_computation():
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(2, 4, generator=g), dim=1)
    t = F.normalize(torch.randn(2, 4, generator=g), dim=1)
    extra = F.normalize(torch.randn(2, 2, 4, generator=g), dim=2)
    mask = torch.tensor([[True, False], [True, True]])
    weights = torch.tensor([[9.0, 3.0], [2.0, 9.0]])  # diagonal (positive) is forced to 1
    out = info_nce(v, t, torch.tensor(5.0), extra_text_negatives=extra, video_negative_weights=weights,
                   extra_negative_mask=mask, extra_negative_weight=0.5)
    losses = []
    for i in range(2):
        pos = torch.exp(5 * v[i] @ t[i])
        neg = sum(weights[i, j] * torch.exp(5 * v[i] @ t[j]) for j in range(2) if j != i)
        neg = neg + sum(0.5 * torch.exp(5 * v[i] @ extra[i, k]) for k in range(2) if mask[i, k])
        losses.append(-torch.log(pos / (pos + neg)))
    assert float(out["v2t"]) == pytest.approx(float(sum(losses) / 2), rel=1e-5)


def test_skp_loss_is_the_mean_bce_over_types(parsed):
    cfg = load_config("clop", ["model.embed_dim=8", "clop.skp_hidden=0", "clop.skp_input_norm=none"])
    vocab = KnowledgeVocab.build(parsed, top_k=10)
    from structvl.objectives.base import ObjectiveContext
    objective = KnowledgePredictionObjective(cfg, None, ObjectiveContext(vocab=vocab))
    embed = F.normalize(torch.randn(3, 8), dim=1)
    targets = vocab.encode_batch(parsed[:3])
    objective.requires_grad_(False)

    def head_logits(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: x @ objective.heads[k].weight.t() + objective.heads[k].bias for k in objective.types}

    def expected_bce(x: torch.Tensor) -> float:
        logits = head_logits(x)
        return float(sum(F.binary_cross_entropy_with_logits(logits[k], targets[k]) for k in objective.types)
                     / len(objective.types))

    assert float(objective.bce(embed, targets)) == pytest.approx(expected_bce(embed), rel=1e-5)
    # clop.skp_input_norm=batch (the default): the heads read the embedding standardised over the batch
    normed = KnowledgePredictionObjective(load_config("clop", ["model.embed_dim=8", "clop.skp_hidden=0"]), None,
                                          ObjectiveContext(vocab=vocab))
    normed.heads.load_state_dict(objective.heads.state_dict())
    standardised = (embed - embed.mean(0)) / torch.sqrt(embed.var(0, unbiased=False) + 1e-5)
    assert float(normed.bce(embed, targets)) == pytest.approx(expected_bce(standardised), rel=1e-4)
    # clop.skp_reduction=sum: each type's BCE summed over its labels, then averaged over the 3 clips
    objective.reduction = "sum"
    logits = head_logits(embed)
    summed = sum(F.binary_cross_entropy_with_logits(logits[k], targets[k], reduction="sum") / 3
                 for k in objective.types) / len(objective.types)
    assert float(objective.bce(embed, targets)) == pytest.approx(float(summed), rel=1e-5)
    # clop.skp_type_weights: each type's term times its weight (a type not named weighs 1), still over 4 types
    objective.type_weights = {**objective.type_weights, "object": 0.25, "action": 3.0}
    weighted = sum(objective.type_weights[k] * F.binary_cross_entropy_with_logits(logits[k], targets[k],
                                                                                   reduction="sum") / 3
                   for k in objective.types) / len(objective.types)
    assert float(objective.bce(embed, targets)) == pytest.approx(float(weighted), rel=1e-5)
    assert set(objective.types) == {"object", "attribute", "action"} | ({"relation"} if vocab.size("relation") else set())


def _skp_for(parsed, *overrides):
    from structvl.objectives.base import ObjectiveContext
    cfg = load_config("clop", ["model.embed_dim=8", *overrides])
    vocab = KnowledgeVocab.build(parsed, top_k=10)
    torch.manual_seed(0)
    context = ObjectiveContext(vocab=vocab, knowledge={k.caption: k for k in parsed})
    return KnowledgePredictionObjective(cfg, None, context)


def test_skp_video_targets_are_the_union_over_the_videos_captions(parsed):
    """clop.skp_targets=video: a clip is trained on every label any of its video's captions names, so a
    paraphrase's other verb is not taught as absent; "caption" keeps the paired caption's labels only."""
    from structvl.objectives.base import ObjectiveContext
    vocab = KnowledgeVocab.build(parsed, top_k=10)
    knowledge = {k.caption: k for k in parsed}
    # video "v0" has two captions that name different actions; "v1" has one caption
    videos = {"v0": [SHAPE_CAPTIONS[0], SHAPE_CAPTIONS[1]], "v1": [SHAPE_CAPTIONS[2]]}
    batch = {"video_id": ["v0", "v1"], "knowledge": [knowledge[SHAPE_CAPTIONS[0]], knowledge[SHAPE_CAPTIONS[2]]],
             "video_knowledge": [[knowledge[c] for c in videos[v]] for v in ("v0", "v1")]}
    per_caption = KnowledgePredictionObjective(load_config("clop", ["model.embed_dim=8"]), None, ObjectiveContext(
        vocab=vocab)).targets(batch)
    per_video = KnowledgePredictionObjective(load_config("clop", ["model.embed_dim=8", "clop.skp_targets=video"]),
                                             None, ObjectiveContext(vocab=vocab)).targets(batch)
    both = vocab.encode_batch([knowledge[SHAPE_CAPTIONS[0]], knowledge[SHAPE_CAPTIONS[1]]])
    first, second = vocab.encode_batch([knowledge[SHAPE_CAPTIONS[0]]]), vocab.encode_batch([knowledge[SHAPE_CAPTIONS[2]]])
    for kind in ("object", "attribute", "action"):
        torch.testing.assert_close(per_caption[kind][0], first[kind][0])
        torch.testing.assert_close(per_video[kind][0], both[kind].amax(0))
        torch.testing.assert_close(per_video[kind][1], second[kind][0])  # one caption: the same either way
    actions = vocab.labels("action")
    assert per_video["action"][0].sum() == 2 and per_caption["action"][0].sum() == 1, actions


def test_skp_encoder_input_trains_the_encoder_feature_not_the_shared_embedding(parsed):
    """clop.skp_input=encoder: the heads read the video encoder's pooled feature (its width, not embed_dim), so
    SKP's gradient reaches the encoder without passing through the retrieval embedding; "shared" is the reverse."""
    from types import SimpleNamespace

    from structvl.objectives.base import ObjectiveContext
    vocab = KnowledgeVocab.build(parsed, top_k=10)
    model = SimpleNamespace(video_encoder=SimpleNamespace(width=6))
    batch = {"knowledge": parsed[:4], "video_id": ["a", "b", "c", "d"]}
    grads, mixed = {}, ["clop.skp_input=encoder", "clop.skp_type_inputs.object=shared"]
    for source, overrides in (("shared", ["clop.skp_input=shared"]), ("encoder", ["clop.skp_input=encoder"]),
                              ("mixed", mixed), ("object only", mixed + ["clop.skp_types=[object]"])):
        cfg = load_config("clop", ["model.embed_dim=8", *overrides])
        objective = KnowledgePredictionObjective(cfg, model, ObjectiveContext(vocab=vocab))
        embed, pooled = torch.randn(4, 8, requires_grad=True), torch.randn(4, 6, requires_grad=True)
        outputs = SimpleNamespace(video=SimpleNamespace(embed=embed, encoder=SimpleNamespace(pooled=pooled)))
        objective(batch, outputs, None)["loss"].backward()
        grads[source] = (embed.grad, pooled.grad)
        if source == "mixed":  # clop.skp_type_inputs: the object head reads the shared embedding, the others the encoder
            assert {k: head[0].in_features for k, head in objective.heads.items()} == {
                k: 8 if k == "object" else 6 for k in objective.types}
    assert grads["shared"][0] is not None and grads["shared"][1] is None
    assert grads["encoder"][0] is None and grads["encoder"][1].abs().sum() > 0
    assert grads["mixed"][0].abs().sum() > 0 and grads["mixed"][1].abs().sum() > 0
    assert grads["object only"][0].abs().sum() > 0 and grads["object only"][1] is None
    with pytest.raises(ValueError, match="skp_from_text"):
        KnowledgePredictionObjective(load_config("clop", ["clop.skp_input=encoder", "clop.skp_from_text=true"]),
                                     model, ObjectiveContext(vocab=vocab))


def test_skp_heads_start_at_the_label_prior(parsed):
    skp = _skp_for(parsed)
    targets = skp.vocab.encode_batch(parsed)
    for kind in skp.types:
        p = targets[kind].mean(0).clamp(1e-4, 1 - 1e-4)
        torch.testing.assert_close(skp.heads[kind][-1].bias, torch.log(p / (1 - p)))
    off = _skp_for(parsed, "clop.skp_prior_init=false")
    assert all(off.heads[k][-1].bias.abs().max() < 0.1 for k in off.types)  # nn.Linear's own small init


def test_skp_first_gradient_tells_clips_apart_instead_of_moving_them_together(parsed):
    # From a zero-mean start every clip's embedding gets much the same "every label less likely" gradient, which
    # collapsed all video embeddings to one point in training; from the prior the shared part is (nearly) gone.
    def shared_part(prior_init: bool, input_norm: str) -> float:  # |mean grad| / mean |grad|: 1 = all clips alike
        skp = _skp_for(parsed, f"clop.skp_prior_init={str(prior_init).lower()}", f"clop.skp_input_norm={input_norm}")
        embed = F.normalize(torch.randn(len(parsed), 8, generator=torch.Generator().manual_seed(1)), dim=1)
        embed.requires_grad_(True)
        skp.bce(embed, skp.vocab.encode_batch(parsed)).backward()
        return float(embed.grad.mean(0).norm() / embed.grad.norm(dim=1).mean())

    # the prior's own effect on raw embeddings; batch-normalised inputs remove the shared part by construction
    with_prior, without = shared_part(True, "none"), shared_part(False, "none")
    assert with_prior < 0.1 and with_prior < without / 3
    assert shared_part(False, "batch") < 1e-4


def test_skp_heads_learn_from_how_nearly_parallel_embeddings_differ():
    # Shared-space video embeddings start nearly parallel (cosine ~0.95): a label carried by a small deviation
    # from their common direction. Batch-normalised head inputs (the default) learn it; raw embeddings leave the
    # BCE near the prior (ln 2) - SKP's action labels stayed at chance that way in pre-training.
    from structvl.objectives.base import ObjectiveContext

    def train_heads(input_norm: str) -> tuple[float, float]:
        cfg = load_config("clop", ["model.embed_dim=32", "clop.skp_hidden=32", "clop.skp_types=[action]",
                                   f"clop.skp_input_norm={input_norm}"])
        torch.manual_seed(0)
        skp = KnowledgePredictionObjective(cfg, None, ObjectiveContext(vocab=KnowledgeVocab(
            {"action": ["move right", "move left"]})))
        g = torch.Generator().manual_seed(0)
        delta = torch.randn(64, 32, generator=g)
        embed = F.normalize(F.normalize(torch.randn(32, generator=g), dim=0) + 0.05 * delta, dim=1)
        right = (delta[:, 0] > 0).float()
        targets = {"action": torch.stack([right, 1 - right], 1)}
        optimizer = torch.optim.Adam(skp.parameters(), lr=1e-3)
        for _ in range(100):
            loss = skp.bce(embed, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        skp.eval()  # evaluation reads the running statistics
        with torch.no_grad():
            ap, _ = average_precision(skp.predict(embed)["action"], targets["action"])
        return float(loss), float(np.mean(ap))

    batch_loss, batch_ap = train_heads("batch")
    raw_loss, _ = train_heads("none")
    assert batch_loss < 0.45 and raw_loss > 0.6 and batch_ap > 0.9


def test_skp_single_clip_batch_uses_running_statistics(parsed):
    skp = _skp_for(parsed)
    skp.input_norm["video"].running_mean.fill_(0.1)  # as if trained: evaluation must read these
    targets = skp.vocab.encode_batch(parsed[:1])
    embed = F.normalize(torch.randn(1, 8), dim=1)
    loss = skp.bce(embed, targets)  # BatchNorm alone refuses one sample in training mode
    assert torch.isfinite(loss)
    assert float(loss) == pytest.approx(float(skp.eval().bce(embed, targets)), rel=1e-6)


def test_grouped_sampler_shares_knowledge_and_covers_every_clip_once_under_two_ranks():
    rng = np.random.default_rng(0)
    labels = (rng.random((64, 12)) < 0.2).astype(np.float32)
    ranks = [KnowledgeGroupedSampler(labels, num_replicas=2, rank=r, seed=3, group_size=4) for r in range(2)]
    per_rank = [s.indices() for s in ranks]
    assert sorted(per_rank[0] + per_rank[1]) == list(range(64))
    # the global order interleaves ranks; consecutive groups of 4 in it are what meet in a batch
    global_order = [per_rank[i % 2][i // 2] for i in range(64)]

    def mean_overlap(order):
        lab = torch.from_numpy(labels)
        sims = [jaccard(lab[order[i:i + 4]], lab[order[i:i + 4]]) for i in range(0, 64, 4)]
        return float(np.mean([(s.sum() - s.diagonal().sum()) / 12 for s in sims]))

    random_order = list(rng.permutation(64))
    assert mean_overlap(global_order) > mean_overlap(random_order) + 0.05
    # a new epoch reorders; resume mid-epoch continues the same order
    ranks[0].set_epoch(1)
    epoch1 = ranks[0].indices()
    assert epoch1 != per_rank[0] and len(epoch1) == 32
    ranks[0].set_position(1, 5)
    assert list(ranks[0]) == epoch1[5:]


def test_kcl_sampling_weighs_the_kcl_types_whatever_skp_predicts(parsed, tmp_path):
    """The sampler's and the negative weights' knowledge is clop.kcl_types (all four by default), not SKP's
    types: SKP on actions alone once made the sampler group batches by action alone (docs/findings.md, stop 20)."""
    from types import SimpleNamespace

    from structvl.data.knowledge.cache import KnowledgeCache
    from structvl.data.knowledge.lookup import KnowledgeLookup
    from structvl.objectives.base import ObjectiveContext
    from structvl.objectives.clop import KnowledgeContrastiveObjective
    vocab = KnowledgeVocab.build(parsed, top_k=10)
    cache = KnowledgeCache(tmp_path / "cache")
    cache.put_many(parsed)
    context = ObjectiveContext(vocab=vocab, knowledge=KnowledgeLookup(cache))
    dataset = SimpleNamespace(items=[(i, 0) for i in range(len(SHAPE_CAPTIONS))],
                              records=[SimpleNamespace(captions=[c]) for c in SHAPE_CAPTIONS])
    batch = {"knowledge": parsed}
    for kcl_types in (None, ["action"]):
        overrides = ["clop.skp_types=[action]", "clop.kcl_construct=false"]
        overrides += [f"clop.kcl_types=[{','.join(kcl_types)}]"] if kcl_types else []
        cfg = load_config("clop", overrides)
        types = kcl_types or ["object", "attribute", "action", "relation"]
        labels = multi_hot(parsed, vocab, types)
        sampler = KnowledgeContrastiveObjective.batch_sampler(cfg, dataset, context, world_size=1, rank=0)
        assert sampler.labels.shape[1] == sum(vocab.size(t) for t in types)
        weights = KnowledgeContrastiveObjective(cfg, None, context)._weights(batch, torch.device("cpu"))
        torch.testing.assert_close(weights, 1.0 + jaccard(labels, labels))


def test_contrastive_and_kcl_together_is_a_config_error():
    with pytest.raises(ConfigError, match="clop_kcl"):
        load_config("clop", ["objectives.contrastive=1"])


def test_skp_type_weights_and_inputs_name_a_knowledge_type(parsed):
    objective = _skp_for(parsed, "clop.skp_type_weights.object=0.25")
    assert objective.type_weights == {k: 0.25 if k == "object" else 1.0 for k in objective.types}
    with pytest.raises(ConfigError, match="clop.skp_type_weights.objects"):
        load_config("clop", ["clop.skp_type_weights.objects=0.25"])
    with pytest.raises(ConfigError, match="clop.skp_type_weights.object"):
        load_config("clop", ["clop.skp_type_weights.object=-1"])
    with pytest.raises(ConfigError, match="clop.skp_type_inputs.object"):
        load_config("clop", ["clop.skp_type_inputs.object=fused"])


def test_exclude_names_a_knowledge_type_and_lists_labels():
    assert load_config("clop", ["knowledge.exclude.action=[get,see]"]).knowledge.exclude == {"action": ["get", "see"]}
    with pytest.raises(ConfigError, match="knowledge.exclude.verb"):
        load_config("clop", ["knowledge.exclude.verb=[get]"])
    with pytest.raises(ConfigError, match="knowledge.exclude.action"):
        load_config("clop", ["knowledge.exclude.action=get"])


def test_clop_run_trains_saves_vocab_and_reports_skp_map(tiny_corpus, tmp_path):
    from structvl.tasks.evaluate import pretrain_and_evaluate

    cfg = load_config("clop", TINY + [f"data.root={tiny_corpus}", "train.max_steps=25", "train.checkpoint_every=0",
                                      "knowledge.min_count=1", "clop.kcl_sampler_groups=2"])
    metrics = pretrain_and_evaluate(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["loss"] for r in rows[-3:]) < sum(r["loss"] for r in rows[:3]) - 0.2
    assert "clop_kcl/swap_accuracy" in rows[-1] and "clop_skp/video_bce" in rows[-1]
    vocab = KnowledgeVocab.load(tmp_path / "run" / "knowledge_vocab.json")
    assert vocab.size("object") > 3 and vocab.size("action") > 3
    assert 0 <= metrics["clop/skp_mAP"] <= 100 and metrics["clop/skp_mAP_chance"] > 0


@pytest.mark.parametrize("train_text", [False, True])
def test_constructed_negatives_reach_the_text_encoder_only_when_asked(train_text):
    """`kcl_negatives_train_text` decides whether the swapped captions' gradient reaches the text encoder:
    with the true captions' embeddings held fixed, the text encoder gets a gradient only when it is on; the
    video encoder gets one either way."""
    from dataclasses import replace

    from structvl.data.text import Tokenizer
    from structvl.models.video_text import build_model
    from structvl.objectives.base import ObjectiveContext
    from structvl.objectives.clop import KnowledgeContrastiveObjective

    from helpers import TINY

    cfg = load_config("clop", TINY + ["clop.kcl_negative_weighting=false", "clop.kcl_negatives_per_caption=1",
                                      f"clop.kcl_negatives_train_text={str(train_text).lower()}"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    captions = ["a big blue square is rotating", "a small green triangle is bouncing"]
    negatives = {captions[0]: [("a big blue square is bouncing", "action")],
                 captions[1]: [("a small green circle is bouncing", "object")]}
    objective = KnowledgeContrastiveObjective(cfg, model, ObjectiveContext(tokenizer=Tokenizer(cfg.model.text.max_length)))
    tokens = objective.tokenizer(captions)
    video = model.encode_video(torch.randn(2, 4, 3, 32, 32))
    text = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
    outputs = PretrainOutputs(video=video, text=replace(text, embed=text.embed.detach()))
    loss = objective({"caption": captions, "swaps": [negatives[c] for c in captions]}, outputs, model)["loss"]
    loss.backward()
    text_grad = sum(float(p.grad.abs().sum()) for p in model.text_encoder.parameters() if p.grad is not None)
    video_grad = sum(float(p.grad.abs().sum()) for p in model.video_encoder.parameters() if p.grad is not None)
    assert video_grad > 0
    assert (text_grad > 0) == train_text


def test_shortcut_penalty_by_hand():
    """gap_ik = scale * mean over the other clips' videos of v_j . (t_i - s_ik); masked swaps do not count."""
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    swapped = torch.tensor([[[0.0, 1.0], [9.0, 9.0]], [[0.0, -1.0], [1.0, 0.0]], [[0.8, 0.6], [0.0, 0.0]]])
    mask = torch.tensor([[True, False], [True, True], [True, False]])
    # clip 0: others' mean video (0.3, 0.9); t - s = (1, -1) -> gap 2 * (0.3 - 0.9) = -1.2
    # clip 1: others' mean (0.8, 0.4); t - s = (0, 2) -> 2 * 0.8 = 1.6; t - s = (-1, 1) -> 2 * -0.4 = -0.8
    # clip 2: others' mean (0.5, 0.5); t - s = (0.2, -0.6) -> 2 * -0.2 = -0.4
    expected = (1.2 ** 2 + 1.6 ** 2 + 0.8 ** 2 + 0.4 ** 2) / 4
    got = text_shortcut_penalty(video, text, swapped, mask, torch.tensor(2.0))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # a swap that only moves away from every video's direction is what it penalises; none at all costs 0
    assert text_shortcut_penalty(video, text, text.unsqueeze(1), mask[:, :1], torch.tensor(2.0)).item() == 0


def test_shortcut_penalty_trains_the_text_side_only():
    """With `kcl_shortcut_penalty` on, the KCL loss grows by weight x penalty, and the penalty's own gradient
    reaches the text encoder but not the video encoder (the videos are its fixed reference)."""
    from structvl.data.text import Tokenizer
    from structvl.models.video_text import build_model
    from structvl.objectives.base import ObjectiveContext
    from structvl.objectives.clop import KnowledgeContrastiveObjective

    from helpers import TINY

    captions = ["a big blue square is rotating", "a small green triangle is bouncing", "a red star is rotating"]
    negatives = {captions[0]: [("a big blue square is bouncing", "action")],
                 captions[1]: [("a small green circle is bouncing", "object")],
                 captions[2]: [("a red star is bouncing", "action")]}
    results = {}
    for weight in (0.0, 3.0):
        cfg = load_config("clop", TINY + ["clop.kcl_negative_weighting=false", "clop.kcl_negatives_per_caption=1",
                                          f"clop.kcl_shortcut_penalty={weight}"])
        torch.manual_seed(0)
        model = build_model(cfg.model).eval()  # no dropout: the swaps are encoded twice below
        objective = KnowledgeContrastiveObjective(cfg, model, ObjectiveContext(
            tokenizer=Tokenizer(cfg.model.text.max_length)))
        tokens = objective.tokenizer(captions)
        clips = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        outputs = PretrainOutputs(video=model.encode_video(clips),
                                  text=model.encode_text(tokens["input_ids"], tokens["attention_mask"]))
        results[weight] = objective({"caption": captions, "swaps": [negatives[c] for c in captions]}, outputs, model)
        if weight:  # the penalty in logit units: the model's (already exponentiated) scale
            swaps = objective.tokenizer([negatives[c][0][0] for c in captions])
            swapped = model.encode_text(swaps["input_ids"], swaps["attention_mask"]).embed.unsqueeze(1)
            expected = text_shortcut_penalty(outputs.video.embed, outputs.text.embed, swapped,
                                             torch.ones(3, 1, dtype=torch.bool), model.logit_scale)
            assert results[weight]["shortcut_penalty"].item() == pytest.approx(expected.item(), rel=1e-4)
            results[weight]["shortcut_penalty"].backward()
            grads = {name: sum(float(p.grad.abs().sum()) for p in part.parameters() if p.grad is not None)
                     for name, part in (("text", model.text_encoder), ("video", model.video_encoder))}
    penalty = results[3.0]["shortcut_penalty"]
    assert penalty.item() > 0 and "shortcut_penalty" not in results[0.0]
    assert results[3.0]["loss"].item() == pytest.approx(results[0.0]["loss"].item() + 3 * penalty.item(), rel=1e-5)
    assert grads["text"] > 0 and grads["video"] == 0
