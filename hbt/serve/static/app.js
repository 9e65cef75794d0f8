// The search page: plain DOM, no build step. Every document text goes in through textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const chosen = new Set(); // language filter; empty: all languages
let token = sessionStorage.getItem("hbt-token") || "";
let latest = 0; // the newest search sent: answers to older ones are dropped
const languageNames = "DisplayNames" in Intl ? new Intl.DisplayNames([navigator.language, "en"], { type: "language" }) : null;

async function api(path, body) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  if (body) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method: body ? "POST" : "GET", headers, body: body && JSON.stringify(body) });
  if (response.status === 401) {
    $("auth").hidden = false;
    $("token").focus();
  }
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function languageName(code) {
  try {
    return (languageNames && languageNames.of(code)) || code;
  } catch {
    return code; // not a valid language tag
  }
}

function showStatus(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

async function loadInfo() {
  const info = await api("/info");
  const languages = Object.entries(info.languages).filter(([code]) => code !== "").sort();
  $("summary").textContent = `${info.count} documents in ${languages.length} languages · commit ${info.generation}`;
  const chips = $("chips");
  chips.replaceChildren();
  const queryLang = $("query-lang");
  queryLang.replaceChildren(queryLang.options[0]); // keep "language not given", add the index's languages
  for (const [code] of languages) {
    const option = element("option", "", `${code} (${languageName(code)})`);
    option.value = code;
    queryLang.append(option);
  }
  for (const [code, count] of languages) {
    const chip = element("button", "", code);
    chip.type = "button";
    chip.dataset.lang = code;
    chip.title = `${languageName(code)}: ${count} documents`;
    chip.setAttribute("aria-pressed", String(chosen.has(code)));
    chip.addEventListener("click", () => {
      chosen.has(code) ? chosen.delete(code) : chosen.add(code);
      chip.setAttribute("aria-pressed", String(chosen.has(code)));
      if ($("query").value.trim()) search();
    });
    chips.append(chip);
  }
}

function showResults(hits) {
  const list = $("results");
  list.replaceChildren();
  for (const hit of hits) {
    const item = element("li");
    const meta = element("p", "meta");
    const lang = element("span", "lang", hit.lang || "?");
    lang.title = languageName(hit.lang);
    meta.append(lang, ` ${hit.rank}. score `, element("span", "score", hit.score.toFixed(3)), ` · ${hit.id}`);
    item.append(meta);
    if (hit.title) item.append(element("h2", "", hit.title));
    const text = element("p", "text", hit.text);
    text.dir = "auto"; // Arabic and Hebrew read right to left
    item.append(text);
    list.append(item);
  }
}

async function search() {
  const query = $("query").value.trim();
  if (!query) return;
  const sent = ++latest;
  showStatus("Searching…");
  try {
    const body = { query, k: 10, mode: $("mode").value };
    if (chosen.size) body.langs = [...chosen];
    if ($("query-lang").value) body.query_lang = $("query-lang").value;
    const answer = await api("/search", body);
    if (sent !== latest) return;
    const hits = answer.results[0].hits;
    showResults(hits);
    showStatus(`${hits.length} results${chosen.size ? ` in ${[...chosen].join(", ")}` : ""}`);
    const stages = Object.entries(answer.timings).map(([stage, ms]) => `${stage} ${ms.toFixed(1)} ms`);
    $("timings").textContent = `${stages.join(" · ")} · batch of ${answer.batch}`;
  } catch (error) {
    if (sent === latest) showStatus(error.message, true);
  }
}

$("search").addEventListener("submit", (event) => {
  event.preventDefault();
  search();
});

for (const id of ["mode", "query-lang"]) {
  $(id).addEventListener("change", () => {
    if ($("query").value.trim()) search();
  });
}

$("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value;
  sessionStorage.setItem("hbt-token", token);
  $("auth").hidden = true;
  loadInfo().catch((error) => showStatus(error.message, true));
});

loadInfo().catch((error) => showStatus(error.message, true));
