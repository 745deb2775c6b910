"""Run logging: a tqdm progress bar (loss, clips/s, ETA), TensorBoard scalars and `metrics.jsonl`.

Only rank 0 writes; other ranks get a logger whose methods do nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm.auto import tqdm


class RunLogger:
    def __init__(self, run_dir: Path, total_steps: int, initial_step: int = 0, enabled: bool = True,
                 tensorboard: bool = True):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._writer = None
        self._bar = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        self._bar = tqdm(total=total_steps, initial=initial_step, desc="pretrain", unit="step",
                         dynamic_ncols=True, mininterval=1.0)
        self._t0 = time.perf_counter()

    def step(self, n: int = 1, postfix: dict | None = None) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: f"{v:.3g}" for k, v in postfix.items()}, refresh=False)

    def log(self, step: int, scalars: dict[str, float], kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.perf_counter() - self._t0, 3), **scalars}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(f"{kind}/{key}", value, step)

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
        self._jsonl.close()


def read_metrics_jsonl(path: Path, kind: str = "train") -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == kind]
