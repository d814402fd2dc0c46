"use strict";
// The control plane's dashboard. Everything it shows comes from instance reports, i.e. from
// whoever holds a service token: data reaches the page only through textContent, setAttribute
// and createElement(NS), never as markup.
const REFRESH_MS = 2000;
const DASH = "\u2013";
const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 168, NODE_H = 54, COL_W = 320, ROW_H = 96, PAD = 24;
let shownVersion = null;
let lastGood = null;
let selected = null;
let lastData = null;
let adminToken = null;
let policyHistory = [];

function $(id) { return document.getElementById(id); }
function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
function missing(v) { return v === null || v === undefined; }
function fixed(v, digits) { return missing(v) ? DASH : Number(v).toFixed(digits); }
function percent(v) { return missing(v) ? DASH : (100 * Number(v)).toFixed(2) + "%"; }
function clock(seconds) { return new Date(seconds * 1000).toLocaleTimeString(); }
function ago(seconds) {
  if (missing(seconds)) return DASH;
  const s = Math.max(0, Math.round(Date.now() / 1000 - Number(seconds)));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  return Math.floor(s / 3600) + " h ago";
}
function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }
function short(text, max) {
  text = String(text);
  return text.length > max ? text.slice(0, max - 1) + "\u2026" : text;
}
function counts(map) {
  const parts = Object.entries(map || {}).map(([reason, n]) => reason + " " + n);
  return parts.length ? parts.join(", ") : DASH;
}
function seconds(v) {
  const s = Number(v);
  return s >= 1 ? Math.round(s) + " s" : Math.round(s * 1000) + " ms";
}

/** ok, warn, bad by success rate; idle when nothing was called in the last interval. */
function health(m) {
  if (missing(m.success_rate)) return "idle";
  const rate = Number(m.success_rate);
  return rate < 0.95 ? "bad" : rate < 0.99 ? "warn" : "ok";
}

/** An instance by what people recognise: where it serves and its pid, else its report name. */
function instanceName(i) {
  if (!missing(i.address)) return i.address + (missing(i.pid) ? "" : " \u00b7 pid " + i.pid);
  if (!missing(i.pid)) return i.instance + " \u00b7 pid " + i.pid;
  return String(i.instance);
}

function why(e) {
  return e.endpoint + " ejected for " + seconds(e.seconds) + " after " +
    plural(Number(e.failures), "failure") + ", " + ago(e.since) + " (seen by " + e.instance + ")";
}

// -- the service graph ---------------------------------------------------------------------

/** Columns by longest call path from the services nobody calls (cycles bounded), rows by name. */
function layout(data) {
  const names = new Set(data.services.map(s => String(s.service)));
  const edges = data.edges.filter(e => e.source !== e.destination);
  for (const e of edges) { names.add(String(e.source)); names.add(String(e.destination)); }
  const order = [...names].sort();
  const column = new Map(order.map(n => [n, 0]));
  for (let pass = 0; pass < order.length; pass++) {
    let changed = false;
    for (const e of edges) {
      const want = column.get(String(e.source)) + 1;
      if (want > column.get(String(e.destination)) && want < order.length) {
        column.set(String(e.destination), want);
        changed = true;
      }
    }
    if (!changed) break;
  }
  const used = [...new Set(column.values())].sort((a, b) => a - b);
  const columns = used.map(c => order.filter(n => column.get(n) === c));
  const place = new Map();
  const tallest = Math.max(1, ...columns.map(c => c.length));
  columns.forEach((names, x) => {
    const offset = (tallest - names.length) * ROW_H / 2;
    names.forEach((name, y) => place.set(name, {x: PAD + x * COL_W, y: PAD + offset + y * ROW_H}));
  });
  return {place, edges, width: PAD * 2 + (columns.length - 1) * COL_W + NODE_W,
          height: PAD * 2 + (tallest - 1) * ROW_H + NODE_H};
}

