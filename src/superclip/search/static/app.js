// The search page: plain DOM, no build step. State: the last search (text, image or similar-to), the tag filters.
// A text or more-like-this search and its tag filters live in the page's URL (?q=...&tags=a,b or ?similar=ID), so a
// result list can be linked and Back / Forward step through the searches; an uploaded image cannot be in a URL.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { kind: null, q: "", file: null, id: null, name: "", tags: [] };
// Answers can arrive out of order (a slow text search, then a fast image search): only the newest request's
// answer is shown, an older one landing later is dropped.
const latest = { search: 0, facets: 0 };

function chip(text, onClick, extra) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "chip";
  b.textContent = text;
  if (extra) b.title = extra;
  b.addEventListener("click", onClick);
  return b;
}

function addTag(tag) {
  if (!state.tags.includes(tag)) state.tags.push(tag);
  go();
}

// The URL of a state: what a link to these results holds.
function urlOf() {
  const params = new URLSearchParams();
  if (state.kind === "text") params.set("q", state.q);
  if (state.kind === "similar") params.set("similar", state.id);
  if (state.tags.length) params.set("tags", state.tags.join(","));
  const query = params.toString();
  return location.pathname + (query ? "?" + query : "");
}

// A new search: a new history entry (unless the URL is the same), then run it.
function go() {
  const url = urlOf();
  if (url !== location.pathname + location.search) history.pushState(null, "", url);
  rerun();
}

// The state a URL names (the page opened from a link, or Back / Forward).
function fromUrl() {
  const params = new URLSearchParams(location.search);
  const tags = (params.get("tags") || "").split(",").map((t) => t.trim()).filter(Boolean);
  if (params.get("q")) Object.assign(state, { kind: "text", q: params.get("q"), tags });
  else if (/^\d+$/.test(params.get("similar") || "")) Object.assign(state, { kind: "similar", id: params.get("similar"),
                                                                           name: "", tags });
  else Object.assign(state, { kind: null, q: "", tags });
  $("q").value = state.kind === "text" ? state.q : "";
}

function renderFilters() {
  const box = $("filters");
  box.replaceChildren(...state.tags.map((t) => chip(t + " \u00d7", () => {
    state.tags = state.tags.filter((x) => x !== t);
    go();
  }, "remove this filter")));
}

async function loadFacets() {
  const mine = ++latest.facets;
  const params = new URLSearchParams({ limit: 30 });
  if (state.tags.length) params.set("tags", state.tags.join(","));
  const res = await fetch("/api/tags?" + params);
  if (!res.ok) return;
  const data = await res.json();
  if (mine !== latest.facets) return;
  $("facets").replaceChildren(...data.facets.map((f) => {
    const li = document.createElement("li");
    li.dataset.tag = f.tag;
    li.innerHTML = "<span></span><small></small>";
    li.firstChild.textContent = f.tag;
    li.lastChild.textContent = f.count;
    li.addEventListener("click", () => addTag(f.tag));
    return li;
  }));
}

function render(data, label) {
  const grid = $("results");
  $("status").textContent = data.results.length ? `${data.results.length} results ${label}` : `No results ${label}`;
  grid.replaceChildren(...data.results.map((r) => {
    const card = document.createElement("article");
    card.className = "card";
    card.dataset.id = r.id;
    const img = document.createElement("img");
    img.src = `/api/items/${r.id}/thumbnail`;
    img.alt = r.tags.map((t) => t[0]).join(", ");
    img.loading = "lazy";
    img.title = "more like this";
    img.addEventListener("click", () => { Object.assign(state, { kind: "similar", id: r.id, name: r.name }); go(); });
    const meta = document.createElement("div");
    meta.className = "meta";
    const name = document.createElement("a");
    name.className = "name";
    name.href = `/api/items/${r.id}/image`;
    name.target = "_blank";
    name.rel = "noopener";
    name.textContent = r.name;
    name.title = `${r.path} (the original image)`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `score ${r.score.toFixed(3)}`;
    const tags = document.createElement("div");
    tags.className = "tags";
    tags.append(...r.tags.map(([t, p]) => chip(t, () => addTag(t), `p = ${p.toFixed(3)}: filter by this tag`)));
    meta.append(name, score, tags);
    card.append(img, meta);
    return card;
  }));
}

async function rerun() {
  const mine = ++latest.search;
  renderFilters();
  loadFacets();
  const tags = state.tags.join(",");
  let res, label;
  if (state.kind === "text") {
    const params = new URLSearchParams({ q: state.q, k: 40 });
    if (tags) params.set("tags", tags);
    res = await fetch("/api/search?" + params);
    label = `for \u201c${state.q}\u201d`;
  } else if (state.kind === "image") {
    const form = new FormData();
    form.append("file", state.file);
    form.append("k", "40");
    if (tags) form.append("tags", tags);
    res = await fetch("/api/search/image", { method: "POST", body: form });
    label = `like ${state.file.name || "the image"}`;
  } else if (state.kind === "similar") {
    const params = new URLSearchParams({ k: 40 });
    if (tags) params.set("tags", tags);
    res = await fetch(`/api/items/${state.id}/similar?` + params);
    label = `like ${state.name || "item " + state.id}`;
  } else {
    if (!tags) { $("results").replaceChildren(); $("status").textContent = START; return; }
    const params = new URLSearchParams({ q: "a picture", k: 40, tags });
    res = await fetch("/api/search?" + params);
    label = `tagged ${tags}`;
  }
  if (state.tags.length) label += ` (tags: ${state.tags.join(", ")})`;
  const data = await res.json();
  if (mine !== latest.search) return;
  if (!res.ok) {
    $("status").textContent = data.error || `error ${res.status}`;
    $("results").replaceChildren();
    return;
  }
  render(data, label);
}

function searchImage(file) {
  if (!file) return;
  Object.assign(state, { kind: "image", file });
  go();
}

// Results as the user types: a text search once typing pauses for TYPING_MS (a query costs milliseconds); Enter
// searches at once. Each keystroke restarts the wait, so a fast typist sends one query, not one per letter. The URL
// follows the query; refining a text query replaces its history entry rather than adding one a pause.
const TYPING_MS = 200;
let typing = null;
$("q").addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(() => {
    const q = $("q").value.trim();
    if (!q || (state.kind === "text" && state.q === q)) return;
    const refining = state.kind === "text";
    Object.assign(state, { kind: "text", q });
    if (!refining) { go(); return; }
    history.replaceState(null, "", urlOf());
    rerun();
  }, TYPING_MS);
});
$("search").addEventListener("submit", (e) => {
  e.preventDefault();
  clearTimeout(typing);
  const q = $("q").value.trim();
  if (!q) { $("status").textContent = "Type something to search for."; return; }
  Object.assign(state, { kind: "text", q });
  go();
});
window.addEventListener("popstate", () => { fromUrl(); rerun(); });
$("file").addEventListener("change", (e) => searchImage(e.target.files[0]));
let depth = 0;
window.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; $("drop").hidden = false; });
window.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; $("drop").hidden = true; } });
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => {
  e.preventDefault();
  depth = 0;
  $("drop").hidden = true;
  searchImage(e.dataTransfer.files[0]);
});
const START = $("status").textContent;
fromUrl();
if (state.kind || state.tags.length) rerun(); else loadFacets();
