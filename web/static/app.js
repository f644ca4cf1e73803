// AnimeLens web UI: pick or drop an image -> character verdict, lookalike characters and
// lookalike images, and "possible copy of ..." when the copyright review matches a catalogued
// picture; click an image to search from it; like/dislike to shape the "for you" feed.
// Talks only to the JSON API under /api/v1.
"use strict";

const API = "/api/v1";
const $ = (id) => document.getElementById(id);
const user = localStorage.getItem("animelens-user") ||
  (() => { const u = "web-" + Math.random().toString(36).slice(2, 10); localStorage.setItem("animelens-user", u); return u; })();
const verdicts = new Map(); // item id -> "like" | "dislike"
let current = null; // the query on screen: { file } or { id }
let maxK = 12; // the server's max_k, read from /healthz: the UI never asks for more
const k = (wanted) => Math.min(wanted, maxK);

async function call(path, options = {}) {
  const res = await fetch(API + path, options);
  const isJson = (res.headers.get("content-type") || "").includes("json");
  const body = isJson ? await res.json() : null;
  if (!res.ok) throw new Error(body && body.error ? body.error : `HTTP ${res.status}`);
  return body;
}

function showError(e) {
  const p = $("error");
  p.textContent = e ? String(e.message || e) : "";
  p.hidden = !e;
}

function pct(x) { return (100 * x).toFixed(0) + "%"; }

// A result card. Search hits show their similarity (the calibrated confidence when the model has
// one); feed and recommendation cards show none: their scores rank, they do not measure.
function card(hit, onOpen, scored) {
  const item = hit.item;
  const div = document.createElement("div");
  div.className = "card";
  div.dataset.id = item.id;
  const img = document.createElement("img");
  img.src = item.thumbnail_url;
  img.alt = item.labels.character || item.source;
  img.loading = "lazy";
  img.title = "Search from this picture";
  img.addEventListener("click", () => onOpen(item));
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.innerHTML = `<span class="name"></span><span class="score"></span>`;
  meta.querySelector(".name").textContent = item.labels.character || "—";
  if (scored) {
    const score = meta.querySelector(".score");
    score.textContent = hit.confidence != null
      ? `${pct(hit.confidence)} · ${hit.score.toFixed(2)}`
      : hit.score.toFixed(2);
    score.title = hit.confidence != null
      ? `same character: ${pct(hit.confidence)} (similarity ${hit.score.toFixed(2)})`
      : `similarity ${hit.score.toFixed(2)}`;
  }
  const actions = document.createElement("div");
  actions.className = "actions";
  for (const kind of ["like", "dislike"]) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = kind + (verdicts.get(item.id) === kind ? " on" : "");
    b.textContent = kind === "like" ? "♥ like" : "✕ nope";
    b.addEventListener("click", () => rate(item.id, kind, actions));
    actions.appendChild(b);
  }
  div.append(img, meta, actions);
  return div;
}

function fill(grid, hits, scored) {
  grid.replaceChildren(...hits.map((h) => card(h, openItem, scored)));
}

async function rate(id, kind, actions) {
  try {
    await call(`/users/${encodeURIComponent(user)}/events`, {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ item: id, kind }),
    });
    verdicts.set(id, kind);
    document.querySelectorAll(`.card[data-id="${id}"] .actions button`).forEach((b) =>
      b.classList.toggle("on", b.classList.contains(kind)));
    await loadFeed();
  } catch (e) { showError(e); }
}

async function loadFeed() {
  try {
    const { hits } = await call(`/users/${encodeURIComponent(user)}/feed?k=${k(12)}`);
    fill($("feed"), hits, false);
  } catch (e) { showError(e); }
}

function showVerdict(result) {
  const v = $("verdict");
  const c = result.character;
  v.classList.toggle("unknown", c.unknown);
  if (c.unknown) {
    v.innerHTML = `Unknown character<span class="conf"></span>`;
    v.querySelector(".conf").textContent =
      `closest: ${c.candidates[0] ? c.candidates[0].name : "none"} (similarity ${c.score.toFixed(2)} < ${c.threshold.toFixed(2)})`;
  } else {
    const top = result.heads[0] && result.heads[0].top[0];
    const confidence = c.probability != null ? c.probability : top ? top.probability : c.score;
    v.innerHTML = `<span class="name"></span><span class="conf"></span>`;
    v.querySelector(".name").textContent = c.name;
    v.querySelector(".conf").textContent = `confidence ${pct(confidence)} · similarity ${c.score.toFixed(2)}`;
  }
  showCharacters(c.candidates.slice(c.unknown ? 0 : 1));
}

function showCharacters(list) {
  $("characters").replaceChildren(...list.map((s) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = s.name;
    b.addEventListener("click", () => searchCharacter(s.name));
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = s.score.toFixed(2);
    li.append(b, score);
    return li;
  }));
}

function showResults(title, query, hits) {
  $("results-title").textContent = title;
  $("results").dataset.query = query;
  fill($("results"), hits, true);
  $("results-empty").hidden = hits.length > 0;
}

async function searchFile(file) {
  showError(null);
  current = { file };
  const preview = $("preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-hint").hidden = true;
  $("verdict").textContent = "Looking…";
  const headers = { "content-type": file.type || "application/octet-stream" };
  try {
    const [classified, found] = await Promise.all([
      call(`/classify?k=${k(5)}`, { method: "POST", headers, body: file }),
      call(`/search?k=${k(12)}`, { method: "POST", headers, body: file }),
    ]);
    showVerdict(classified.results[0]);
    showResults("Lookalikes", "upload:" + file.name, found.hits);
    await Promise.all([showCopy(file, headers), showScenes(file, headers)]);
  } catch (e) {
    $("verdict").textContent = "";
    showError(e);
  }
}

