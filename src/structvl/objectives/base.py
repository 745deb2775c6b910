"""What every pre-training objective receives, and the protocol it follows.

An objective is an `nn.Module` built as `Objective(cfg, model, context)` and called as
`objective(batch, outputs, model) -> {"loss": scalar, ...more scalars to log}`; `PretrainingModule` weights
its "loss" by `cfg.objectives[name]`. Class attributes an objective may set:

    needs_knowledge = True   the batch must carry the captions' spaCy knowledge: `batch["knowledge"]`
                             (one CaptionKnowledge per caption) and `batch["token_offsets"]` (each token's
                             character span in its caption), so spans can be mapped to word pieces.

Optional class methods (the engine calls them for every enabled objective and never names a paper):

    prepare_context(cfg, context, cache)    run once before training on the main rank first (then on the others,
                                            which find the knowledge cache filled): precompute from the parsed
                                            corpus and store it in `context.extras` (e.g. CLOP's swapped captions).
    batch_sampler(cfg, dataset, context, world_size, rank) -> Sampler | None
                                            a sampler that decides which clips share a batch (e.g. CLOP's
                                            knowledge-grouped batches), or None for the engine's own.

What an objective trains is measured after pre-training by `structvl.tasks.evaluate.OBJECTIVE_MEASURES`
(CLOP's SKP mAP, S-ViLM's pointing and scene change, Clover's masked-word accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from structvl.data.knowledge.record import CaptionKnowledge
from structvl.data.knowledge.vocab import KnowledgeVocab


@dataclass
class ObjectiveContext:
    """Run-level resources shared by the objectives (built once in `run_pretraining`).

    tokenizer: the run's `structvl.data.text.Tokenizer` (for objectives that build new text, e.g. CLOP's
        swapped captions, or mask tokens, e.g. Clover).
    vocab: the knowledge label vocabulary of the training captions (None when no objective needs knowledge).
    knowledge: caption -> CaptionKnowledge for every training caption (empty when not needed).
    videos_captions: video id -> the captions of that training video (paraphrases of one another, where there
        are several; a video listed twice in the annotations has the captions of both entries).
    """

    tokenizer: object = None
    vocab: KnowledgeVocab | None = None
    knowledge: dict[str, CaptionKnowledge] = field(default_factory=dict)
    videos_captions: dict[str, list[str]] = field(default_factory=dict)  # video id -> its training captions
    extras: dict = field(default_factory=dict)  # what objectives' prepare_context computed, by their own keys