function edgePath(a, b) {
  if (b.x > a.x) {
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2, x2 = b.x - 6, y2 = b.y + NODE_H / 2;
    const mid = (x1 + x2) / 2;
    return {d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
            lx: mid, ly: (y1 + y2) / 2};
  }
  // A call back to an earlier (or the same) column: around, below the nodes.
  const x1 = a.x + NODE_W / 2, y1 = a.y + NODE_H, x2 = b.x + NODE_W / 2 + 10, y2 = b.y + NODE_H + 6;
  const low = Math.max(y1, y2) + ROW_H / 2;
  return {d: `M${x1},${y1} C${x1},${low} ${x2},${low} ${x2},${y2}`,
          lx: (x1 + x2) / 2, ly: low - 8};
}

function renderGraph(data) {
  const graph = $("graph");
  const focused = graph.contains(document.activeElement) ?
    document.activeElement.getAttribute("data-service") : null;
  const {place, edges, width, height} = layout(data);
  const rows = new Map(data.services.map(s => [String(s.service), s]));
  const children = [];
  const defs = svg("defs");
  for (const kind of ["ok", "warn", "bad", "idle"]) {
    const marker = svg("marker", {id: "arrow-" + kind, viewBox: "0 0 10 10", refX: 9, refY: 5,
                                  markerUnits: "userSpaceOnUse", markerWidth: 11,
                                  markerHeight: 11, orient: "auto-start-reverse"});
    marker.append(svg("path", {d: "M0,0 L10,5 L0,10 z", class: "arrow-" + kind}));
    defs.append(marker);
  }
  children.push(defs);
  for (const e of edges) {
    const kind = health(e);
    const {d, lx, ly} = edgePath(place.get(String(e.source)), place.get(String(e.destination)));
    const group = svg("g", {class: "edge " + kind, "data-source": e.source,
                            "data-destination": e.destination});
    const rate = kind === "idle" ? "idle" :
      fixed(e.requests_per_second, 1) + " rps \u00b7 " + fixed(100 * e.success_rate, 1) + "%";
    const latency = kind === "idle" ? "" : "p99 " + fixed(e.p99_ms, 0) + " ms";
    group.append(svg("title", {}, e.source + " \u2192 " + e.destination + ": " + rate + " " +
                     latency),
                 svg("path", {d, "marker-end": "url(#arrow-" + kind + ")"}),
                 svg("text", {x: lx, y: ly - 4, "text-anchor": "middle", class: "rate"}, rate),
                 svg("text", {x: lx, y: ly + 10, "text-anchor": "middle", class: "latency"},
                     latency));
    children.push(group);
  }
  for (const [name, at] of place) {
    const row = rows.get(name);
    const kind = row ? health(row) : "external";
    const classes = ["node", kind];
    if (name === selected) classes.push("selected");
    const figure = row ? fixed(row.requests_per_second, 1) + " rps \u00b7 " +
      (missing(row.success_rate) ? DASH : fixed(100 * row.success_rate, 1) + "%") :
      "not reporting";
    const group = svg("g", {class: classes.join(" "), "data-service": name, tabindex: 0,
                            role: "button", transform: `translate(${at.x},${at.y})`,
                            "aria-label": name + ": " + figure,
                            "aria-pressed": name === selected ? "true" : "false"});
    group.append(svg("title", {}, name),
                 svg("rect", {width: NODE_W, height: NODE_H, rx: 8}),
                 svg("text", {x: 12, y: 22}, short(name, 20)),
                 svg("text", {x: 12, y: 41, class: "figure"}, figure));
    group.addEventListener("click", () => select(name));
    group.addEventListener("keydown", event => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); select(name); }
    });
    children.push(group);
  }
  graph.setAttribute("viewBox", `0 0 ${width} ${height}`);
  graph.setAttribute("width", String(width));
  graph.setAttribute("height", String(height));
  graph.replaceChildren(...children);
  if (focused) graph.querySelector(`[data-service="${CSS.escape(focused)}"]`)?.focus();
  $("graph-empty").hidden = place.size > 0;
}

