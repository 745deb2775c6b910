"""Pre-training objectives, one module per paper's family.

- contrastive.py: the global video<->text InfoNCE every recipe shares.
- (clop.py, svilm.py, clover.py: one file each for CLOP, S-ViLM and Clover.)

`OBJECTIVES` maps the names used in the config's `objectives:` weight dict to their classes; it is a plain
dict so "go to definition" always works.
"""

from structvl.objectives.clop import KnowledgeContrastiveObjective, KnowledgePredictionObjective
from structvl.objectives.clover import CloverAlignObjective, CloverMlmObjective, CloverRankObjective
from structvl.objectives.contrastive import ContrastiveObjective
from structvl.objectives.svilm import SpatialGroundingObjective, TemporalGroupingObjective

OBJECTIVES = {
    "contrastive": ContrastiveObjective,
    "clop_skp": KnowledgePredictionObjective,
    "clop_kcl": KnowledgeContrastiveObjective,
    "svilm_grounding": SpatialGroundingObjective,
    "svilm_temporal": TemporalGroupingObjective,
    "clover_align": CloverAlignObjective,
    "clover_rank": CloverRankObjective,
    "clover_mlm": CloverMlmObjective,
}
