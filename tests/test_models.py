import pytest
import torch

from structvl.config import ModelConfig, TextEncoderConfig, TextInitConfig, VideoEncoderConfig
from structvl.models.video_encoder import VideoEncoder

from helpers import without_dropout


def tiny_video_cfg(**kw) -> VideoEncoderConfig:
    base = dict(image_size=32, num_frames=4, patch_size=8, tubelet_size=2, width=32, depth=2, heads=2)
    base.update(kw)
    return VideoEncoderConfig(**base)


@pytest.mark.parametrize("attention", ["joint", "divided"])
def test_video_encoder_shapes(attention):
    enc = VideoEncoder(tiny_video_cfg(attention=attention))
    out = enc(torch.randn(2, 4, 3, 32, 32))
    assert out.pooled.shape == (2, 32)
    assert out.tokens.shape == (2, 2, 16, 32)  # T' = 4/2 tubelets, N = (32/8)^2 patches
    assert out.per_time_features().shape == (2, 2, 32)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("attention", ["joint", "divided"])
def test_padded_frames_do_not_change_the_valid_part(attention, pooling):
    """A short video's padded (invalid) frames must not influence the pooled embedding."""
    enc = VideoEncoder(tiny_video_cfg(attention=attention, tubelet_size=1, pooling=pooling)).eval()
    video = torch.randn(1, 4, 3, 32, 32)
    mask = torch.tensor([[True, True, False, False]])
    a = enc(video, mask).pooled
    video2 = video.clone()
    video2[:, 2:] = torch.randn(1, 2, 3, 32, 32) * 5
    b = enc(video2, mask).pooled
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    c = enc(video2).pooled  # without the mask the padding does leak in
    assert not torch.allclose(a, c, atol=1e-3)


def test_mean_pooling_is_the_mean_of_the_real_frames_patch_states():
    """model.video.pooling=mean (Video Swin's global average pool): the clip vector is the mean final patch
    state over the real time steps only, and it is not the [CLS] state."""
    torch.manual_seed(0)
    cls_enc = VideoEncoder(tiny_video_cfg(tubelet_size=1)).eval()
    mean_enc = VideoEncoder(tiny_video_cfg(tubelet_size=1, pooling="mean")).eval()
    mean_enc.load_state_dict(cls_enc.state_dict())  # same weights: only the pooling differs
    video, mask = torch.randn(2, 4, 3, 32, 32), torch.tensor([[True, True, True, False], [True] * 4])
    out, ref = mean_enc(video, mask), cls_enc(video, mask)
    torch.testing.assert_close(out.tokens, ref.tokens)
    torch.testing.assert_close(out.pooled[0], out.tokens[0, :3].mean((0, 1)))
    torch.testing.assert_close(out.pooled[1], out.tokens[1].mean((0, 1)))
    assert not torch.allclose(out.pooled, ref.pooled, atol=1e-3)


