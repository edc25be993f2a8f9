// The workflow console: one page, no build step, no dependencies.
//
// Safety rule: every value that comes from the database is put in the page
// as text (text nodes, textContent, attribute values through setAttribute),
// never as HTML. `h()` below is the only way this file creates elements.
"use strict";

const STATUSES = ["pending", "in_progress", "listening", "paused", "completed", "failed", "cancelled", "timed_out"];
const ACTIVE = ["pending", "in_progress", "listening", "paused"];
const LABEL = {
  pending: "Pending", in_progress: "Running", listening: "Listening", paused: "Paused",
  completed: "Completed", failed: "Failed", cancelled: "Cancelled", timed_out: "Timed out",
};
const POLL_MS = 2000;

// ---------------------------------------------------------------- helpers

/** Creates an element. attrs: class, on<event> handlers, other attributes; children: nodes or text. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    // Through CSSOM: the page's CSP forbids style attributes.
    else if (k === "style") el.style.cssText = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

function replace(el, ...children) {
  return append(clear(el), children);
}

// Replaces el's children with `children` unless they render the same, so
// a poll that changed nothing leaves a click or a text selection in el
// alone; and, while text is selected in el, unless only the clock moved
// (`data`, what they were built from, is the same: "5 s ago" became "7 s
// ago").
const shownData = new WeakMap();
function update(el, data, ...children) {
  const fresh = append(h("div"), children);
  const now = el.childNodes;
  const same = fresh.childNodes.length === now.length
    && Array.from(fresh.childNodes).every((node, i) => node.isEqualNode(now[i]));
  if (same) return;
  const sel = window.getSelection();
  const selecting = sel && !sel.isCollapsed && el.contains(sel.anchorNode);
  if (selecting && shownData.get(el) === data) return;
  shownData.set(el, data);
  replace(el, Array.from(fresh.childNodes));
}

const TOKEN_KEY = "workflow-console-token";

// A token given as #token=... (a fragment: never sent to the server, so
// never in its logs, nor a proxy's as ?token= would be) is kept for this
// tab and removed from the address bar. Also at every route: a #token= link pasted into an
// open tab changes only the fragment, and does not load the page again.
// What an Authorization header can carry: a token with anything else
// (a typographic quote pasted with it) makes fetch throw before sending.
function usableToken(t) {
  return /^[\x21-\x7e]+$/.test(t);
}

function takeToken() {
  const url = new URL(location.href);
  const t = url.hash.startsWith("#token=")
    ? new URLSearchParams(url.hash.slice(1)).get("token")
    : null;
  if (t) {
    sessionStorage.setItem(TOKEN_KEY, t);
    history.replaceState(null, "", url.pathname + url.search);
    // A token dialog up is answered by the token taken.
    const dlg = document.getElementById("dialog");
    if (dlg && dlg.open && dlg.dataset.kind === "token") dlg.close();
  }
}
takeToken();

class ApiError extends Error {
  constructor(status, body, fromConsole) {
    super((body && body.error) || "HTTP " + status);
    this.status = status;
    this.violations = (body && body.violations) || [];
    // The console's own JSON error, not a proxy's page or a lost connection.
    this.fromConsole = !!fromConsole;
  }
}

/**
 * JSON text parsed with integers past 2^53 kept whole (as BigInt), where the
 * browser gives a reviver the source text: a plain parse rounds an id of
 * 9007199254740993 to ...992.
 */
function parseJson(text) {
  return JSON.parse(text, function (key, value, context) {
    if (typeof value === "number" && !Number.isSafeInteger(value) && context && /^-?\d+$/.test(context.source)) {
      return BigInt(context.source);
    }
    return value;
  });
}

/** JSON text of `value`, BigInts written as the integers they are. */
function toJson(value, space) {
  const marks = [];
  // A mark no string of the value can hold by chance.
  const tag = "\u0000" + Math.random().toString(36).slice(2) + "-";
  const text = JSON.stringify(value, (key, v) => {
    if (typeof v !== "bigint") return v;
    marks.push(v.toString());
    return tag + (marks.length - 1);
  }, space);
  if (!marks.length) return text;
  return marks.reduce((t, m, i) => t.replace(JSON.stringify(tag + i), m), text);
}

async function api(path, body) {
  const headers = { "Accept": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token && !usableToken(token)) {
    sessionStorage.removeItem(TOKEN_KEY);
    askToken();
    throw new ApiError(401, { error: "the token holds characters no browser sends in a header" }, true);
  }
  if (token) headers["Authorization"] = "Bearer " + token;
  const init = { headers, credentials: "same-origin" };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = toJson(body);
  }
  let res;
  try {
    res = await fetch("api/" + path, init);
  } catch (err) {
    // The browser's own words ("Failed to fetch") do not say which end.
    throw new Error("the console's server cannot be reached (" + err.message + ")");
  }
  // JSON, or a proxy's or server's plain-text error, shown as it is.
  const text = await res.text();
  let data = null;
  let json = false;
  try { data = text ? parseJson(text) : null; json = true; } catch (_) { data = res.ok ? null : { error: text.slice(0, 300) }; }
  if (res.status === 401) { askToken(token); }
  if (!res.ok) throw new ApiError(res.status, data, json && data && typeof data.error === "string");
  return data;
}

function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") p.set(k, v);
  const s = p.toString();
  return s ? "?" + s : "";
}

function toast(message, isError) {
  const t = h("div", { class: "toast" + (isError ? " err" : "") }, message);
  document.getElementById("toasts").appendChild(t);
  setTimeout(() => t.remove(), isError ? 7000 : 3500);
}

function setLive(ok, text) {
  const live = document.getElementById("live");
  live.className = "live " + (ok ? "ok" : "err");
  document.getElementById("live-text").textContent = text;
}

function pad(n) { return String(n).padStart(2, "0"); }