// Copyright review of the upload (POST /audit): when it is an edited copy of a catalogued picture,
// the original is shown beside it with the edit it looks like and the score against the
// catalogue's calibrated threshold. The review is an addition to the search: when it fails, the
// search results stand and the panel stays hidden.
async function showCopy(file, headers) {
  const panel = $("copy-panel");
  panel.hidden = true;
  let finding;
  try {
    ({ findings: [finding] } = await call("/audit?show=1", { method: "POST", headers, body: file }));
  } catch (e) {
    console.warn("copyright review failed:", e);
    return;
  }
  if (!finding || finding.verdict !== "copy" || finding.matches.length === 0) return;
  const match = finding.matches[0];
  $("copy-upload").src = $("preview").src;
  const original = $("copy-original");
  original.src = `${API}/items/${match.id}/thumbnail`;
  original.onclick = () => openItem({
    id: match.id, thumbnail_url: original.src, labels: match.character ? { character: match.character } : {},
  });
  $("copy-of").textContent = match.character || "a catalogued picture";
  $("copy-source").textContent = match.source;
  const edit = finding.edit.length ? finding.edit.join(", ") : "edited";
  $("copy-detail").textContent =
    `${edit} · score ${finding.score.toFixed(2)} (copy from ${finding.threshold.toFixed(2)}${finding.calibrated ? "" : ", uncalibrated"})`;
  panel.dataset.item = match.id;
  panel.hidden = false;
}

// Time as m:ss.s.
function clock(t) {
  const m = Math.floor(t / 60);
  return `${m}:${(t - 60 * m).toFixed(1).padStart(4, "0")}`;
}

// "Where is this from?": the video scenes the picture matches, when the catalogue has videos.
async function showScenes(file, headers) {
  const panel = $("scenes-panel");
  try {
    const { scenes } = await call(`/search/scene?k=${k(5)}`, { method: "POST", headers, body: file });
    const good = scenes.filter((s) => s.similarity >= 0.5);
    panel.hidden = good.length === 0;
    $("scenes").replaceChildren(...good.map((s) => {
      const li = document.createElement("li");
      const img = document.createElement("img");
      img.src = s.image;
      img.alt = `frame at ${clock(s.at)}`;
      img.loading = "lazy";
      const text = document.createElement("div");
      const title = document.createElement("a");
      title.href = s.clip;
      title.target = "_blank";
      title.className = "name";
      title.textContent = s.title + (s.episode ? ` · episode ${s.episode}` : "");
      const when = document.createElement("span");
      when.className = "when";
      when.textContent = `${clock(s.from)}–${clock(s.to)} · similarity ${s.similarity.toFixed(2)}` +
        (s.mirrored ? " · mirrored" : "");
      text.append(title, when);
      li.append(img, text);
      return li;
    }));
  } catch (e) { panel.hidden = true; }
}

async function openItem(item) {
  showError(null);
  $("copy-panel").hidden = true;
  current = { id: item.id };
  $("preview").src = item.thumbnail_url;
  $("preview").hidden = false;
  $("drop-hint").hidden = true;
  try {
    const [found] = await Promise.all([
      call(`/items/${item.id}/similar?k=${k(12)}`),
      call(`/users/${encodeURIComponent(user)}/events`, {
        method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ item: item.id, kind: "view" }),
      }),
    ]);
    const name = item.labels.character;
    const v = $("verdict");
    v.classList.remove("unknown");
    v.textContent = name || "";
    if (name) {
      const { similar } = await call(`/characters/${encodeURIComponent(name)}/similar?k=${k(5)}`);
      showCharacters(similar);
    }
    showResults("Similar to item " + item.id, "item:" + item.id, found.hits);
  } catch (e) { showError(e); }
}

// Re-runs the current query restricted to one character, and lists that character's lookalikes.
async function searchCharacter(name) {
  if (!current) return;
  showError(null);
  const filter = "&character=" + encodeURIComponent(name);
  try {
    const [found, similar] = await Promise.all([
      current.file
        ? call(`/search?k=${k(12)}` + filter, { method: "POST", headers: { "content-type": current.file.type || "application/octet-stream" }, body: current.file })
        : call(`/items/${current.id}/similar?k=${k(12)}` + filter),
      call(`/characters/${encodeURIComponent(name)}/similar?k=${k(5)}`),
    ]);
    const v = $("verdict");
    v.classList.remove("unknown");
    v.innerHTML = `<span class="name"></span><span class="conf"></span>`;
    v.querySelector(".name").textContent = name;
    v.querySelector(".conf").textContent = "browsing this character's pictures closest to your query";
    showResults(`Closest pictures of ${name}`, "character:" + name, found.hits);
    showCharacters(similar.similar);
  } catch (e) { showError(e); }
}

function setUpDrop() {
  const drop = $("drop");
  $("file-input").addEventListener("change", (e) => { if (e.target.files[0]) searchFile(e.target.files[0]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) searchFile(e.dataTransfer.files[0]);
  });
}

async function loadStatus() {
  try {
    const h = await fetch("/healthz").then((r) => r.json());
    if (h.max_k) maxK = h.max_k;
    $("status").textContent = `${h.items} pictures · user ${user}`;
  } catch (e) { $("status").textContent = ""; }
}

setUpDrop();
$("feed-refresh").addEventListener("click", loadFeed);
loadStatus().then(loadFeed);
