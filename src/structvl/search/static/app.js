// The search page: query box -> /api/search -> one tile per hit (animated thumbnail, caption, score).
"use strict";

const $ = (id) => document.getElementById(id);

function seconds(value) {
  return value === null || value === undefined ? "" : `${value.toFixed(1)} s`;
}

function tile(hit) {
  const figure = document.createElement("figure");
  figure.className = "tile";
  const image = document.createElement("img");
  image.src = hit.thumb;
  image.alt = hit.captions.length ? hit.captions[0] : hit.id;
  image.loading = "lazy";
  if (hit.video_url) {
    const link = document.createElement("a");
    link.href = hit.video_url;
    link.target = "_blank";
    link.appendChild(image);
    figure.appendChild(link);
  } else {
    figure.appendChild(image);
  }
  const caption = document.createElement("figcaption");
  const head = document.createElement("div");
  head.className = "head";
  head.textContent = `#${hit.rank}  score ${hit.score.toFixed(3)}`;
  caption.appendChild(head);
  const name = document.createElement("div");
  name.className = "name";
  const span = hit.start === null ? "" : `  ${seconds(hit.start)}-${seconds(hit.end)}`;
  name.textContent = hit.id + span;
  caption.appendChild(name);
  if (hit.captions.length) {
    const text = document.createElement("div");
    text.className = "caption";
    text.textContent = hit.captions[0];
    caption.appendChild(text);
  }
  figure.appendChild(caption);
  return figure;
}

async function search(query, k) {
  $("error").hidden = true;
  $("status").textContent = "searching\u2026";
  const started = performance.now();
  const response = await fetch(`/api/search?q=${encodeURIComponent(query)}&k=${k}`);
  const payload = await response.json();
  const results = $("results");
  results.replaceChildren();
  if (!response.ok) {
    $("error").textContent = payload.error;
    $("error").hidden = false;
    $("status").textContent = "";
    return;
  }
  payload.results.forEach((hit) => results.appendChild(tile(hit)));
  const ms = Math.round(performance.now() - started);
  $("status").textContent = `${payload.results.length} results for \u201c${payload.query}\u201d (${ms} ms)`;
}

async function loadInfo() {
  const info = await (await fetch("/api/info")).json();
  $("q").maxLength = info.max_query_chars;
  $("info").textContent = `${info.entries} clips \u00b7 index ${info.index_key} ${info.parameters} ` +
    `(recall@10 ${info["recall@10"]}) \u00b7 ${info.checkpoint}`;
}

document.addEventListener("DOMContentLoaded", () => {
  loadInfo();
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = $("q").value;
    const k = $("k").value;
    history.replaceState(null, "", `?q=${encodeURIComponent(query)}&k=${k}`);
    search(query, k);
  });
  const params = new URLSearchParams(location.search);
  if (params.get("q")) {
    $("q").value = params.get("q");
    if (params.get("k")) $("k").value = params.get("k");
    search($("q").value, $("k").value);
  }
});
