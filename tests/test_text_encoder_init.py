"""The text tower from any local Hugging Face checkpoint (model.text.init.path): a tiny random BERT (WordPiece)
and RoBERTa (byte-level BPE), each with a tokenizer built by the `tokenizers` library, saved with save_pretrained
and loaded offline, give transformers' AutoTokenizer ids and AutoModel states exactly."""

from __future__ import annotations

import logging

import pytest
import torch
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertModel,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaModel,
)

from structvl.config import FusionConfig, ModelConfig, TextEncoderConfig, TextInitConfig, VideoEncoderConfig
from structvl.models.text_encoder import TextEncoder, build_tokenizer
from structvl.models.video_text import build_model

TEXTS = ["a red circle moves left", "the blue square slides slowly to the right of a green triangle",
         "a man"]
WORDS = sorted({w for t in TEXTS for w in t.split()} | {"slid", "##es", "##ly", "move", "##s"})


def perturb_(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tok = RustTokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]", model_max_length=512).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=40)
    perturb_(BertModel(config)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("roberta")
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = RustTokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    from tokenizers import trainers
    tok.train_from_iterator(TEXTS * 3, trainers.BpeTrainer(vocab_size=120, special_tokens=specials,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>",
                            model_max_length=512).save_pretrained(path)
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=34, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2)
    perturb_(RobertaModel(config)).save_pretrained(path)
    return path


@pytest.mark.parametrize("which", ["bert", "roberta"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_text_tower_is_the_checkpoint(which, pooling, request):
    path = request.getfixturevalue(f"{which}_dir")
    cfg = TextEncoderConfig(init=TextInitConfig(path=str(path), pooling=pooling), max_length=12)
    tokens = build_tokenizer(cfg)(TEXTS)
    reference_ids = AutoTokenizer.from_pretrained(str(path), local_files_only=True)(
        TEXTS, padding=True, truncation=True, max_length=12, return_tensors="pt")
    assert torch.equal(tokens["input_ids"], reference_ids["input_ids"])
    assert torch.equal(tokens["attention_mask"], reference_ids["attention_mask"])
    encoder = TextEncoder(cfg).eval()
    reference = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    with torch.no_grad():
        out = encoder(tokens["input_ids"], tokens["attention_mask"])
        states = reference(**reference_ids).last_hidden_state
    assert float((out.tokens - states).abs().max()) < 1e-5
    mask = tokens["attention_mask"][..., None].float()
    expected = states[:, 0] if pooling == "cls" else (states * mask).sum(1) / mask.sum(1)
    assert float((out.pooled - expected).abs().max()) < 1e-5


def test_special_tokens_are_the_checkpoints(roberta_dir):
    tok = build_tokenizer(TextEncoderConfig(init=TextInitConfig(path=str(roberta_dir))))
    ids = tok(["a man"])["input_ids"][0].tolist()
    assert tok.convert_ids_to_tokens([ids[0], ids[-1], tok.pad_token_id, tok.mask_token_id]) == [
        "<s>", "</s>", "<pad>", "<mask>"]


def test_max_length_null_is_what_the_checkpoint_allows_and_cuts_are_reported(roberta_dir, bert_dir, caplog):
    """RoBERTa's 34 positions hold 32 tokens (its positions start after the padding index); BERT's 40 hold 40."""
    roberta = build_tokenizer(TextEncoderConfig(init=TextInitConfig(path=str(roberta_dir)), max_length=None))
    bert = build_tokenizer(TextEncoderConfig(init=TextInitConfig(path=str(bert_dir)), max_length=None))
    assert (roberta.max_length, bert.max_length) == (32, 40)
    short = build_tokenizer(TextEncoderConfig(init=TextInitConfig(path=str(bert_dir)), max_length=5))
    with caplog.at_level(logging.WARNING, logger="structvl"):
        short(TEXTS)
    assert (short.cut, short.seen) == (2, 3)  # "a man" fits in 5 tokens
    assert "model.text.max_length=5 cuts captions" in caplog.text


def tiny_model(text_path: str, **fusion) -> ModelConfig:
    video = VideoEncoderConfig(image_size=16, num_frames=2, patch_size=8, width=32, depth=1, heads=2)
    return ModelConfig(video=video, text=TextEncoderConfig(init=TextInitConfig(path=text_path)), embed_dim=16,
                       fusion=FusionConfig(**fusion))


@pytest.mark.parametrize("where, index", [("first", 0), ("top", 2)])
def test_fusion_layers_start_from_the_chosen_text_layers(bert_dir, where, index):
    model = build_model(tiny_model(str(bert_dir), layers=1, init_from_text_layers=where))
    ours, text = model.fusion.layers[0].state_dict(), model.text_encoder.layers[index].state_dict()
    assert all(torch.equal(ours[k], text[k]) for k in text)
    other = model.text_encoder.layers[2 - index].state_dict()
    assert not all(torch.equal(ours[k], other[k]) for k in other)


def test_paragraph_tokenizer_takes_what_the_encoder_allows(bert_dir):
    """Paragraph retrieval (DiDeMo, ActivityNet) reads as many tokens as the checkpoint's positions hold, and a
    scratch BERT's as many as its table was built with."""
    from structvl.models.text_encoder import paragraph_tokenizer

    pretrained = TextEncoder(TextEncoderConfig(init=TextInitConfig(path=str(bert_dir)), max_length=12))
    scratch = TextEncoder(TextEncoderConfig(init=TextInitConfig(path="scratch"), max_length=16, width=16, depth=1,
                                            heads=2, intermediate_size=32))
    assert (paragraph_tokenizer(pretrained).max_length, paragraph_tokenizer(scratch).max_length) == (40, 64)
