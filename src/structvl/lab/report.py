"""The demo's HTML report: one self-contained file (figures inlined as PNG data URIs).

Sections: the results table (mean +- std over seeds, chance beside it), the training loss curves, a
text x video similarity heatmap for a few test clips, retrieved examples (frames + captions) and, for a model
with S-ViLM group tokens, each noun phrase's chosen group overlaid on the frames.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from structvl.data.formats import read_annotations
from structvl.data.sampling import sample_frame_indices
from structvl.data.video import open_video
from structvl.engine.logger import read_metrics_jsonl
from structvl.tasks.eval_data import eval_annotations, eval_loader
from structvl.tasks.grounding import boxes_to_input, clip_groundings
from structvl.tasks.retrieval import embed_texts, embed_videos


def _figure_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _image_uri(frames: np.ndarray) -> str:
    """A horizontal strip of uint8 RGB frames (T, H, W, 3) as a PNG data URI."""
    from PIL import Image

    strip = np.concatenate(list(frames), axis=1)
    buf = io.BytesIO()
    Image.fromarray(strip).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def loss_curve_figure(runs: dict[str, list[Path]]) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for label, run_dirs in runs.items():
        for i, run_dir in enumerate(run_dirs):
            rows = read_metrics_jsonl(run_dir / "metrics.jsonl")
            if rows:
                ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], alpha=0.8,
                        label=label if i == 0 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _figure_uri(fig)


def similarity_heatmap_figure(sims: np.ndarray, captions: list[str]) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(captions) + 1.2))
    im = ax.imshow(sims, cmap="viridis")
    ax.set_yticks(range(len(captions)), [c if len(c) < 60 else c[:57] + "..." for c in captions], fontsize=7)
    ax.set_xticks(range(sims.shape[1]), [f"clip {i}" for i in range(sims.shape[1])], fontsize=7, rotation=45)
    ax.set_xlabel("test clip (the diagonal is each caption's own clip)")
    fig.colorbar(im, ax=ax, fraction=0.03, label="cosine similarity")
    return _figure_uri(fig)


def bar_chart_figure(rows: dict[str, dict[str, tuple[float, float]]], keys: list[str], title: str,
                     chance: float | None = None) -> str:
    """Grouped bars: one group per metric key, one bar per recipe (row), error bars = std over seeds."""
    # at most 11 inches wide (about 1200 px at the report's 110 dpi): many recipes make thinner bars, not a wider page
    fig, ax = plt.subplots(figsize=(min(11.0, max(5.0, 1.1 * len(keys) * max(1, len(rows)) / 2 + 2)), 3.2))
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(keys))
    for i, (label, values) in enumerate(rows.items()):
        means = [values.get(k, (np.nan, 0))[0] for k in keys]
        stds = [values.get(k, (np.nan, 0))[1] for k in keys]
        ax.bar(x + i * width, means, width, yerr=stds, label=label, capsize=2)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
    names = [k.removeprefix("hard_negative/") if k.startswith("hard_negative/") else "/".join(k.split("/")[-2:])
             for k in keys]
    ax.set_xticks(x + width * (len(rows) - 1) / 2, names, fontsize=7, rotation=20 if len(keys) > 6 else 0)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _figure_uri(fig)


def _display_frames(path: Path, num_frames: int, backend: str) -> np.ndarray:

    with open_video(path, backend) as reader:
        idx, _ = sample_frame_indices(reader.num_frames, reader.fps, num_frames, "uniform")
        return reader.get_frames(idx.tolist())


@torch.no_grad()
def examples_section(model, cfg, tokenizer, data_root: Path, num_clips: int = 8, top_k: int = 3) -> str:
    """Heatmap over the first test clips and, for a few captions, the top-k retrieved clips."""

    records = read_annotations(cfg.data.format, data_root / eval_annotations(cfg))[: max(num_clips, 24)]
    video_root = Path(cfg.data.videos) if cfg.data.videos else data_root
    device = next(model.parameters()).device
    video_embed, kept = embed_videos(model, eval_loader(records, cfg, video_root, tokenizer), device)
    records = [records[i] for i in kept]
    captions = [r.captions[0] for r in records]
    text_embed = embed_texts(model, tokenizer, captions, device)
    sims = (text_embed @ video_embed.t()).numpy()
    parts = [f'<h2>Text x video similarity ({num_clips} test clips)</h2>'
             f'<img src="{similarity_heatmap_figure(sims[:num_clips, :num_clips], captions[:num_clips])}">',
             f"<h2>Retrieved examples (text &rarr; video, top {top_k} of {len(records)})</h2>"]
    for q in range(min(4, len(records))):
        order = np.argsort(-sims[q])[:top_k]
        parts.append(f"<p class='query'>&ldquo;{html.escape(captions[q])}&rdquo;</p><div class='row'>")
        for rank, v in enumerate(order, 1):
            frames = _display_frames(records[v].resolve(video_root), 4, cfg.data.backend)
            ok = "hit" if v == q else "miss"
            parts.append(f"<figure class='{ok}'><img src='{_image_uri(frames)}'><figcaption>#{rank} "
                         f"({sims[q, v]:.2f}) {html.escape(captions[v])}</figcaption></figure>")
        parts.append("</div>")
    return "\n".join(parts)


@torch.no_grad()
def grounding_section(model, cfg, tokenizer, data_root: Path, num_clips: int = 3) -> str:
    """S-ViLM: for a few test clips, each noun phrase with the patches of the group it picks tinted on the
    frames (one frame per encoder time step), and the phrase's object box outlined in white."""

    records = [r for r in read_annotations(cfg.data.format, data_root / eval_annotations(cfg))[:32]
               if r.meta.get("phrases") and r.meta.get("objects")][:num_clips]
    if not records or not cfg.model.video.num_group_tokens:
        return ""
    video_root = Path(cfg.data.videos) if cfg.data.videos else data_root
    v = cfg.model.video
    grid, tub = v.image_size // v.patch_size, v.tubelet_size
    device = next(model.parameters()).device
    parts = ["<h2>Grounding: the group each noun phrase picks (S-ViLM)</h2>"]
    for clip in clip_groundings(model, cfg, tokenizer, records, video_root, device):
        rec = clip["record"]
        frames = _display_frames(rec.resolve(video_root), cfg.eval.num_frames, cfg.data.backend)[::tub]
        steps = min(len(frames), clip["assignment"].shape[0])
        phrases = clip["phrases"]
        fig, axes = plt.subplots(len(phrases), steps, figsize=(1.3 * steps, 1.45 * len(phrases)), squeeze=False)
        for p, phrase in enumerate(phrases):
            group = int(clip["group_sim"][p].argmax())
            obj = rec.meta["objects"][phrase["object"]]
            for t in range(steps):
                ax = axes[p, t]
                ax.imshow(frames[t], extent=(0, v.image_size, v.image_size, 0))
                owned = (clip["assignment"][t] == group).view(grid, grid).float().numpy()
                ax.imshow(np.ma.masked_where(owned == 0, owned), cmap="autumn", alpha=0.55, vmin=0, vmax=1,
                          extent=(0, v.image_size, v.image_size, 0))
                frame = clip["frame_indices"][t * tub]
                x0, y0, x1, y1 = boxes_to_input(np.array(obj["boxes"][frame]), frames.shape[1], v.image_size)
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", lw=1))
                ax.set_xticks([])
                ax.set_yticks([])
            label = rec.captions[0][phrase["start"]:phrase["end"]]
            axes[p, 0].set_ylabel(f"{label}\n(group {group})", fontsize=7, rotation=0, ha="right", va="center")
        parts.append(f"<p class='query'>&ldquo;{html.escape(rec.captions[0])}&rdquo;</p>"
                     f"<img src='{_figure_uri(fig)}'>")
    return "\n".join(parts)


