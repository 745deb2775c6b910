"""Pre-training objectives, one module per paper's family.

- contrastive.py: the global video<->text InfoNCE every recipe shares.
- (clop.py, svilm.py, clover.py: one file each for CLOP, S-ViLM and Clover.)

`OBJECTIVES` maps the names used in the config's `objectives:` weight dict to their classes; it is a plain
dict so "go to definition" always works.
"""

from structvl.objectives.contrastive import ContrastiveObjective

OBJECTIVES = {
    "contrastive": ContrastiveObjective,
}
