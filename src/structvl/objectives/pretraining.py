"""Model + weighted objectives as one module, so DDP/FSDP wrap a single forward that returns the loss.

The shared forward encodes the batch's videos and captions once; each enabled objective receives those
outputs (and the model, for objectives that need extra passes such as masked or cut-and-paste inputs)
and returns a dict whose "loss" entry is weighted by the config's `objectives` dict. Objectives are
added by writing a module and a line in `OBJECTIVES`; the trainer never changes.

Extra passes are batched with the shared ones (objectives/passes.py): before encoding, each objective with a
`requests(batch, model)` method names the extra clips and captions it needs, and they go through the encoders in
the same calls as the batch's own; `batch_passes=False` keeps one call per pass (each objective encodes its own).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from structvl.models.video_text import TextEmbedding, VideoEmbedding, VideoTextModel
from structvl.objectives import OBJECTIVES
from structvl.objectives.base import ObjectiveContext
from structvl.objectives.passes import Encoded, TextInput, VideoInput, encode_texts, encode_videos


@dataclass
class PretrainOutputs:
    video: VideoEmbedding
    text: TextEmbedding
    # The objectives' extra inputs, encoded in the shared calls: request key -> Encoded (objectives/passes.py).
    extra: dict[str, Encoded] = field(default_factory=dict)
    batched: bool = False  # whether the passes are batched (objectives then batch their own later passes too)


def enabled_objectives(cfg) -> dict[str, float]:
    """{name: weight} of the objectives the config turns on (weight > 0)."""
    return {name: float(w) for name, w in cfg.objectives.items() if float(w) > 0}


def needs_knowledge(cfg) -> bool:
    """Whether some enabled objective reads the captions' spaCy knowledge from the batch."""
    return any(getattr(OBJECTIVES[name], "needs_knowledge", False) for name in enabled_objectives(cfg))


class PretrainingModule(nn.Module):
    """batch_passes: encode the objectives' extra inputs in the same encoder calls as the batch's own (the
    default); False encodes each pass on its own, as each objective would alone (the reference computation)."""

    def __init__(self, model: VideoTextModel, cfg, context: ObjectiveContext | None = None,
                 batch_passes: bool = True):
        super().__init__()
        self.model = model
        self.weights = enabled_objectives(cfg)
        self.batch_passes = batch_passes
        context = context or ObjectiveContext()
        self.objectives = nn.ModuleDict({name: OBJECTIVES[name](cfg, model, context) for name in self.weights})

    def encode(self, batch: dict) -> PretrainOutputs:
        """The batch's clips and captions, and (batch_passes) every extra input the objectives request, encoded."""
        if not self.batch_passes:
            return PretrainOutputs(video=self.model.encode_video(batch["video"], batch.get("frame_mask")),
                                   text=self.model.encode_text(batch["input_ids"], batch["attention_mask"]))
        requests: dict = {}
        for objective in self.objectives.values():  # in objective order: their random draws keep that order
            ask = getattr(objective, "requests", None)
            for key, value in (ask(batch, self.model) if ask is not None else {}).items():
                requests.setdefault(key, value)  # objectives sharing a pass (Clover's three) ask for it once
        videos = {k: v for k, v in requests.items() if isinstance(v, VideoInput)}
        texts = {k: v for k, v in requests.items() if isinstance(v, TextInput)}
        if videos:
            video, encoded = encode_videos(self.model, batch["video"], batch.get("frame_mask"), list(videos.values()))
        else:
            video, encoded = self.model.encode_video(batch["video"], batch.get("frame_mask")), []
        text, *encoded_texts = encode_texts(
            self.model, [TextInput(batch["input_ids"], batch["attention_mask"], keep_tokens=True), *texts.values()])
        extra = {k: Encoded(v, out) for (k, v), out in zip(videos.items(), encoded)}
        extra.update({k: Encoded(v, out) for (k, v), out in zip(texts.items(), encoded_texts)})
        return PretrainOutputs(video=video, text=text, extra=extra, batched=True)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(weighted total loss, logs). The logs are detached 0-d tensors on the loss's device, never Python
        floats: turning one into a float waits for the device (a sync per value per step on a GPU), so the
        trainer accumulates them on the device and moves them to the host only at `train.log_every` steps."""
        outputs = self.encode(batch)
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
