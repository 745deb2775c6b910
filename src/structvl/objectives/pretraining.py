"""Model + weighted objectives as one module, so DDP/FSDP wrap a single forward that returns the loss.

The shared forward encodes the batch's videos and captions once; each enabled objective receives those
outputs (and the model, for objectives that need extra passes such as masked or cut-and-paste inputs)
and returns a dict whose "loss" entry is weighted by the config's `objectives` dict. Objectives are
added by writing a module and a line in `OBJECTIVES`; the trainer never changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from structvl.models.video_text import TextEmbedding, VideoEmbedding, VideoTextModel
from structvl.objectives import OBJECTIVES
from structvl.objectives.base import ObjectiveContext


@dataclass
class PretrainOutputs:
    video: VideoEmbedding
    text: TextEmbedding


def enabled_objectives(cfg) -> dict[str, float]:
    """{name: weight} of the objectives the config turns on (weight > 0)."""
    return {name: float(w) for name, w in cfg.objectives.items() if float(w) > 0}


def needs_knowledge(cfg) -> bool:
    """Whether some enabled objective reads the captions' spaCy knowledge from the batch."""
    return any(getattr(OBJECTIVES[name], "needs_knowledge", False) for name in enabled_objectives(cfg))


class PretrainingModule(nn.Module):
    def __init__(self, model: VideoTextModel, cfg, context: ObjectiveContext | None = None):
        super().__init__()
        self.model = model
        self.weights = enabled_objectives(cfg)
        context = context or ObjectiveContext()
        self.objectives = nn.ModuleDict({name: OBJECTIVES[name](cfg, model, context) for name in self.weights})

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(weighted total loss, logs). The logs are detached 0-d tensors on the loss's device, never Python
        floats: turning one into a float waits for the device (a sync per value per step on a GPU), so the
        trainer accumulates them on the device and moves them to the host only at `train.log_every` steps."""
        outputs = PretrainOutputs(
            video=self.model.encode_video(batch["video"], batch.get("frame_mask")),
            text=self.model.encode_text(batch["input_ids"], batch["attention_mask"]),
        )
        total = outputs.video.embed.new_zeros(())
        logs: dict[str, torch.Tensor] = {}
        for name, objective in self.objectives.items():
            result = objective(batch, outputs, self.model)
            total = total + self.weights[name] * result["loss"]
            for key, value in result.items():
                logs[f"{name}/{key}"] = torch.as_tensor(value, device=total.device).detach().float()
        logs["loss"] = total.detach().float()
        logs["temperature"] = (1.0 / self.model.logit_scale).detach().float()
        return total, logs
