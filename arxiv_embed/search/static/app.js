// The search page: plain JS against the same app's JSON API (no CDN, no build step).
// Every view is a URL (?q=…, ?similar=ID, each with &k= and &category=) with a history entry, so Back,
// Forward, reload and a shared link all show the same view. Only the latest request may draw the page.
"use strict";
const $ = (id) => document.getElementById(id);
const form = $("search-form"), queryBox = $("query"), categoryBox = $("category"), kBox = $("k"), button = $("search-button");
const statusLine = $("status"), heading = $("heading"), results = $("results"), notice = $("notice");
const MAX_AUTHORS = 5;  // longer author lists show the first three and a count
const MAX_K = 1000;     // the server's largest k (search.service)
let view = null;        // the view shown (or being loaded): {q} or {similar}, with k and category
let latest = 0;         // number of the latest request: answers to earlier ones are dropped

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function plural(count, word) {
  return `${count.toLocaleString()} ${word}${count === 1 ? "" : "s"}`;
}

async function getJSON(url) {
  let response;
  try {
    response = await fetch(url);
  } catch {  // the browser's bare "Failed to fetch": say what it means
    throw Object.assign(new Error("The search server is not answering. Is `python -m arxiv_embed.search serve` still running?"),
                        { status: 0 });
  }
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw Object.assign(new Error(body.error || `HTTP ${response.status}`), { status: response.status, body });
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

// --- LaTeX in titles, as plain text: $\text{GL}_n$ -> GLₙ, $\alpha$ -> α (no math renderer to download).
const GREEK = { alpha: "α", beta: "β", gamma: "γ", delta: "δ", epsilon: "ε", varepsilon: "ε", zeta: "ζ", eta: "η",
  theta: "θ", kappa: "κ", lambda: "λ", mu: "μ", nu: "ν", xi: "ξ", pi: "π", rho: "ρ", sigma: "σ", tau: "τ", phi: "φ",
  varphi: "φ", chi: "χ", psi: "ψ", omega: "ω", Gamma: "Γ", Delta: "Δ", Theta: "Θ", Lambda: "Λ", Xi: "Ξ", Pi: "Π",
  Sigma: "Σ", Phi: "Φ", Psi: "Ψ", Omega: "Ω", infty: "∞", to: "→", rightarrow: "→", leq: "≤", le: "≤", geq: "≥",
  ge: "≥", neq: "≠", times: "×", cdot: "·", pm: "±", sim: "∼", approx: "≈", ell: "ℓ", partial: "∂", nabla: "∇",
  in: "∈", sum: "∑", prod: "∏", int: "∫", sqrt: "√", hbar: "ℏ", langle: "⟨", rangle: "⟩", iota: "ι", upsilon: "υ",
  vartheta: "ϑ", varrho: "ϱ", Upsilon: "Υ", perp: "⊥", parallel: "∥", odot: "⊙", natural: "♮", star: "⋆", prime: "′",
  circ: "∘", dagger: "†", ast: "∗", oplus: "⊕", otimes: "⊗", cdots: "⋯", ldots: "…", dots: "…", mp: "∓", propto: "∝",
  equiv: "≡", simeq: "≃", gg: "≫", ll: "≪", leftarrow: "←", Rightarrow: "⇒", mapsto: "↦", forall: "∀", exists: "∃",
  emptyset: "∅", subset: "⊂", cup: "∪", cap: "∩", lesssim: "≲", gtrsim: "≳" };
const SUB = { 0: "₀", 1: "₁", 2: "₂", 3: "₃", 4: "₄", 5: "₅", 6: "₆", 7: "₇", 8: "₈", 9: "₉", "+": "₊", "-": "₋",
  a: "ₐ", e: "ₑ", i: "ᵢ", j: "ⱼ", k: "ₖ", l: "ₗ", m: "ₘ", n: "ₙ", o: "ₒ", p: "ₚ", r: "ᵣ", s: "ₛ", t: "ₜ", x: "ₓ" };
const SUP = { 0: "⁰", 1: "¹", 2: "²", 3: "³", 4: "⁴", 5: "⁵", 6: "⁶", 7: "⁷", 8: "⁸", 9: "⁹", "+": "⁺", "-": "⁻",
  n: "ⁿ", i: "ⁱ", "*": "*" };
const script = (text, table, mark) =>
  [...text].every((ch) => ch in table) ? [...text].map((ch) => table[ch]).join("") : text.length === 1 ? mark + text : `${mark}(${text})`;

const ACCENT = { bar: "\u0304", overline: "\u0305", hat: "\u0302", widehat: "\u0302", tilde: "\u0303", widetilde: "\u0303",
  vec: "\u20d7", dot: "\u0307", ddot: "\u0308" };  // combining marks over a one-letter argument
const STYLE = /\\(?:text|textrm|texttt|textsf|textsc|mathrm|mathbf|mathit|mathsf|mathtt|mathcal|mathbb|mathfrak|mathscr|boldsymbol|operatorname|emph|textit|textbf|rm|bf|it)\s*\{([^{}]*)\}/g;

const TEXT_ACCENT = { '"': "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303", "=": "\u0304", ".": "\u0307",
  c: "\u0327", v: "\u030c", u: "\u0306", H: "\u030b", k: "\u0328", r: "\u030a" };  // the last six: \c{c} ç, \v{S} Š, ...
// Letters of their own, as authors' names write them: Mei{\ss}ner, {\O}bro, Pucha{\l}a.
const TEXT_LETTER = { o: "ø", O: "Ø", l: "ł", L: "Ł", ss: "ß", aa: "å", AA: "Å", ae: "æ", AE: "Æ", oe: "œ", OE: "Œ", i: "ı", j: "ȷ" };

// The letter with its accent's combining mark: \"{\i} (a dotless i under the accent) is ï.
const accented = (_, mark, braced, bare) => ((braced ?? bare).replace("\\", "") + TEXT_ACCENT[mark]).normalize("NFC");

// Text outside math: Schr{\"o}dinger -> Schrödinger, \emph{x} -> x, {\it Gaia} -> Gaia, Mn\textsubscript{3} -> Mn₃,
// 511\,keV -> 511 keV, \& -> &; "GW200208_222617" or "file_name" stay.
function deLatexText(text) {
  return text
    .replace(/\\text(sub|super)script\s*\{([^{}]*)\}/g, (_, kind, arg) => kind === "sub" ? script(arg, SUB, "_") : script(arg, SUP, "^"))
    .replace(STYLE, "$1")
    .replace(SWITCH, "")
    .replace(/\\[,;:! ]/g, " ")
    .replace(/\\(["'`^~=.])\s*(?:\{(\\[ij]|[A-Za-z])\}|([A-Za-z]))/g, accented)
    .replace(/\\([cvuHkr])(?:\s*\{(\\[ij]|[A-Za-z])\}|\s+([A-Za-z]))/g, accented)
    .replace(/\\(ss|aa|AA|ae|AE|oe|OE|[oOlLij])(?![A-Za-z])\s*(?:\{\})?/g, (_, name) => TEXT_LETTER[name])
    .replace(/\\([A-Za-z]+)/g, (whole, name) => GREEK[name] ?? whole)  // "\beta limit" outside math too
    .replace(/(?<!\\)[{}]/g, "")
    .replace(/\\([{}%&#_])/g, "$1");
}

// Font and size switches that print nothing: {\rm eff} -> eff, \left( -> (.
const SWITCH = /\\(?:rm|cal|bf|it|sf|tt|sl|em|left|right|[bB]igg?[lr]?|displaystyle|textstyle|scriptstyle|boldmath)(?![A-Za-z])\s*/g;

// Math ($…$) as text: $\text{GL}_n$ -> GLₙ, $\alpha$ -> α, $t\bar{t}$ -> tt̄, $p_\perp$ -> p_⊥, $n\log n$ -> n log n.
function deLatexMath(math) {
  return deLatexText(math
    .replace(STYLE, "$1")
    .replace(SWITCH, "")
    .replace(/\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}/g, "$1/$2")
    .replace(/\\([A-Za-z]+)\s*\{([^{}]*)\}/g, (whole, name, arg) =>  // an accent, or a command unknown here: its argument
      name in GREEK ? whole : (arg + (ACCENT[name] && [...arg].length === 1 ? ACCENT[name] : "")).normalize("NFC"))
    // Known symbols now; an unknown command stays "\name" until the scripts are read, so _\foo never subscripts its "f".
    .replace(/\\([A-Za-z]+)/g, (whole, name) => GREEK[name] ?? whole)
    .replace(/_\{([^{}]*)\}|_([^\s{}\\_^])/g, (_, group, one) => script(group ?? one, SUB, "_"))
    .replace(/\^\{([^{}]*)\}|\^([^\s{}\\_^])/g, (_, group, one) => script(group ?? one, SUP, "^"))
    .replace(/\\[,;:! ]/g, " ")
    .replace(/([A-Za-z0-9]?)\\([A-Za-z]+)/g, (_, before, name) => before + (before ? " " : "") + name));  // \log: "log"
}

// \texorpdfstring{$\rho^0$}{rho^0}: the first (what the title shows), read before its $ split the text.
const PDF_STRING = /\\texorpdfstring\s*\{((?:[^{}]|\{[^{}]*\})*)\}\s*\{(?:[^{}]|\{[^{}]*\})*\}/g;

function deLatex(text) {
  const DOLLAR = "\u0000";  // an escaped \$ is a dollar sign, not a math delimiter
  const parts = text.replace(PDF_STRING, "$1").replace(/\\\$/g, DOLLAR).replace(/\\\((.*?)\\\)/g, "$$$1$$").split("$");  // \(…\) is math too
  if (parts.length % 2 === 0) parts[parts.length - 2] += "$" + parts.pop();  // an unpaired $: text, kept
  return parts.map((part, i) => i % 2 ? deLatexMath(part) : deLatexText(part)).join("").replaceAll(DOLLAR, "$");
}

function authorsElement(rawAuthors) {
  const authors = deLatex(rawAuthors || "");  // C. Bal\'azs -> C. Balázs, as in a title
  const names = authors.split(/\s*,\s*|\s+and\s+/).filter(Boolean);
  if (!names.length) return element("span", { class: "authors" }, "authors unknown");
  if (names.length <= MAX_AUTHORS) return element("span", { class: "authors" }, authors);
  return element("span", { class: "authors", title: authors }, `${names.slice(0, 3).join(", ")} et al. (${names.length} authors)`);
}

// An untitled paper is kept (found by its abstract): it still needs a link to click and a name in a heading.
const titleOf = (paper) => deLatex(paper.title || "") || `(untitled) arXiv:${paper.id}`;

function render(hits) {
  results.replaceChildren(...hits.map((hit) => element("li", { class: "result", "data-id": hit.id },
    element("div", { class: "top" },
      element("a", { class: "title", href: hit.url, target: "_blank", rel: "noopener", title: hit.title }, titleOf(hit)),
      element("span", { class: "score", title: "cosine similarity" }, `score ${hit.score.toFixed(3)}`)),
    element("div", { class: "meta" },
      authorsElement(hit.authors), " · ",
      element("span", { class: "year" }, hit.year ?? "year unknown"), " · ",
      element("span", { class: "id" }, `arXiv:${hit.id}`)),
    element("div", { class: "categories" }, ...hit.categories.map((name) =>
      element("button", { class: "category", type: "button", title: `only ${name}`, onclick: () => filterBy(name) }, name))),
    element("p", { class: "snippet" }, hit.snippet),
    element("div", { class: "actions" },
      element("button", { class: "similar", type: "button", onclick: () => go({ similar: hit.id }) }, "Similar papers"),
      element("a", { class: "abs", href: hit.url, target: "_blank", rel: "noopener" }, "arXiv page")))));
}

// --- Views and their URLs.
function viewFromURL() {
  const url = new URLSearchParams(location.search);
  return { q: url.get("q") || "", similar: url.get("similar") || "", k: url.get("k") || "", category: url.get("category") || "" };
}

function urlOf(v) {
  const url = new URLSearchParams();
  if (v.similar) url.set("similar", v.similar); else if (v.q) url.set("q", v.q);
  if (v.k) url.set("k", v.k);
  if (v.category) url.set("category", v.category);
  const text = url.toString();
  return text ? `?${text}` : location.pathname;
}

// The option naming `name` (the server reads categories in any case: cs.lg is cs.LG), added when the list lacks it.
function categoryOption(name) {
  const found = [...categoryBox.options].find((option) => option.value.toLowerCase() === name.toLowerCase());
  return found ?? categoryBox.appendChild(new Option(name, name));
}

function showControls(v) {
  if (!v.similar) queryBox.value = v.q;
  // A link's k the list lacks (?k=7) is added, so that the box shows it and the next change keeps it; one the server
  // refuses (?k=abc, 0) is not, so that the next search from the page asks with a k it answers.
  const k = /^\d+$/.test(v.k) && +v.k >= 1 && +v.k <= MAX_K ? String(+v.k) : "";
  if (k && ![...kBox.options].some((option) => option.value === k)) kBox.append(new Option(k, k));
  if (k) kBox.value = k;
  categoryBox.value = v.category ? categoryOption(v.category).value : "";
}

// A new view from the user: its URL becomes a history entry, then it loads.
function go(change) {
  const next = { q: "", similar: "", ...(view || {}), k: kBox.value, category: categoryBox.value, ...change };
  if (change.q !== undefined) next.similar = "";
  history.pushState(null, "", urlOf(next));
  load(next);
}

function setBusy(busy) {
  button.disabled = busy;
  results.setAttribute("aria-busy", String(busy));
  document.body.classList.toggle("busy", busy);
}

async function load(v) {
  view = v;
  showControls(v);
  const request = ++latest;
  if (!v.q && !v.similar) { heading.hidden = true; results.replaceChildren(); setBusy(false); return; }
  const query = new URLSearchParams({ k: v.k || kBox.value });
  if (v.category) query.set("category", v.category);
  setBusy(true);
  setStatus(v.similar ? "Finding similar papers…" : "Searching…");
  try {
    let body, title, status;
    if (v.similar) {
      body = await getJSON(`/papers/${encodeURIComponent(v.similar)}/similar?${query}`);
      title = `Papers similar to “${titleOf(body.paper)}”`;
      status = `${plural(body.results.length, "paper")} nearest to arXiv:${body.paper.id}`;
    } else {
      query.set("q", v.q);
      body = await getJSON(`/search?${query}`);
      title = `Results for “${v.q}”`;
      status = `${plural(body.results.length, "paper")} of ${body.index.papers.toLocaleString()} · ` +
               `encode ${body.latency_ms.encode} ms + search ${body.latency_ms.search} ms`;
    }
    if (request !== latest) return;  // a newer view was asked for meanwhile: this answer is stale
    heading.hidden = false;
    heading.textContent = title + (body.category ? ` in ${body.category}` : "");
    render(body.results);
    setStatus(status);
    window.scrollTo(0, 0);  // a new view starts at its heading, not where the last list was scrolled to
  } catch (error) {
    if (request === latest) fail(error);
  } finally {
    if (request === latest) setBusy(false);
  }
}

function filterBy(name) {
  categoryBox.value = categoryOption(name).value;
  go({});
}

function fail(error) {
  if (error.status === 503) waitForIndex();
  // The URL is the failed view's now: the last view's heading and list under it would be a page no reload shows.
  heading.hidden = true;
  results.replaceChildren();
  setStatus(error.message, true);
}

function showNoIndex(health) {
  notice.hidden = false;
  // "no index" comes with the command that builds one; "unavailable" (an index this server cannot serve) with the reason only.
  const build = health.build_command ? [" Build one with:", element("pre", {}, element("code", {}, health.build_command))] : [" "];
  notice.replaceChildren(element("strong", {}, "No search index is loaded. "), health.message, ...build,
    "The server loads it as soon as the build finishes; this page checks every few seconds.");
}

let waiting = null;
function waitForIndex() {
  // Poll /health until an index appears (it answers 503 until then), then set the page up as on a fresh load.
  if (waiting) return;
  waiting = setInterval(async () => {
    const health = await getJSON("/health").catch(() => null);
    if (health && health.status === "ok") { clearInterval(waiting); waiting = null; notice.hidden = true; start(); }
  }, 3000);
}

async function start() {
  try {
    const health = await getJSON("/health");
    const { categories } = await getJSON("/categories");
    categoryBox.replaceChildren(new Option("All categories", ""));
    const names = Object.keys(categories);
    const archives = names.filter((name) => !name.includes(".")), subjects = names.filter((name) => name.includes("."));
    for (const [label, group] of [["Archives", archives], ["Categories", subjects]]) {
      const optgroup = element("optgroup", { label });
      for (const name of group) optgroup.append(new Option(`${name} (${categories[name]})`, name));
      categoryBox.append(optgroup);
    }
    setStatus(`${plural(health.papers, "paper")} indexed (${health.precision}).`);
  } catch (error) {
    if (error.status === 503 && error.body) {
      showNoIndex(error.body);
      setStatus("Waiting for a search index…", true);
      waitForIndex();
    } else fail(error);
    return;
  }
  load(viewFromURL());
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const q = queryBox.value.trim();
  if (!q) { setStatus("Type some words to search for.", true); return; }
  go({ q });
});
categoryBox.addEventListener("change", () => { if (view && (view.q || view.similar)) go({}); });
kBox.addEventListener("change", () => { if (view && (view.q || view.similar)) go({}); });
window.addEventListener("popstate", () => load(viewFromURL()));
start();
