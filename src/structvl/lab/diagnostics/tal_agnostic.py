"""Re-run the demo's temporal action localization on saved runs and add its class-agnostic mAP.

    python -m structvl.lab.diagnostics.tal_agnostic CORPUS RUN [RUN ...]

For each run: the demo's localization protocol (configs/finetune/structured_demo.yaml, the same head, seed and
features as `structvl demo`), printed with the class-aware mAP it reproduces and the class-agnostic mAP that
separates finding the segments from naming their action; the `localization/agnostic/*` keys are merged into the
run's metrics.json (the other keys are left as the demo wrote them).
"""

from __future__ import annotations

import sys
from pathlib import Path

from structvl.engine.checkpoint import load_run_model
from structvl.lab.demo import DOWNSTREAM_CONFIG, write_json_merged
from structvl.tasks.localization import run_localization
from structvl.tasks.task_config import load_task_config


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    corpus = Path(argv[0])
    task_cfg = load_task_config(DOWNSTREAM_CONFIG)
    for run in map(Path, argv[1:]):
        model, cfg, run_dir = load_run_model(run)
        metrics = run_localization(model.eval(), task_cfg.localization, corpus, batch_size=task_cfg.batch_size,
                                   seed=task_cfg.seed, num_workers=task_cfg.num_workers)
        agnostic = {k: v for k, v in metrics.items() if k.startswith("localization/agnostic/")}
        write_json_merged(run_dir / "metrics.json", agnostic)
        print(f"{run}: mAP_avg {metrics['localization/mAP_avg']:.2f}  agnostic mAP_avg "
              f"{agnostic['localization/agnostic/mAP_avg']:.2f} (@0.5 {agnostic['localization/agnostic/mAP@0.5']:.2f}; "
              f"chance {agnostic['localization/agnostic/chance/mAP_avg']:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