function select(name) {
  selected = selected === name ? null : name;
  if (lastData) render(lastData);
  if (selected) $("details").scrollIntoView({block: "nearest"});
}

// -- tables ----------------------------------------------------------------------------------

function metricCells(row, m) {
  const kind = health(m);
  row.append(
    el("td", fixed(m.requests_per_second, 1), "num"),
    el("td", percent(m.success_rate), kind === "bad" || kind === "warn" ? "num bad" : "num"),
    el("td", fixed(m.p50_ms, 1), "num"),
    el("td", fixed(m.p99_ms, 1), "num"));
}

function serviceRow(s, current) {
  const row = el("tr", null, s.service === selected ? "service selected" : "service");
  row.dataset.service = String(s.service);
  const name = el("td", s.service, "name");
  name.append(el("span", plural(s.instances.length, "instance"), "count"));
  const late = s.policy_versions.some(v => v < current);
  row.append(name, el("td", s.policy_versions.map(v => "v" + v).join(", "), late ? "bad" : ""));
  metricCells(row, s);
  row.append(el("td", s.denied || 0, s.denied ? "num bad" : "num"),
             el("td", s.rate_limited || 0, s.rate_limited ? "num bad" : "num"), el("td", ""));
  return row;
}

function instanceRow(i, current) {
  const late = Number(i.policy_version) < current;
  const row = el("tr", null, late ? "instance behind" : "instance");
  row.dataset.instance = String(i.instance);
  const name = el("td", instanceName(i), "name");
  name.title = String(i.instance);
  if (i.state === "draining") name.append(el("span", "draining", "badge"));
  if (!missing(i.concurrency_limit)) {
    const limit = el("span", "limit " + i.concurrency_limit, "count");
    limit.title = "inbound concurrency limit in force (adaptive concurrency's current finding)";
    name.append(limit);
  }
  const version = el("td", "v" + i.policy_version, late ? "bad" : "");
  if (late) version.append(el("span", "behind", "badge"));
  row.append(name, version);
  metricCells(row, i);
  row.append(el("td", i.denied || 0, "num"), el("td", i.rate_limited || 0, "num"),
             el("td", ago(i.reported), "muted"));
  return row;
}

function edgeRow(e) {
  const row = el("tr", null, "edge " + health(e));
  row.dataset.source = String(e.source);
  row.dataset.destination = String(e.destination);
  row.append(el("td", e.source + " \u2192 " + e.destination + (e.known ? "" : " (outside)")));
  metricCells(row, e);
  row.append(el("td", counts(e.retries)), el("td", counts(e.refusals), e.refusals &&
             Object.keys(e.refusals).length ? "bad" : ""),
             el("td", e.ejected.length ? e.ejected.map(why).join("; ") : DASH,
                e.ejected.length ? "why bad" : "why"));
  return row;
}

function emptyRow(text, span) {
  const row = el("tr");
  const cell = el("td", text, "muted empty");
  cell.colSpan = span;
  row.append(cell);
  return row;
}

function renderDetails(data) {
  const details = $("details");
  if (!selected) {
    details.replaceChildren(el("p", "Select a service in the graph (click, or Tab then Enter) " +
                                    "to see what it receives and what it sends.", "muted"));
    return;
  }
  const row = data.services.find(s => s.service === selected);
  const out = data.edges.filter(e => e.source === selected);
  const into = data.edges.filter(e => e.destination === selected);
  const line = (label, m) => label + ": " + fixed(m.requests_per_second, 1) + " req/s, " +
    percent(m.success_rate) + " success, p50 " + fixed(m.p50_ms, 1) + " ms, p99 " +
    fixed(m.p99_ms, 1) + " ms";
  const parts = [el("h3", selected)];
  parts.push(el("p", row ? line("receives", row) + " \u00b7 denied " + (row.denied || 0) +
                " \u00b7 rate-limited " + (row.rate_limited || 0) :
                "does not report (outside the mesh, or no MESH_TOKEN)", "inbound"));
  for (const e of into) parts.push(el("p", line("called by " + e.source, e), "caller"));
  for (const e of out) {
    parts.push(el("p", line("calls " + e.destination, e) + " \u00b7 retries " +
                  counts(e.retries) + " \u00b7 refused " + counts(e.refusals), "callee"));
    for (const ejected of e.ejected) parts.push(el("p", why(ejected), "ejected bad"));
  }
  details.replaceChildren(...parts);
}