// UTC with a trailing Z, as the CLI prints it: the same instant reads the
// same in both, whatever zone the browser is in.
function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
    pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds()) + "Z";
}

/** The wall-clock time in an IANA zone (a schedule's), named; null if the browser does not know the zone. */
function fmtTimeIn(iso, timeZone) {
  if (!iso || !timeZone) return null;
  try {
    const parts = {};
    const fmt = new Intl.DateTimeFormat("en-US", { timeZone, hourCycle: "h23", year: "numeric", month: "2-digit",
      day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
    for (const p of fmt.formatToParts(new Date(iso))) parts[p.type] = p.value;
    return parts.year + "-" + parts.month + "-" + parts.day + " " + parts.hour + ":" + parts.minute + ":" + parts.second + " " + timeZone;
  } catch (_) {
    return null;
  }
}

function isUtc(timeZone) {
  return !timeZone || ["utc", "etc/utc", "z", "gmt", "etc/gmt", "+00:00"].includes(String(timeZone).toLowerCase());
}

function fmtDur(ms) {
  if (ms === null || ms === undefined) return "—";
  // Past 2^53 (read whole, as a BigInt): `Duration::MAX`, no deadline.
  if (typeof ms === "bigint") return "none";
  if (isNaN(ms)) return "—";
  if (ms < 999.5) return Math.max(0, Math.round(ms)) + " ms";
  // Rounded once, so that 59,950 ms reads "1m", not "60.0 s".
  const s = ms < 9995 ? Math.round(ms / 10) / 100 : ms < 59950 ? Math.round(ms / 100) / 10 : Math.round(ms / 1000);
  if (s < 10) return s.toFixed(2) + " s";
  if (s < 60) return s.toFixed(1) + " s";
  const two = (big, bigUnit, small, smallUnit) => big + bigUnit + (small ? " " + small + smallUnit : "");
  const m = Math.floor(s / 60);
  if (m < 60) return two(m, "m", Math.floor(s % 60), "s");
  const hr = Math.floor(m / 60);
  if (hr < 48) return two(hr, "h", m % 60, "m");
  return two(Math.floor(hr / 24), "d", hr % 24, "h");
}

function ago(iso) {
  if (!iso) return "";
  const diff = Date.now() - new Date(iso).getTime();
  if (diff < 0) return "in " + fmtDur(-diff);
  if (diff < 5000) return "just now";
  if (diff < 60000) return Math.floor(diff / 1000) + " s ago";
  return fmtDur(diff) + " ago";
}

/**
 * What a waiting instance waits for, and until when: "due in 3h" (a sleep or
 * a delayed start), "queued", "event approved · gives up in 2h", "retry of
 * charge in 5m", or a running one's pause still pending. Null for an
 * instance that is not waiting. A child's id is a link when `link` is set.
 */
function waiting(it, link) {
  const w = it.waiting_for;
  const ahead = it.due_at && new Date(it.due_at).getTime() > Date.now();
  const due = ahead ? ago(it.due_at) : null;
  // Still running: the pause asked takes effect at its next step or wait.
  if (it.status === "in_progress" && it.pause_requested) return "pausing at its next step";
  if (it.status === "pending") {
    if (w && w.kind === "retry") return "retry of " + w.step + (due ? " " + due : "");
    return due ? "due " + due : "queued";
  }
  if (it.status !== "listening") return null;
  const until = due ? " · gives up " + due : "";
  if (!w) return "waiting" + until;
  if (w.kind === "event") return ["event ", h("span", { class: "mono" }, w.name), until];
  if (w.kind === "child") {
    const child = link ? h("a", { class: "mono", href: "#/instances/" + encodeURIComponent(w.id) }, w.id) : null;
    return ["child ", child, until];
  }
  return w.kind + until;
}

function waitingSub(it) {
  const text = waiting(it, false);
  return text ? h("span", { class: "sub nowrap", "data-testid": "waiting" }, text) : null;
}

function span(a, b) {
  if (!a) return null;
  const end = b ? new Date(b).getTime() : Date.now();
  return end - new Date(a).getTime();
}

function badge(status, big) {
  return h("span", { class: "badge s-" + status + (big ? " big" : ""), "data-status-badge": status }, LABEL[status] || status);
}

function tagChips(tags) {
  const entries = Object.entries(tags || {});
  if (!entries.length) return null;
  return h("span", { class: "chips" }, entries.map(([k, v]) => h("span", { class: "chip", title: k + "=" + v }, h("b", {}, k), h("span", { class: "eq" }, "="), v)));
}

/** JSON as a highlighted tree of text nodes. */
function jsonView(value) {
  const pre = h("pre", { class: "json" });
  const out = [];
  const tok = (cls, text) => out.push(h("span", { class: cls }, text));
  const walk = (v, indent) => {
    const pad1 = "  ".repeat(indent + 1), pad0 = "  ".repeat(indent);
    if (v === null) tok("j-null", "null");
    else if (Array.isArray(v)) {
      if (!v.length) { tok("j-punc", "[]"); return; }
      tok("j-punc", "[");
      v.forEach((item, i) => {
        out.push("\n" + pad1);
        walk(item, indent + 1);
        if (i < v.length - 1) tok("j-punc", ",");
      });
      out.push("\n" + pad0);
      tok("j-punc", "]");
    } else if (typeof v === "object") {
      const keys = Object.keys(v);
      if (!keys.length) { tok("j-punc", "{}"); return; }
      tok("j-punc", "{");
      keys.forEach((k, i) => {
        out.push("\n" + pad1);
        tok("j-key", JSON.stringify(k));
        tok("j-punc", ": ");
        walk(v[k], indent + 1);
        if (i < keys.length - 1) tok("j-punc", ",");
      });
      out.push("\n" + pad0);
      tok("j-punc", "}");
    } else if (typeof v === "string") tok("j-str", JSON.stringify(v));
    else if (typeof v === "number" || typeof v === "bigint") tok("j-num", String(v));
    else if (typeof v === "boolean") tok("j-bool", String(v));
    else tok("j-null", String(v));
  };
  walk(value, 0);
  return append(pre, out);
}

function jsonPanel(title, value, testid, cut, id) {
  return h("section", { class: "panel", "data-testid": testid },
    h("h2", {}, title),
    cut ? leftOut(cut, id)
      : value === undefined || value === null ? h("div", { class: "muted" }, "—") : jsonView(value));
}

// A document the server left out of the page for its size.
function leftOut(bytes, id) {
  return h("div", { class: "muted", "data-testid": "left-out" },
    "Left out of the page: " + fmtBytes(bytes) + " of JSON (`workflow show " + id + " --json` prints it).");
}

function fmtBytes(n) {
  if (n >= 1 << 20) return (n / (1 << 20)).toFixed(1) + " MiB";
  if (n >= 1 << 10) return (n / (1 << 10)).toFixed(1) + " KiB";
  return n + " bytes";
}

/** An example value for a JSON Schema (schemars output: $defs, $ref, anyOf, ...). */
function sample(schema, root, depth) {
  root = root || schema;
  depth = depth || 0;
  if (!schema || typeof schema !== "object" || depth > 8) return null;
  if (schema.default !== undefined) return schema.default;
  if (schema.const !== undefined) return schema.const;
  if (schema.examples && schema.examples.length) return schema.examples[0];
  if (schema.$ref) {
    const name = schema.$ref.replace(/^#\/(\$defs|definitions)\//, "");
    const defs = root.$defs || root.definitions || {};
    return sample(defs[name], root, depth + 1);
  }
  if (schema.enum && schema.enum.length) return schema.enum[0];
  for (const key of ["oneOf", "anyOf", "allOf"]) {
    if (Array.isArray(schema[key]) && schema[key].length) {
      const pick = schema[key].find((s) => s && s.type !== "null") || schema[key][0];
      return sample(pick, root, depth + 1);
    }
  }
  let type = schema.type;
  if (Array.isArray(type)) type = type.find((t) => t !== "null") || "null";
  switch (type) {
    case "object": {
      const o = {};
      for (const [k, s] of Object.entries(schema.properties || {})) o[k] = sample(s, root, depth + 1);
      return o;
    }
    case "array": return [];
    case "string": return "";
    case "integer": case "number": return 0;
    case "boolean": return false;
    default: return null;
  }
}

function parseTags(text) {
  const tags = {};
  for (const part of text.split(",")) {
    const p = part.trim();
    if (!p) continue;
    const i = p.indexOf("=");
    if (i < 1) throw new Error("tags are key=value, separated by commas: `" + p + "`");
    tags[p.slice(0, i).trim()] = p.slice(i + 1).trim();
  }
  return tags;
}

function violationList(err) {
  if (!err.violations || !err.violations.length) return h("div", { class: "violations", "data-testid": "violations" }, err.message);
  return h("ul", { class: "violations", "data-testid": "violations" },
    err.violations.map((v) => h("li", {}, v.path ? h("code", {}, v.path) : h("code", {}, "(input)"), ": ", v.message)));
}

// ---------------------------------------------------------------- dialog

function openDialog(title, text, fields, confirmLabel, danger, onConfirm) {
  const dlg = document.getElementById("dialog");
  dlg.dataset.kind = "";
  const errors = h("div");
  const ok = h("button", { class: danger ? "danger solid" : "primary", "data-testid": "dialog-confirm" }, confirmLabel);
  const cancel = h("button", { type: "button", onclick: () => dlg.close() }, "Close");
  ok.addEventListener("click", async () => {
    ok.disabled = true;
    try {
      await onConfirm();
      dlg.close();
    } catch (err) {
      replace(errors, violationList(err));
    } finally {
      ok.disabled = false;
    }
  });
  replace(dlg,
    h("div", { class: "body" }, h("h1", {}, title), text ? h("p", {}, text) : null, fields, errors),
    h("div", { class: "foot" }, cancel, ok));
  dlg.showModal();
}

// `used`: the token the refused request carried, if any.
function askToken(used) {
  const dlg = document.getElementById("dialog");
  const kept = sessionStorage.getItem(TOKEN_KEY);
  // A request sent before a newer token was taken: that one is not refused.
  if (kept !== null && used !== undefined && kept !== used) return;
  if (dlg.open) return;
  // The token kept for this tab got a 401: said so, and dropped, rather
  // than the same empty dialog again.
  const refused = kept !== null;
  sessionStorage.removeItem(TOKEN_KEY);
  const input = h("input", { type: "password", placeholder: "token", autocomplete: "off" });
  openDialog("Token required", (refused ? "The token given was refused. " : "") +
    "This console requires the token it was started with (--token or WORKFLOW_CONSOLE_TOKEN).",
    h("label", { class: "field" }, "Token", input), "Use token", false,
    async () => {
      const token = input.value.trim();
      if (!usableToken(token)) throw new Error("A token is visible ASCII characters only (no spaces, no typographic quotes).");
      sessionStorage.setItem(TOKEN_KEY, token);
      route();
    });
  dlg.dataset.kind = "token";
}

// ---------------------------------------------------------------- routing

let current = null; // { refresh: async fn } of the view on screen
let pollTimer = null;

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query] = raw.split("?");
  // A hand-edited link may not decode (`%E0%A4%A`): its raw text is used.
  const decode = (part) => { try { return decodeURIComponent(part); } catch (_) { return part; } };
  return { parts: path.split("/").filter(Boolean).map(decode), params: new URLSearchParams(query || "") };
}

function route() {
  takeToken();
  const { parts, params } = parseHash();
  const app = document.getElementById("app");
  let view;
  if (parts[0] === "instances" && parts[1]) view = instanceView(parts[1]);
  else if (parts[0] === "workflows") view = workflowsView();
  else if (parts[0] === "schedules") view = schedulesView();
  else view = listView(params);
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === view.nav);
  }
  replace(app, view.root);
  current = view;
  tick();
}

