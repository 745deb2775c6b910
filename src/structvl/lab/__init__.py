"""The lab: what structvl's own experiments need and a user with real data does not.

- `synth/`: the embedded structured corpus (procedurally generated clips, captions and their ground truth);
- `demo.py`: `structvl demo`, every recipe pre-trained and evaluated on that corpus, and `report.py`, its HTML page;
- `diagnostics/`: one module per question asked of a trained run (`python -m structvl.lab.diagnostics.NAME`).

The library (data, models, objectives, engine, tasks) never imports from here.
"""