function render(data) {
  lastData = data;
  const current = Number(data.policy_version) || 0;
  const rows = [];
  let total = 0, behind = 0;
  for (const s of data.services) {
    rows.push(serviceRow(s, current));
    for (const i of s.instances) {
      total += 1;
      if (Number(i.policy_version) < current) behind += 1;
      rows.push(instanceRow(i, current));
    }
  }
  if (!rows.length) {
    rows.push(emptyRow("No instance has reported yet (services report when MESH_TOKEN is set).",
                       9));
  }
  $("services").replaceChildren(...rows);
  const edges = data.edges.map(edgeRow);
  $("edges").replaceChildren(...(edges.length ? edges :
    [emptyRow("No calls between services reported yet.", 8)]));
  renderGraph(data);
  renderDetails(data);
  $("version").textContent = current ? "v" + current : "none";
  $("applied").textContent = missing(data.policy_created) ? "no policy stored yet"
    : "applied " + clock(data.policy_created) + " (" + ago(data.policy_created) + ")";
  $("service-count").textContent = String(data.services.length);
  $("instance-count").textContent = String(total);
  const fleet = $("fleet");
  fleet.textContent = !total ? "none reporting"
    : behind ? plural(behind, "instance") + " behind v" + current
    : "all on v" + current;
  fleet.className = "sub " + (behind ? "bad" : total ? "ok" : "");
}

// -- data ------------------------------------------------------------------------------------

async function getJSON(path, init) {
  const response = await fetch(path, {cache: "no-store", signal: AbortSignal.timeout(5000),
                                      ...(init || {})});
  if (!response.ok) {
    let detail = "";
    try { detail = ": " + (await response.json()).detail; } catch (err) { /* not JSON */ }
    throw new Error(path + " answered " + response.status + detail);
  }
  return response.json();
}

async function renderPolicy(version) {
  if (!version) {
    $("policy").textContent = "(no policy stored yet)";
    $("policy-version").textContent = "";
  } else {
    const answer = await getJSON("v1/policy");
    $("policy").textContent = JSON.stringify(answer.policy, null, 2);
    $("policy-version").textContent = "v" + answer.version;
    version = answer.version;
  }
  shownVersion = version;
}

function setStatus(text, bad) {
  const status = $("status");
  status.textContent = text;
  status.className = bad ? "bad" : "";
}

async function refresh() {
  try {
    const data = await getJSON("v1/services");
    data.edges = data.edges || [];
    render(data);
    if (data.policy_version !== shownVersion) {
      await renderPolicy(data.policy_version);
      if (adminToken) await loadHistory();
    }
    lastGood = new Date();
    setStatus("live, updated " + lastGood.toLocaleTimeString(), false);
  } catch (err) {
    const since = lastGood ? "; showing data from " + lastGood.toLocaleTimeString() : "";
    setStatus("control plane unreachable (" + err.message + ")" + since, true);
  }
}

// -- policy history, diff and rollback (admin) -------------------------------------------------

function canonical(value) {
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === "object") {
    const out = {};
    for (const key of Object.keys(value).sort()) out[key] = canonical(value[key]);
    return out;
  }
  return value;
}

/** Line diff by longest common subsequence; null when the documents are too big to compare. */
function diffLines(a, b) {
  const n = a.length, m = b.length;
  if (n * m > 4000000) return null;
  const lcs = Array.from({length: n + 1}, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { out.push(["same", a[i]]); i++; j++; }
    else if (lcs[i + 1][j] >= lcs[i][j + 1]) out.push(["del", a[i++]]);
    else out.push(["add", b[j++]]);
  }
  while (i < n) out.push(["del", a[i++]]);
  while (j < m) out.push(["add", b[j++]]);
  return out;
}

