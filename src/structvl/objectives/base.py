"""What every pre-training objective receives, and the protocol it follows.

An objective is an `nn.Module` built as `Objective(cfg, model, context)` and called as
`objective(batch, outputs, model) -> {"loss": scalar, ...more scalars to log}`; `PretrainingModule` weights
its "loss" by `cfg.objectives[name]`. Class attributes an objective may set:

    needs_knowledge = True   the batch must carry the captions' spaCy knowledge: `batch["knowledge"]`
                             (one CaptionKnowledge per caption) and `batch["token_offsets"]` (each token's
                             character span in its caption), so spans can be mapped to word pieces.

Optional class methods (the engine calls them for every enabled objective and never names a paper):

    knowledge_swaps(cfg) -> SwapSettings | None
                                            swapped-element captions the objective reads from `batch["swaps"]`
                                            (CLOP's construction): `structvl knowledge` builds and caches them,
                                            and the batch's knowledge lookup reads them (or builds a missing one).
    prepare_context(cfg, context, cache)    run once before training on the main rank first (then on the others):
                                            adjust the context, e.g. ask the knowledge lookup for more per batch
                                            (`context.knowledge`, a `KnowledgeLookup`), or store in `context.extras`.
    batch_sampler(cfg, dataset, context, world_size, rank) -> Sampler | stream grouping | None
                                            what decides which clips share a batch (e.g. CLOP's knowledge-grouped
                                            batches): a sampler for a map-style dataset, or for a streaming
                                            (sharded) one a stage its `set_grouping` takes; None for the engine's own.

What an objective trains is measured after pre-training by `structvl.tasks.evaluate.OBJECTIVE_MEASURES`
(CLOP's SKP mAP, S-ViLM's pointing and scene change, Clover's masked-word accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from structvl.data.knowledge.lookup import KnowledgeLookup
from structvl.data.knowledge.vocab import KnowledgeVocab


@dataclass
class ObjectiveContext:
    """Run-level resources shared by the objectives (built once in `run_pretraining`).

    tokenizer: the run's `structvl.data.text.Tokenizer` (for objectives that build new text, e.g. CLOP's
        swapped captions, or mask tokens, e.g. Clover).
    vocab: the knowledge label vocabulary of the training captions, read from the knowledge cache's counts
        (None when no objective needs knowledge); `vocab.total` is the number of training captions counted.
    knowledge: where the batches' knowledge comes from (the cache, read by the collator in the loader workers;
        None when no objective needs knowledge). No objective holds the corpus's knowledge: each reads its
        batch's (`batch["knowledge"]`, `batch["swaps"]`, `batch["video_knowledge"]`).
    """

    tokenizer: object = None
    vocab: KnowledgeVocab | None = None
    knowledge: KnowledgeLookup | None = None
    extras: dict = field(default_factory=dict)  # what objectives' prepare_context computed, by their own keys
