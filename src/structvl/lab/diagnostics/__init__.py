"""Diagnostics: each module asks one question of trained runs on the structured corpus and prints the answer
(`python -m structvl.lab.diagnostics.NAME --help`). What they measured is in docs/findings.md."""