def test_minilm_text_encoder_matches_sentence_transformers():
    """The default text encoder is the shipped all-MiniLM-L6-v2, loaded offline; its mean-pooled output is
    what sentence-transformers computes for that model (before its final normalisation)."""
    st = pytest.importorskip("sentence_transformers")
    from structvl.data.text import Tokenizer, minilm_dir
    from structvl.models.text_encoder import TextEncoder

    enc = TextEncoder(TextEncoderConfig()).eval()
    texts = ["a small red circle moves to the left", "a man is playing a guitar"]
    tok = Tokenizer(max_length=32)(texts)
    with torch.no_grad():
        ours = torch.nn.functional.normalize(enc(tok["input_ids"], tok["attention_mask"]).pooled, dim=-1)
    ref = st.SentenceTransformer(str(minilm_dir()), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(ours, torch.nn.functional.normalize(ref, dim=-1), rtol=1e-4, atol=1e-4)


def test_scratch_text_encoder_and_dual_model_embeddings_are_normalised():
    from structvl.data.text import Tokenizer
    from structvl.models.video_text import build_model

    cfg = ModelConfig(video=tiny_video_cfg(), text=TextEncoderConfig(init=TextInitConfig(path="scratch"), width=32, depth=1, heads=2,
                                                                       intermediate_size=64), embed_dim=16)
    model = build_model(cfg)
    tok = Tokenizer(max_length=16)(["a red circle", "a blue square rotates"])
    t = model.encode_text(tok["input_ids"], tok["attention_mask"])
    v = model.encode_video(torch.randn(2, 4, 3, 32, 32))
    assert t.embed.shape == v.embed.shape == (2, 16)
    torch.testing.assert_close(t.embed.norm(dim=-1), torch.ones(2))
    assert float(model.logit_scale.detach()) == pytest.approx(20.0)  # 1 / 0.05
    with torch.no_grad():
        model.log_inv_temperature.fill_(10.0)
    model.clamp_logit_scale_()  # what the trainer does after each optimizer step
    assert float(model.logit_scale.detach()) == pytest.approx(100.0)  # clamped at 1 / min_temperature


def _checkpointed_model(every: bool = False, video: bool = False):
    from structvl.models.video_text import build_model

    torch.manual_seed(0)
    text = TextEncoderConfig(init=TextInitConfig(path="scratch"), width=32, depth=1, heads=2, intermediate_size=64)
    cfg = ModelConfig(video=tiny_video_cfg(activation_checkpointing=video), text=text, embed_dim=16,
                      activation_checkpointing=every)
    return build_model(cfg).train()


@pytest.mark.parametrize("every,video_only", [(True, False), (False, True)])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(every, video_only):
    """model.activation_checkpointing (every tower) and model.video.activation_checkpointing (the video blocks)."""
    from structvl.objectives.contrastive import info_nce

    def run(checkpointing: bool):
        model = _checkpointed_model(every and checkpointing, video_only and checkpointing)
        model.text_encoder.bert.config.hidden_dropout_prob = 0.0
        without_dropout(model)
        g = torch.Generator().manual_seed(1)
        video = torch.randn(3, 4, 3, 32, 32, generator=g)
        ids = torch.randint(1000, 2000, (3, 6), generator=g)
        loss = info_nce(model.encode_video(video).embed,
                        model.encode_text(ids, torch.ones_like(ids)).embed, model.logit_scale)["loss"]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_a, grads_a = run(False)
    loss_b, grads_b = run(True)
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_checkpoint_blocks_recomputes_the_first_blocks_alone():
    """model.video.checkpoint_blocks=1 of 2 blocks: the first block's forward runs twice a step, the second's once,
    and loss and gradients are those of the model without checkpointing."""
    from structvl.models.video_encoder import VideoEncoder

    def run(**kw):
        torch.manual_seed(0)
        enc = VideoEncoder(tiny_video_cfg(**kw)).train()
        runs = [0] * len(enc.blocks)
        for i, block in enumerate(enc.blocks):
            block.register_forward_pre_hook(lambda *a, i=i: runs.__setitem__(i, runs[i] + 1))
        loss = enc(torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1))).pooled.square().sum()
        loss.backward()
        return runs, loss.detach(), {n: p.grad for n, p in enc.named_parameters() if p.grad is not None}

    plain, every = run(), run(activation_checkpointing=True)
    first = run(activation_checkpointing=True, checkpoint_blocks=1)
    assert (plain[0], first[0], every[0]) == ([1, 1], [2, 1], [2, 2])
    torch.testing.assert_close(first[1], plain[1])
    for name, grad in plain[2].items():
        torch.testing.assert_close(first[2][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_video_checkpointing_recomputes_the_video_blocks_alone():
    """model.video.activation_checkpointing: each video block's forward runs twice a step (once more in the
    backward), each text layer's once; set_activation_checkpointing switches every tower (False: none, the video
    key included, what a FLOP count of the model needs; True: all) and None restores what the config says."""
    model = _checkpointed_model(video=True)
    runs = {"video": 0, "text": 0}
    for block in model.video_encoder.blocks:
        block.register_forward_pre_hook(lambda *a: runs.__setitem__("video", runs["video"] + 1))
    for layer in model.text_encoder.layers:  # transformers checkpoints a layer's forward, inside its hooks
        layer.attention.register_forward_pre_hook(lambda *a: runs.__setitem__("text", runs["text"] + 1))
    video = torch.randn(2, 4, 3, 32, 32)
    ids = torch.randint(1000, 2000, (2, 6))

    def per_layer(enabled):
        if enabled != "as built":
            model.set_activation_checkpointing(enabled)
        runs.update(video=0, text=0)
        loss = (model.encode_video(video).embed * model.encode_text(ids, torch.ones_like(ids)).embed).sum()
        loss.backward()
        return runs["video"] / len(model.video_encoder.blocks), runs["text"] / len(model.text_encoder.layers)

    assert per_layer("as built") == (2, 1) and model.recomputes
    assert per_layer(False) == (1, 1) and not model.recomputes
    assert per_layer(True) == (2, 2)
    assert per_layer(None) == (2, 1)