async function tick() {
  clearTimeout(pollTimer);
  const view = current;
  if (view && view.refresh && !document.hidden) {
    try {
      await view.refresh();
      setLive(true, "live · " + fmtTime(new Date().toISOString()).slice(11));
    } catch (err) {
      const answered = (err.status >= 400 && err.status < 500) || (err.fromConsole && err.status === 500);
      if (answered && err.status !== 401 && view.showError) {
        // The server answered, and said the page asks for something wrong
        // (an instance purged since a link to it was made, a bad filter)
        // or that it failed (a row that cannot be read, the store down):
        // shown in the page, not taken for the server being away.
        setLive(true, "live · " + fmtTime(new Date().toISOString()).slice(11));
        view.showError(err);
        if (err.status === 404) return; // nothing to poll for
      } else {
        setLive(false, err.status === 401 ? "token required" : "offline: " + err.message);
      }
    }
  }
  if (view === current) pollTimer = setTimeout(tick, POLL_MS);
}

window.addEventListener("hashchange", route);
document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
window.addEventListener("DOMContentLoaded", route);

// ---------------------------------------------------------------- instances list

// Where a page is lives in the address alone: `after` is its cursor and
// `prev` the cursors of the pages between the first and it, so Back,
// Forward, reload and a copied link all land on the same page, label and
// "Newer" target.
const PREV_SEP = ",";

