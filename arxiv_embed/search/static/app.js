// The search page: plain JS against the same app's JSON API (no CDN, no build step).
"use strict";
const $ = (id) => document.getElementById(id);
const form = $("search-form"), queryBox = $("query"), categoryBox = $("category"), kBox = $("k");
const statusLine = $("status"), heading = $("heading"), results = $("results"), notice = $("notice");
let lastQuery = null, similarTo = null;

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw Object.assign(new Error(body.error || `HTTP ${response.status}`), { status: response.status });
  return body;
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value; else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function render(hits) {
  results.replaceChildren(...hits.map((hit) => element("li", { class: "result", "data-id": hit.id },
    element("div", { class: "top" },
      element("a", { class: "title", href: hit.url, target: "_blank", rel: "noopener" }, hit.title),
      element("span", { class: "score", title: "cosine similarity" }, `score ${hit.score.toFixed(3)}`)),
    element("div", { class: "meta" },
      element("span", { class: "authors" }, hit.authors || "authors unknown"), " · ",
      element("span", { class: "year" }, hit.year ?? "year unknown"), " · ",
      element("span", { class: "id" }, `arXiv:${hit.id}`)),
    element("div", { class: "categories" }, ...hit.categories.map((name) =>
      element("button", { class: "category", type: "button", title: `only ${name}`, onclick: () => filterBy(name) }, name))),
    element("p", { class: "snippet" }, hit.snippet),
    element("div", { class: "actions" },
      element("button", { class: "similar", type: "button", onclick: () => showSimilar(hit) }, "Similar papers"),
      element("a", { class: "abs", href: hit.url, target: "_blank", rel: "noopener" }, "arXiv page")))));
}

function params(extra) {
  const query = new URLSearchParams({ k: kBox.value, ...extra });
  if (categoryBox.value) query.set("category", categoryBox.value);
  return query;
}

async function runSearch() {
  const q = queryBox.value.trim();
  if (!q) { setStatus("Type some words to search for.", true); return; }
  lastQuery = q; similarTo = null;
  setStatus("Searching…");
  try {
    const body = await getJSON(`/search?${params({ q })}`);
    heading.hidden = false;
    heading.textContent = `Results for “${q}”` + (body.category ? ` in ${body.category}` : "");
    render(body.results);
    setStatus(`${body.results.length} papers of ${body.index.papers.toLocaleString()} · encode ${body.latency_ms.encode} ms + search ${body.latency_ms.search} ms`);
    history.replaceState(null, "", `?${params({ q })}`);
  } catch (error) { fail(error); }
}

async function showSimilar(hit) {
  similarTo = hit;
  setStatus("Finding similar papers…");
  try {
    const body = await getJSON(`/papers/${encodeURIComponent(hit.id)}/similar?${params({})}`);
    heading.hidden = false;
    heading.textContent = `Papers similar to “${body.paper.title}”` + (body.category ? ` in ${body.category}` : "");
    render(body.results);
    setStatus(`${body.results.length} papers nearest to arXiv:${body.paper.id}`);
  } catch (error) { fail(error); }
}

function filterBy(name) {
  if (![...categoryBox.options].some((option) => option.value === name)) categoryBox.append(new Option(name, name));
  categoryBox.value = name;
  refresh();
}

function refresh() {
  if (similarTo) showSimilar(similarTo); else if (queryBox.value.trim()) runSearch();
}

function fail(error) {
  if (error.status === 503) waitForIndex();
  setStatus(error.message, true);
}

function showNoIndex(health) {
  notice.hidden = false;
  notice.replaceChildren(element("strong", {}, "No search index is loaded. "), health.message, " Build one with:",
    element("pre", {}, element("code", {}, health.build_command)),
    "The server loads it as soon as the build finishes; this page checks every few seconds.");
}

let waiting = null;
function waitForIndex() {
  // Poll /health until an index appears, then set the page up as on a fresh load.
  if (waiting) return;
  waiting = setInterval(async () => {
    const health = await getJSON("/health").catch(() => null);
    if (health && health.status === "ok") { clearInterval(waiting); waiting = null; notice.hidden = true; start(); }
  }, 3000);
}

async function start() {
  try {
    const health = await getJSON("/health");
    if (health.status !== "ok") {
      showNoIndex(health);
      setStatus("Waiting for a search index…", true);
      waitForIndex();
      return;
    }
    const { categories } = await getJSON("/categories");
    categoryBox.replaceChildren(new Option("All categories", ""));
    const names = Object.keys(categories);
    const archives = names.filter((name) => !name.includes(".")), subjects = names.filter((name) => name.includes("."));
    for (const [label, group] of [["Archives", archives], ["Categories", subjects]]) {
      const optgroup = element("optgroup", { label });
      for (const name of group) optgroup.append(new Option(`${name} (${categories[name]})`, name));
      categoryBox.append(optgroup);
    }
    setStatus(`${health.papers.toLocaleString()} papers indexed (${health.precision}).`);
  } catch (error) { fail(error); return; }
  const initial = new URLSearchParams(location.search);
  if (initial.get("q")) queryBox.value = initial.get("q");
  if ([...kBox.options].some((option) => option.value === initial.get("k"))) kBox.value = initial.get("k");
  if (initial.get("category")) filterBy(initial.get("category")); else refresh();
}

form.addEventListener("submit", (event) => { event.preventDefault(); runSearch(); });
categoryBox.addEventListener("change", refresh);
kBox.addEventListener("change", refresh);
start();
