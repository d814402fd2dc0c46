"""The dashboard at ``GET /``: one self-contained page (no external assets) that reads
``/v1/services`` every two seconds, and ``/v1/policy`` whenever the version changes, and renders
them without reloading.

Everything shown comes from instance reports, i.e. from whoever holds a service token (or, with
etcd, write access to etcd): the script puts data into the page only through ``textContent`` and
``createElement``, never ``innerHTML``. As a second line, the page is served with a
Content-Security-Policy that lets only this page's own script and style run (by their SHA-256
hashes): a name that slipped through as markup still could not execute.
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["DASHBOARD_HEADERS", "DASHBOARD_HTML"]

_STYLE = r"""
:root{--fg:#1d2330;--muted:#6b7280;--line:#e5e7eb;--bad:#b42318;--badbg:#fef3f2;--ok:#067647}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:var(--fg);
background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:.8rem 1.5rem;display:flex;gap:1rem;
align-items:baseline;flex-wrap:wrap}
header h1{font-size:1.1rem;margin:0;font-weight:600}
#status{color:#c7ccd6;font-size:.85rem}#status.bad{color:#fda29b}
main{padding:1rem 1.5rem;max-width:80rem}
.cards{display:flex;gap:1rem;flex-wrap:wrap;margin-bottom:1rem}
.card{background:#fff;border:1px solid var(--line);border-radius:6px;padding:.7rem 1rem;
min-width:13rem}
.card .label{color:var(--muted);font-size:.8rem;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:1.5rem;font-weight:600}
.card .sub{color:var(--muted);font-size:.85rem}
h2{font-size:1rem;margin:1.5rem 0 .5rem}
div.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line)}
th,td{padding:.4rem .75rem;text-align:left;border-bottom:1px solid var(--line);
white-space:nowrap}
thead th{background:#eef0f4;font-size:.8rem;color:#374151}
td.empty{white-space:normal}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.service td{background:#fafbfc;font-weight:600;border-top:2px solid var(--line)}
tr.instance td.name{padding-left:2rem;font-family:ui-monospace,monospace;font-size:.85rem;
max-width:28rem;overflow:hidden;text-overflow:ellipsis}
.count{color:var(--muted);font-weight:400;margin-left:.5rem}
.bad{color:var(--bad)}.ok{color:var(--ok)}.muted{color:var(--muted)}
tr.behind td{background:var(--badbg)}
.badge{display:inline-block;margin-left:.4rem;padding:0 .4rem;border-radius:3px;
background:var(--bad);color:#fff;font-size:.75rem;font-weight:600}
pre{background:#fff;border:1px solid var(--line);padding:1rem;overflow:auto;max-height:32rem;
margin:0;font-size:.85rem}
"""

_SCRIPT = r"""
"use strict";
const REFRESH_MS = 2000;
const DASH = "\u2013";
let shownVersion = null;
let lastGood = null;

function $(id) { return document.getElementById(id); }
function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
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

function metricCells(row, m) {
  const low = !missing(m.success_rate) && Number(m.success_rate) < 0.99;
  row.append(
    el("td", fixed(m.requests_per_second, 1), "num"),
    el("td", percent(m.success_rate), low ? "num bad" : "num"),
    el("td", fixed(m.p50_ms, 1), "num"),
    el("td", fixed(m.p99_ms, 1), "num"));
}

function serviceRow(s, current) {
  const row = el("tr", null, "service");
  row.dataset.service = String(s.service);
  const name = el("td", s.service, "name");
  name.append(el("span", plural(s.instances.length, "instance"), "count"));
  const late = s.policy_versions.some(v => v < current);
  row.append(name, el("td", s.policy_versions.map(v => "v" + v).join(", "), late ? "bad" : ""));
  metricCells(row, s);
  row.append(el("td", ""));
  return row;
}

function instanceRow(i, current) {
  const late = Number(i.policy_version) < current;
  const row = el("tr", null, late ? "instance behind" : "instance");
  row.dataset.instance = String(i.instance);
  const name = el("td", i.instance, "name");
  name.title = String(i.instance);
  const version = el("td", "v" + i.policy_version, late ? "bad" : "");
  if (late) version.append(el("span", "behind", "badge"));
  row.append(name, version);
  metricCells(row, i);
  row.append(el("td", ago(i.reported), "muted"));
  return row;
}

function renderServices(data) {
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
    const row = el("tr");
    const cell = el("td", "No instance has reported yet (services report when MESH_TOKEN is set).",
                    "muted empty");
    cell.colSpan = 7;
    row.append(cell);
    rows.push(row);
  }
  $("services").replaceChildren(...rows);
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

async function getJSON(path) {
  const response = await fetch(path, {cache: "no-store", signal: AbortSignal.timeout(5000)});
  if (!response.ok) throw new Error(path + " answered " + response.status);
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
    renderServices(data);
    if (data.policy_version !== shownVersion) await renderPolicy(data.policy_version);
    lastGood = new Date();
    setStatus("live, updated " + lastGood.toLocaleTimeString(), false);
  } catch (err) {
    const since = lastGood ? "; showing data from " + lastGood.toLocaleTimeString() : "";
    setStatus("control plane unreachable (" + err.message + ")" + since, true);
  }
}

async function loop() {
  if (!document.hidden) await refresh();
  setTimeout(loop, REFRESH_MS);
}
document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
loop();
"""

DASHBOARD_HTML = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>asgimesh control plane</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_STYLE}</style></head>
<body>
<header><h1>asgimesh control plane</h1><span id="status">loading&hellip;</span></header>
<main>
<div class="cards">
<div class="card"><div class="label">Policy version</div>
<div class="value" id="version">&ndash;</div>
<div class="sub" id="applied"></div></div>
<div class="card"><div class="label">Instances</div>
<div class="value" id="instance-count">&ndash;</div>
<div class="sub" id="fleet"></div></div>
<div class="card"><div class="label">Services</div>
<div class="value" id="service-count">&ndash;</div>
<div class="sub">with a recent report</div></div>
</div>
<h2>Services</h2>
<div class="scroll"><table>
<thead><tr><th>service / instance</th><th>policy</th><th class="num">req/s</th>
<th class="num">success</th><th class="num">p50 ms</th><th class="num">p99 ms</th>
<th>last report</th></tr></thead>
<tbody id="services"><tr><td colspan="7" class="muted">loading&hellip;</td></tr></tbody>
</table></div>
<h2>Policy document <span class="muted" id="policy-version"></span></h2>
<pre id="policy">(loading)</pre>
</main>
<script>{_SCRIPT}</script></body></html>
"""


def _sha256(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


#: Only this page's own script and style may run; it may talk only to its own origin.
DASHBOARD_HEADERS = {
    "content-security-policy": (
        f"default-src 'none'; script-src {_sha256(_SCRIPT)}; style-src {_sha256(_STYLE)}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