function listView(params) {
  const filters = {
    workflow: params.get("workflow") || "",
    status: params.get("status") || "",
    tag: params.get("tag") || "",
    q: params.get("q") || "",
    after: params.get("after") || "",
    limit: params.get("limit") || "25",
  };
  const prev = filters.after ? (params.get("prev") || "").split(PREV_SEP).filter(Boolean) : [];
  const pageNo = filters.after ? prev.length + 2 : 1;
  // Any other change starts again from the first page.
  const go = (changes, cursor) => {
    const next = Object.assign({}, filters, changes, cursor || { after: "", prev: [] });
    next.prev = next.prev.join(PREV_SEP);
    location.hash = "#/" + qs(next);
  };

  const counts = h("div", { class: "counts", "data-testid": "counts" });
  const wfSelect = h("select", { "data-testid": "filter-workflow", onchange: (e) => go({ workflow: e.target.value }) },
    h("option", { value: "" }, "All workflows"));
  const tagInput = h("input", { placeholder: "tag  key=value", value: filters.tag, "data-testid": "filter-tag",
    onchange: (e) => go({ tag: e.target.value.trim() }) });
  const search = h("input", { class: "search", type: "search", placeholder: "Search by instance id or key", value: filters.q,
    "data-testid": "filter-search", onchange: (e) => go({ q: e.target.value.trim() }) });
  const clearBtn = h("button", { onclick: () => go({ workflow: "", status: "", tag: "", q: "" }) }, "Clear filters");
  const body = h("tbody");
  const pagerText = h("span", { "data-testid": "pager" });
  const newer = h("button", { "data-testid": "newer",
    onclick: () => go({}, { after: prev[prev.length - 1] || "", prev: prev.slice(0, -1) }) }, "← Newer");
  const older = h("button", { "data-testid": "older" }, "Older →");
  const pageSize = h("select", { onchange: (e) => go({ limit: e.target.value }) },
    // The address's own limit too, when it is none of these.
    ["25", "50", "100"].concat(["25", "50", "100"].includes(filters.limit) ? [] : [filters.limit])
      .map((n) => h("option", { value: n, selected: n === filters.limit }, n + " per page")));
  let knownWorkflows = "";

  const root = h("div", {},
    counts,
    h("div", { class: "filters" }, wfSelect, tagInput, search, clearBtn),
    h("div", { class: "panel flush" },
      h("table", { "data-testid": "instances" },
        h("thead", {}, h("tr", {},
          h("th", {}, "Status"), h("th", {}, "Instance"), h("th", {}, "Workflow"), h("th", {}, "Tags"),
          h("th", {}, "Created"), h("th", { class: "num" }, "Duration"), h("th", { class: "num" }, "Runs"))),
        body),
      h("div", { class: "pager" }, pagerText, h("div", { class: "actions" }, pageSize, newer, older))));

  async function refresh() {
    const [overview, page] = await Promise.all([
      api("overview" + qs({ workflow: filters.workflow })),
      api("instances" + qs(filters)),
    ]);
    // Status counts, clickable as filters.
    const total = Object.values(overview.counts).reduce((a, b) => a + b, 0);
    const countBtn = (status, label, n, color) => h("button", {
      class: "count" + (filters.status === status ? " active" : "") + (n ? "" : " zero"),
      "data-status": status || "all",
      style: color ? "--c: var(--s-" + status + ")" : null,
      onclick: () => go({ status: filters.status === status ? "" : status }),
    }, h("span", { class: "n" }, String(n)), h("span", { class: "l" }, label));
    // Counts are per workflow: a tag or search filter narrows the list
    // below, not them, and says so rather than show numbers the list
    // does not match.
    const narrowed = filters.tag || filters.q;
    update(counts, toJson(overview) + "|" + filters.status, countBtn("", "All", total, false),
      STATUSES.map((s) => countBtn(s, LABEL[s], overview.counts[s] || 0, true)),
      narrowed ? h("span", { class: "muted", "data-testid": "counts-note" }, "counts ignore the tag and search filters") : null);
    // Workflow names, rebuilt only when they change so an open select stays open.
    const names = JSON.stringify(overview.workflows);
    if (names !== knownWorkflows) {
      knownWorkflows = names;
      const wanted = filters.workflow;
      replace(wfSelect, h("option", { value: "" }, "All workflows"),
        overview.workflows.map((w) => h("option", { value: w, selected: w === wanted }, w)));
      if (wanted && !overview.workflows.includes(wanted)) wfSelect.appendChild(h("option", { value: wanted, selected: true }, wanted));
    }
    // Rows, then those whose stored row could not be read (damaged outside
    // the engine): named, so one bad row hides nothing else.
    const unreadable = (page.unreadable || []).map((u) => h("tr", { class: "unreadable", "data-id": u.id },
      h("td", {}, badge("unreadable")),
      h("td", { colspan: 6 }, h("span", { class: "mono" }, u.id),
        h("span", { class: "sub trunc", title: u.error }, "Row cannot be read: " + u.error))));
    if (!page.items.length && !unreadable.length) {
      update(body, "", h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No instances match.")));
    } else {
      update(body, toJson(page), unreadable, page.items.map((it) => h("tr", {
        class: "click", "data-id": it.id, "data-status": it.status,
        onclick: (e) => { if (!e.target.closest("a")) location.hash = "#/instances/" + encodeURIComponent(it.id); },
      },
        h("td", {}, badge(it.status), waitingSub(it)),
        h("td", {}, h("a", { class: "mono", href: "#/instances/" + encodeURIComponent(it.id) }, it.id),
          it.key ? h("span", { class: "sub trunc", title: it.key }, "key ", h("span", { class: "mono" }, it.key)) : null,
          it.error ? h("span", { class: "sub trunc", title: it.error }, it.error) : null),
        h("td", {}, it.workflow),
        h("td", { class: "tags" }, tagChips(it.tags)),
        h("td", { class: "nowrap", title: fmtTime(it.created_at) }, ago(it.created_at), h("span", { class: "sub" }, fmtTime(it.created_at))),
        h("td", { class: "num nowrap" }, fmtDur(span(it.started_at || it.created_at, it.finished_at))),
        h("td", { class: "num" }, String(it.runs)))));
    }
    const shown = page.items.length;
    pagerText.textContent = shown ? "Showing " + shown + (page.next ? "+" : "") + (pageNo > 1 ? " (page " + pageNo + ")" : "") : "";
    newer.disabled = !filters.after;
    older.disabled = !page.next;
    older.onclick = () => go({}, { after: page.next, prev: filters.after ? prev.concat([filters.after]) : [] });
  }

  // A filter the server refused (`env` for a tag): said in the table,
  // under the filters that can fix it.
  function showError(err) {
    replace(body, h("tr", {}, h("td", { colspan: 7, class: "empty", "data-testid": "page-error" }, err.message)));
  }

  return { nav: "instances", root, refresh, showError };
}

// ---------------------------------------------------------------- one instance

// A running instance's page polls; past this many steps or history
// events it shows the latest only, until "Show all" is clicked.
const TAIL = 200;

function instanceView(id) {
  const root = h("div", { "data-testid": "instance" }, h("p", { class: "empty" }, "Loading…"));
  let lastJson = "";
  let metaEl = null;
  let all = false;
  // Only the answer to the latest request is shown: one sent before a
  // "Show all" must not bring the cut list back.
  let asked = 0;

  // "Show all" reads every step and event once; the polls that keep a
  // running instance's page live would read them all again every 2 s, so
  // they pause until "Resume" goes back to the latest ones.
  function showAll() {
    all = true;
    lastJson = "";
    refresh(true).catch((err) => toast(err.message, true));
  }

  function resume() {
    all = false;
    lastJson = "";
    refresh(true).catch((err) => toast(err.message, true));
  }

  // From a dialog, which shows a failure itself and stays open; from a
  // button, a failure is a toast, and nothing is left to catch.
  async function act(action, body, fromDialog) {
    try {
      const res = await api("instances/" + encodeURIComponent(id) + "/" + action, body || {});
      const said = { cancel: "Instance cancelled", pause: "Pause requested", resume: "Resumed", events: "Event sent", timeout: "Deadline moved" };
      const message = action === "rerun" ? (res.created ? "Started " : "Already running: ") + res.id
        : res.already_sent ? "Already sent from this dialog: nothing changed"
        : (said[action] || "Done") + (res.note ? ", but " + res.note : "");
      toast(message);
      if (action === "rerun") location.hash = "#/instances/" + encodeURIComponent(res.id);
    } catch (err) {
      if (fromDialog) throw err;
      toast(err.message, true);
      return;
    }
    // Done: a page that fails to load now must not read as the action
    // failing (the dialog would stay open, inviting a second one). The
    // next poll tries again.
    lastJson = "";
    refresh().catch(() => {});
  }

  function confirmAct(action, title, text, label, danger) {
    openDialog(title, text, null, label, danger, () => act(action, undefined, true));
  }

  function sendEvent(it) {
    // One key per dialog: a double-click or a resent request after a
    // dropped answer delivers the event once (send_event_once).
    const key = "console-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
    // The name it listens for, if it does.
    const w = it.waiting_for;
    const name = h("input", { placeholder: "approval", "data-testid": "event-name", value: w && w.kind === "event" ? w.name : null });
    const payload = h("textarea", { "data-testid": "event-payload" }, "{}");
    openDialog("Send an event", "A waiting ctx.wait_for_event(name, ..) receives the payload; an event sent early is kept until the instance waits for it.",
      [h("label", { class: "field" }, "Event name", name), h("label", { class: "field" }, "Payload (JSON)", payload)],
      "Send event", false, async () => {
        let value;
        try { value = parseJson(payload.value || "null"); } catch (e) { throw new Error("payload is not valid JSON: " + e.message); }
        if (!name.value.trim()) throw new Error("an event name is required");
        await act("events", { name: name.value.trim(), payload: value, key }, true);
      });
  }

  function setDeadline() {
    const after = h("input", { placeholder: "2h", "data-testid": "deadline-in" });
    openDialog("Move the deadline", "The instance times out this long from now instead (30m, 2h, 7d). A deploy that raised the workflow's timeout leaves running instances with their own deadline.",
      [h("label", { class: "field" }, "New deadline, from now", after)],
      "Move deadline", false, async () => {
        if (!after.value.trim()) throw new Error("a duration is required, like 2h");
        await act("timeout", { in: after.value.trim() }, true);
      });
  }

  function render(d) {
    const it = d.instance;
    const active = ACTIVE.includes(it.status);
    const buttons = [];
    if (active) buttons.push(h("button", { class: "danger", "data-action": "cancel",
      onclick: () => confirmAct("cancel", "Cancel this instance?", "It ends Cancelled; a running handler is stopped at its next await point. This cannot be undone.", "Cancel instance", true) }, "Cancel"));
    const pausing = it.status === "paused" || it.pause_requested;
    if (active && !pausing) buttons.push(h("button", { "data-action": "pause", onclick: () => act("pause") }, "Pause"));
    // Resume also takes back a pause asked of a running instance.
    if (active && pausing) buttons.push(h("button", { "data-action": "resume", onclick: () => act("resume") }, "Resume"));
    if (active) buttons.push(h("button", { "data-action": "send-event", onclick: () => sendEvent(it) }, "Send event"));
    if (active) buttons.push(h("button", { "data-action": "set-timeout", onclick: setDeadline }, "Deadline"));
    if (!active) buttons.push(h("button", { class: it.status === "failed" ? "primary" : "", "data-action": "rerun",
      onclick: () => confirmAct("rerun", "Re-run with the same input?", "Starts a new instance of " + it.workflow + " with this input and tags (plus rerun_of=" + it.id + ").", "Re-run", false) }, "Re-run"));

    metaEl = h("div", { class: "meta" }, metaItems(it));

    return [
      h("div", { class: "crumbs" }, h("a", { href: "#/" }, "Instances"), " / ",
        h("a", { href: "#/" + qs({ workflow: it.workflow }) }, it.workflow)),
      h("div", { class: "title" }, h("h1", {}, it.workflow), badge(it.status, true), h("div", { class: "spacer" }), h("div", { class: "actions" }, buttons)),
      h("div", { class: "idline" }, h("span", { class: "mono", "data-testid": "instance-id" }, it.id)),
      all && active ? h("div", { class: "muted paused", "data-testid": "paused" }, "Showing every step and event; live updates paused · ",
        h("button", { class: "link", "data-action": "resume-live", onclick: resume }, "Resume")) : null,
      it.error ? h("div", { class: "errorbox", "data-testid": "error" }, h("b", {}, LABEL[it.status] || "Error"), it.error) : null,
      h("section", { class: "panel flush" }, metaEl),
      h("div", { class: "grid2" }, jsonPanel("Input", it.input, "input", it.input_cut, it.id), jsonPanel("Output", it.output, "output", it.output_cut, it.id)),
      h("div", { style: "height:16px" }),
      jsonPanel("State", it.state, "state", it.state_cut, it.id),
      stepsPanel(it, d.steps, d.history, more(d.steps.length, d.steps_total, "steps")),
      historyPanel(d.history, more(d.history.length, d.history_total, "events")),
    ];
  }

  // What the instance is, with the times that move on their own ("waiting
  // for 3 s", "gives up in 2h"): updated at every poll, without the rest
  // of the page, when nothing else changed.
  function metaItems(it) {
    const meta = (k, v) => h("div", {}, h("div", { class: "k" }, k), h("div", { class: "v" }, v === null || v === undefined || v === "" ? "—" : v));
    const total = span(it.started_at || it.created_at, it.finished_at);
    return [
      meta("Created", h("span", { title: it.created_at }, fmtTime(it.created_at))),
      meta("Started", fmtTime(it.started_at)),
      meta("Finished", fmtTime(it.finished_at)),
      meta(it.finished_at ? "Duration" : it.started_at ? "Running for" : "Waiting for", fmtDur(total)),
      meta("Deadline", it.deadline_at ? fmtTime(it.deadline_at) + (it.finished_at ? "" : " (" + ago(it.deadline_at) + ")") : null),
      meta("Runs", String(it.runs)),
      waiting(it, true) ? meta("Waiting", h("span", { "data-testid": "waiting" }, waiting(it, true))) : null,
      it.parent ? meta("Parent", h("a", { class: "mono", href: "#/instances/" + encodeURIComponent(it.parent) }, it.parent)) : null,
      meta("Key", it.key ? h("span", { class: "mono", "data-testid": "key" }, it.key) : null),
      meta("Tags", tagChips(it.tags)),
    ];
  }

  // "Latest 200 of 5,000 steps · Show all", when the answer was cut. All
  // of them is at most 10,000 (the server's cap).
  function more(shown, total, what) {
    if (!(total > shown)) return null;
    if (all) return h("span", { class: "muted more", "data-testid": "more-" + what },
      "latest " + shown + " of " + total + " " + what + " (the most the console shows)");
    return h("span", { class: "muted more", "data-testid": "more-" + what },
      "latest " + shown + " of " + total + " " + what + " · ",
      h("button", { class: "link", "data-action": "show-all", onclick: showAll }, "Show all"));
  }

  // An ended instance never changes again: it is fetched once, not at
  // every poll (a long one's steps and history are the heaviest answer).
  let ended = false;

  async function refresh(force) {
    if (ended && lastJson) return;
    if (all && lastJson && !force) return;
    const mine = ++asked;
    const d = await api("instances/" + encodeURIComponent(id) + (all ? "" : "?tail=" + TAIL));
    if (mine !== asked) return;
    ended = !ACTIVE.includes(d.instance.status);
    const text = toJson(d);
    // Re-render only on change, so text being selected is left alone.
    if (text !== lastJson) {
      lastJson = text;
      replace(root, render(d));
    } else if (metaEl) {
      update(metaEl, text, metaItems(d.instance));
    }
  }

  // No such instance (purged since a link to it was made), said in the
  // page; the next answer that comes is shown again, even the same one.
  function showError(err) {
    lastJson = "";
    metaEl = null;
    replace(root, h("div", { class: "errorbox", "data-testid": "page-error" },
      h("b", {}, err.status === 404 ? "No such instance" : "Cannot show this instance"), err.message));
  }

  return { nav: "instances", root, refresh, showError };
}

// Step outputs opened on an instance's page, by instance and step key: the
// page is rebuilt when a poll brings something new, and an output being
// read must stay open.
const openOutputs = new Set();

function stepOutput(it, s) {
  if (s.output_cut) return h("div", { class: "detail output" }, leftOut(s.output_cut, it.id));
  if (s.output === undefined || s.output === null) return null;
  const mark = it.id + "\n" + s.key;
  // Rendered when first opened: hundreds of closed outputs, rebuilt at
  // every poll that brings something new, would be a page of spans.
  let shown = false;
  const show = (el) => { if (!shown) { shown = true; el.appendChild(jsonView(s.output)); } };
  const el = h("details", {
    class: "detail output", "data-output": s.key,
    ontoggle: (e) => {
      if (e.target.open) { openOutputs.add(mark); show(e.target); } else openOutputs.delete(mark);
    },
  }, h("summary", {}, "Output"));
  if (openOutputs.has(mark)) { show(el); el.open = true; }
  return el;
}

function stepsPanel(it, steps, history, more) {
  // Attempts that failed on steps not (yet) recorded: a step retrying right now.
  const pending = new Map();
  const recorded = new Set(steps.map((s) => s.key));
  for (const e of history) {
    if (e.step && !recorded.has(e.step) && e.kind === "attempt_failed") pending.set(e.step, e);
  }
  if (!steps.length && !pending.size) {
    return h("section", { class: "panel" }, h("h2", {}, "Steps"), h("div", { class: "muted" }, "No steps recorded yet."));
  }
  const t0 = new Date(it.started_at || it.created_at).getTime();
  const ends = steps.map((s) => new Date(s.finished_at).getTime());
  // A loop, not a spread: "Show all" of a very long instance passes more
  // values than a call takes arguments.
  let t1 = Math.max(it.finished_at ? new Date(it.finished_at).getTime() : Date.now(), t0 + 1);
  for (const end of ends) if (end > t1) t1 = end;
  const rows = steps.map((s) => {
    const a = new Date(s.started_at).getTime(), b = new Date(s.finished_at).getTime();
    const left = ((a - t0) / (t1 - t0)) * 100, width = ((b - a) / (t1 - t0)) * 100;
    const cls = "bar" + (s.error ? " fail" : s.attempts > 1 ? " retry" : "");
    return h("div", { class: "row", "data-step": s.key },
      h("div", { class: "name", title: s.key }, s.key),
      h("div", { class: "track" }, h("div", { class: cls, style: "left:" + Math.max(0, left).toFixed(2) + "%;width:" + Math.max(0, width).toFixed(2) + "%" })),
      h("div", { class: "att" + (s.attempts > 1 ? " warn" : "") }, s.attempts + (s.attempts === 1 ? " attempt" : " attempts")),
      h("div", { class: "dur" }, fmtDur(b - a)),
      s.error ? h("div", { class: "detail err" }, s.error)
        : s.unreadable ? h("div", { class: "detail err" }, "Unreadable output: " + s.unreadable)
        : stepOutput(it, s));
  });
  for (const [key, e] of pending) {
    rows.push(h("div", { class: "row", "data-step": key },
      h("div", { class: "name", title: key }, key),
      h("div", { class: "track" }),
      h("div", { class: "att warn" }, (e.attempt || "?") + " failed"),
      // An instance that ended (cancelled, timed out) mid-backoff never
      // records the step: it gave up, it is not retrying.
      h("div", { class: "dur" }, ACTIVE.includes(it.status) ? "retrying" : "gave up"),
      e.message ? h("div", { class: "detail err" }, e.message) : null));
  }
  return h("section", { class: "panel steps", "data-testid": "steps" }, h("h2", {}, "Steps ", more), rows);
}

function historyPanel(history, more) {
  const bad = ["failed", "step_failed", "attempt_failed", "cancelled", "timed_out"];
  const good = ["completed", "step_completed"];
  return h("section", { class: "panel flush", "data-testid": "history" },
    h("h2", { style: "padding:14px 16px 0" }, "History ", more),
    h("table", {},
      h("thead", {}, h("tr", {}, h("th", { class: "num" }, "#"), h("th", {}, "Time"), h("th", {}, "Event"), h("th", {}, "Step"),
        h("th", { class: "num" }, "Attempt"), h("th", { class: "num" }, "Duration"), h("th", {}, "Detail"))),
      h("tbody", {}, history.map((e) => h("tr", {},
        h("td", { class: "num muted" }, String(e.seq)),
        h("td", { class: "nowrap" }, fmtTime(e.at)),
        h("td", {}, h("span", { class: "kind" + (bad.includes(e.kind) ? " bad" : good.includes(e.kind) ? " good" : "") }, e.kind)),
        h("td", { class: "mono" }, e.step || ""),
        h("td", { class: "num" }, e.attempt === null || e.attempt === undefined ? "" : String(e.attempt)),
        h("td", { class: "num nowrap" }, e.duration_ms === null || e.duration_ms === undefined ? "" : fmtDur(e.duration_ms)),
        h("td", { class: "detail" }, e.message || ""))))));
}

// ---------------------------------------------------------------- workflows

function workflowsView() {
  const root = h("div", { "data-testid": "workflows" }, h("p", { class: "empty" }, "Loading…"));
  let loaded = false;

  function card(def, counts) {
    const example = toJson(sample(def.input_schema), 2);
    const input = h("textarea", { rows: Math.min(10, example.split("\n").length + 1), "data-testid": "start-input" }, example);
    const key = h("input", { placeholder: "optional", "data-testid": "start-key",
      title: "At most one active instance per key: a second start with it finds the first" });
    const tags = h("input", { placeholder: "env=dev, team=ops" });
    const result = h("div");
    const start = h("button", { class: "primary", "data-testid": "start" }, "Start instance");
    start.addEventListener("click", async () => {
      clear(result);
      let value, tagMap;
      try {
        value = parseJson(input.value);
      } catch (e) {
        replace(result, h("div", { class: "violations" }, "Input is not valid JSON: " + e.message));
        return;
      }
      try { tagMap = parseTags(tags.value); } catch (e) { replace(result, h("div", { class: "violations" }, e.message)); return; }
      start.disabled = true;
      try {
        // With a key, once per key: a click repeated after a lost answer
        // finds the instance the first one started.
        const k = key.value.trim();
        const res = await api("workflows/" + encodeURIComponent(def.name) + "/start",
          { input: value, key: k || null, tags: tagMap, once: !!k });
        replace(result, h("div", { class: "ok" }, res.created ? "Started " : "Already started with this key: ",
          h("a", { class: "mono", href: "#/instances/" + encodeURIComponent(res.id) }, res.id)));
      } catch (err) {
        replace(result, violationList(err));
      } finally {
        start.disabled = false;
      }
    });
    const n = Object.values(counts || {}).reduce((a, b) => a + b, 0);
    return h("section", { class: "panel", "data-workflow": def.name },
      h("div", { class: "wf-head" },
        h("h1", {}, def.name),
        def.schedule ? h("span", { class: "chip" }, h("b", {}, "cron"), " ", h("span", { class: "mono" }, def.schedule), " ", def.timezone) : null,
        h("span", { class: "chip" }, "timeout ", fmtDur(def.timeout_ms)),
        def.steps.length ? h("span", { class: "chip" }, def.steps.length + (def.steps.length === 1 ? " named step" : " named steps")) : null,
        h("div", { class: "spacer" }),
        h("a", { href: "#/" + qs({ workflow: def.name }) }, n + " instance" + (n === 1 ? "" : "s") + " →")),
      def.description ? h("div", { class: "wf-desc" }, def.description) : null,
      Object.keys(counts || {}).length ? h("div", { class: "chips" }, Object.entries(counts).map(([s, c]) => h("span", { class: "badge s-" + s }, LABEL[s] + " " + c))) : null,
      def.steps.length ? h("div", { class: "muted", style: "margin-top:8px" }, h("span", { title: "The names passed to ctx.step in the handler's code, in source order; sleeps, waits and children are not listed" }, "Steps (ctx.step, in source order): "), h("span", { class: "mono" }, def.steps.join(" → "))) : null,
      h("details", {}, h("summary", {}, "Schemas"),
        h("div", { class: "grid2" }, jsonPanel("Input schema", def.input_schema), jsonPanel("Output schema", def.output_schema)),
        h("div", { style: "height:16px" }), jsonPanel("State schema", def.state_schema)),
      h("div", { class: "startform" },
        h("label", { class: "field" }, "Input (JSON, checked against the input schema)", input),
        h("div", { class: "side" }, h("label", { class: "field" }, "Key", key), h("label", { class: "field" }, "Tags", tags), start)),
      result);
  }

  async function refresh() {
    if (loaded) return; // Forms here hold what the user typed: no live re-render.
    const data = await api("workflows");
    loaded = true;
    if (!data.workflows.length) {
      replace(root, h("p", { class: "empty" }, "No workflow definitions recorded yet: start an engine with workflows registered on this database."));
      return;
    }
    replace(root, data.workflows.map((w) => card(w.definition, w.counts)));
  }

  function showError(err) {
    replace(root, h("div", { class: "errorbox", "data-testid": "page-error" },
      h("b", {}, "Cannot list the workflows"), err.message));
  }

  return { nav: "workflows", root, refresh, showError };
}

// ---------------------------------------------------------------- schedules

function schedulesView() {
  const body = h("tbody");
  const root = h("div", {}, h("div", { class: "panel flush" }, h("table", { "data-testid": "schedules" },
    h("thead", {}, h("tr", {}, h("th", {}, "Workflow"), h("th", {}, "Schedule"), h("th", {}, "Time zone"),
      h("th", {}, "Next fire"), h("th", {}, "Last fired"), h("th", {}, "Last instance"), h("th", {}, "Catch-up"))),
    body)));

  // UTC like every time on the page, then the schedule's own wall clock,
  // which is what its cron expression is written in.
  const fireTime = (iso, timeZone) => {
    const local = isUtc(timeZone) ? null : fmtTimeIn(iso, timeZone);
    return [fmtTime(iso), local ? h("span", { class: "sub", "data-testid": "zoned" }, local) : null, h("span", { class: "sub" }, ago(iso))];
  };

  async function refresh() {
    const data = await api("schedules");
    if (!data.schedules.length) {
      replace(body, h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No scheduled workflows.")));
      return;
    }
    replace(body, data.schedules.map((s) => h("tr", { "data-workflow": s.workflow },
      h("td", {}, h("a", { href: "#/" + qs({ workflow: s.workflow }) }, s.workflow)),
      h("td", { class: "mono" }, s.expression),
      h("td", {}, s.timezone),
      h("td", { class: "nowrap", "data-testid": "next-fire" }, s.next_fire ? fireTime(s.next_fire, s.timezone) : "—"),
      h("td", { class: "nowrap", "data-testid": "last-fired" }, s.last_fired ? fireTime(s.last_fired, s.timezone) : "never"),
      h("td", {}, s.last_instance ? h("a", { class: "mono", href: "#/instances/" + encodeURIComponent(s.last_instance) }, s.last_instance) : "—"),
      h("td", {}, s.catch_up))));
  }

  function showError(err) {
    replace(body, h("tr", {}, h("td", { colspan: 7, class: "empty", "data-testid": "page-error" }, err.message)));
  }

  return { nav: "schedules", root, refresh, showError };
}