function versionLabel(v) {
  return "v" + v.version + " \u00b7 " + clock(v.created) + (v.note ? " \u00b7 " + v.note : "");
}

function historyMessage(text, bad) {
  const message = $("history-message");
  message.textContent = text;
  message.className = bad ? "bad" : "muted";
}

function renderDiff() {
  const from = policyHistory.find(v => String(v.version) === $("from").value);
  const to = policyHistory.find(v => String(v.version) === $("to").value);
  const rollback = $("rollback");
  rollback.disabled = !from;
  rollback.textContent = from ? "Roll back to v" + from.version : "Roll back";
  if (!from || !to) { $("diff").replaceChildren(); return; }
  const lines = version => JSON.stringify(canonical(version.policy), null, 2).split("\n");
  const diff = diffLines(lines(from), lines(to));
  if (diff === null) {
    $("diff").replaceChildren(el("span", "(too large to compare here)", "same"));
    return;
  }
  const changed = diff.filter(([kind]) => kind !== "same").length;
  $("diff-summary").textContent = changed ? "v" + from.version + " \u2192 v" + to.version +
    ": " + plural(changed, "changed line") : "v" + from.version + " and v" + to.version +
    " are the same document";
  const mark = {same: "  ", add: "+ ", del: "- "};
  $("diff").replaceChildren(...diff.map(([kind, text]) => el("span", mark[kind] + text, kind)));
}

async function loadHistory() {
  const headers = {authorization: "Bearer " + adminToken};
  try {
    const answer = await getJSON("v1/policy/history?limit=50", {headers});
    policyHistory = answer.versions;
  } catch (err) {
    policyHistory = [];
    historyMessage("history refused: " + err.message, true);
    for (const id of ["from", "to"]) $(id).replaceChildren();
    renderDiff();
    return;
  }
  const keep = {from: $("from").value, to: $("to").value};
  for (const id of ["from", "to"]) {
    $(id).replaceChildren(...policyHistory.map(v => {
      const option = el("option", versionLabel(v));
      option.value = String(v.version);
      return option;
    }));
  }
  const versions = policyHistory.map(v => String(v.version));
  $("to").value = versions.includes(keep.to) ? keep.to : versions[0] || "";
  $("from").value = versions.includes(keep.from) ? keep.from : versions[1] || versions[0] || "";
  historyMessage(plural(policyHistory.length, "version") + " kept", false);
  renderDiff();
}

async function rollback() {
  const target = Number($("from").value);
  if (!adminToken || !target) return;
  $("rollback").disabled = true;
  try {
    const answer = await getJSON("v1/policy/rollback", {
      method: "POST",
      headers: {authorization: "Bearer " + adminToken, "content-type": "application/json"},
      body: JSON.stringify({version: target}),
    });
    $("to").value = "";
    await refresh();
    await loadHistory();
    // Last, so that no reload of the history in between overwrites it.
    historyMessage("rolled back: v" + answer.version + " is v" + target + "'s document; " +
                   plural(policyHistory.length, "version") + " kept", false);
  } catch (err) {
    historyMessage("rollback refused: " + err.message, true);
    $("rollback").disabled = false;
  }
}

$("load-history").addEventListener("click", () => {
  adminToken = $("token").value.trim() || null;
  $("token").value = "";
  if (adminToken) loadHistory(); else historyMessage("an admin token is needed", true);
});
$("token").addEventListener("keydown", event => {
  if (event.key === "Enter") $("load-history").click();
});
$("from").addEventListener("change", renderDiff);
$("to").addEventListener("change", renderDiff);
$("rollback").addEventListener("click", rollback);

async function loop() {
  if (!document.hidden) await refresh();
  setTimeout(loop, REFRESH_MS);
}
document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
loop();