_STYLE = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px;margin-bottom:1em}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th:first-child,td:first-child{text-align:left}th{overflow-wrap:anywhere;vertical-align:bottom}
td{white-space:nowrap}td.recipe{white-space:normal;overflow-wrap:anywhere;min-width:12em}
h3{font-size:14px;margin:1em 0 .3em}img{max-width:100%;height:auto}.row{display:flex;gap:10px;flex-wrap:wrap}
figure{margin:0;font-size:11px;max-width:300px}figure img{image-rendering:pixelated;width:280px}
.hit img{outline:3px solid #2a2}.miss img{outline:3px solid #c33}.query{font-weight:600;margin-bottom:2px}
.note{color:#555;font-size:13px}"""


# The results table is split into tables of at most this many metric columns, each beside the recipe column, so
# that it fits a 1280-px window (tests/test_report_layout.py): a "mean ± std" cell is about 85 px wide.
TABLE_MAX_COLUMNS = 8
TABLE_SECTIONS = (("retrieval/", "Zero-shot retrieval"), ("hard_negative/", "Hard-negative accuracy"),
                  ("unseen:", "Unseen corpus (another seed, held-out colour-shape pairs): zero-shot"),
                  ("", "Downstream tasks and each paper's own measures"))


def column_groups(columns: list[str]) -> list[tuple[str, list[str]]]:
    """(heading, columns) of each table: the columns by section (TABLE_SECTIONS), in their order, cut into runs of
    at most TABLE_MAX_COLUMNS."""
    sections: dict[str, list[str]] = {}
    for c in columns:
        sections.setdefault(next(title for prefix, title in TABLE_SECTIONS if c.startswith(prefix)), []).append(c)
    groups = []
    for title, cols in sections.items():
        parts = [cols[i:i + TABLE_MAX_COLUMNS] for i in range(0, len(cols), TABLE_MAX_COLUMNS)]
        groups += [(title if len(parts) == 1 else f"{title} ({n}/{len(parts)})", part)
                   for n, part in enumerate(parts, 1)]
    return groups


def results_table_html(rows: dict[str, dict[str, tuple[float, float]]], columns: list[str],
                       chance: dict[str, float]) -> str:
    """The results as one table per column group (`column_groups`), every recipe a row of each; headers break
    after each "/" so that long metric names wrap instead of widening the page."""
    tables = []
    for title, group in column_groups(columns):
        head = "".join(f"<th>{html.escape(c).replace('/', '/<wbr>')}</th>" for c in group)
        body = []
        for label, values in rows.items():
            cells = "".join(
                f"<td>{values[c][0]:.1f} &plusmn; {values[c][1]:.1f}</td>" if c in values else "<td>&ndash;</td>"
                for c in group)
            body.append(f"<tr><td class='recipe'>{html.escape(label)}</td>{cells}</tr>")
        chance_cells = "".join(f"<td>{chance[c]:.1f}</td>" if c in chance else "<td></td>" for c in group)
        body.append(f"<tr><td class='recipe'><i>chance</i></td>{chance_cells}</tr>")
        tables.append(f"<h3>{html.escape(title)}</h3><table class='results'><tr><th>recipe</th>{head}</tr>"
                      f"{''.join(body)}</table>")
    return "".join(tables)


def search_command_html(rows: dict[str, dict[str, tuple[float, float]]], runs: dict[str, list[Path]]) -> str:
    """The one command that serves a text search over the demo corpus's test clips with the recipe of the best
    mean text-to-video R@1 (its first seed's run): `make search` extracts, indexes and serves (structvl.search)."""
    scored = [(values["retrieval/t2v/R@1"][0], label) for label, values in rows.items()
              if "retrieval/t2v/R@1" in values and runs.get(label)]
    if not scored:
        return ""
    best, label = max(scored)
    command = f"make search RUN={runs[label][0]}"
    return (f"<h2>Search the test clips</h2><p class='note'>With the best recipe by text&rarr;video R@1 "
            f"({html.escape(label)}, {best:.1f}): <code>{html.escape(command)}</code>, then open "
            f"http://127.0.0.1:8765/ (README, &ldquo;Search your videos&rdquo;).</p>")


def write_report(path: Path, title: str, rows, columns, chance, runs: dict[str, list[Path]],
                 examples_html: str = "", notes: str = "") -> Path:
    retrieval_keys = [c for c in columns if c.startswith("retrieval/") and "/R@" in c]
    factor_keys = [c for c in columns if c.startswith("hard_negative/")]
    figures = [f'<h2>Training loss</h2><img src="{loss_curve_figure(runs)}">']
    if retrieval_keys:
        figures.append(f'<img src="{bar_chart_figure(rows, retrieval_keys, "zero-shot retrieval (%)")}">')
    if factor_keys:
        figures.append(f'<img src="{bar_chart_figure(rows, factor_keys, "hard-negative accuracy (%)", 50.0)}">')
    unseen_keys = [c for c in columns if c.startswith("unseen:")]
    if unseen_keys:
        figures.append(f'<img src="{bar_chart_figure(rows, unseen_keys, "unseen corpus, zero-shot (%)")}">')
    other_keys = [c for c in columns if not c.startswith(("retrieval/", "hard_negative/", "unseen:"))]
    if other_keys:  # downstream tasks and each paper's own measure (each read against its chance in the table)
        figures.append(f'<img src="{bar_chart_figure(rows, other_keys, "downstream and structure metrics (%)")}">')
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
           f"<p class='note'>{notes}</p><h2>Results (mean &plusmn; std over seeds)</h2>"
           f"{results_table_html(rows, columns, chance)}{search_command_html(rows, runs)}{''.join(figures)}"
           f"{examples_html}</body></html>")
    path = Path(path)
    path.write_text(doc, encoding="utf-8")
    return path
