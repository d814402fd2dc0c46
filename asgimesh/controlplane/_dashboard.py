"""The dashboard at ``GET /``: one self-contained page (no external assets) that reads
``/v1/services`` and ``/v1/policy`` every few seconds and renders them."""

from __future__ import annotations

__all__ = ["DASHBOARD_HTML"]

DASHBOARD_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>asgimesh control plane</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:2rem;color:#222}
h1{font-size:1.3rem}h2{font-size:1.05rem;margin-top:2rem}
table{border-collapse:collapse;min-width:60%}
th,td{border-bottom:1px solid #ddd;padding:.35rem .7rem;text-align:left}
th{background:#f4f4f4}.bad{color:#b00}.muted{color:#888}
pre{background:#f7f7f7;padding:1rem;overflow:auto;max-height:30rem}
</style></head>
<body>
<h1>asgimesh control plane</h1>
<p>Policy version <b id="version">&ndash;</b> <span class="muted" id="updated"></span></p>
<h2>Services</h2>
<table><thead><tr><th>service</th><th>instances</th><th>policy versions</th>
<th>req/s</th><th>success</th><th>p50 ms</th><th>p99 ms</th></tr></thead>
<tbody id="services"><tr><td colspan="7" class="muted">no reports yet</td></tr></tbody></table>
<h2>Policy</h2>
<pre id="policy">(none stored yet)</pre>
<script>
"use strict";
function cell(row, text, cls) {
  const td = document.createElement("td"); td.textContent = text;
  if (cls) td.className = cls; row.appendChild(td);
}
function num(v, digits) { return v === null || v === undefined ? "-" : Number(v).toFixed(digits); }
async function refresh() {
  try {
    const services = await (await fetch("v1/services")).json();
    const body = document.getElementById("services");
    body.replaceChildren();
    for (const s of services.services) {
      const row = document.createElement("tr");
      cell(row, s.service);
      cell(row, String(s.instances.length));
      const stale = s.policy_versions.some(v => v !== services.policy_version);
      cell(row, s.policy_versions.join(", "), stale ? "bad" : "");
      cell(row, num(s.requests_per_second, 1));
      const rate = s.success_rate === null ? "-" : (100 * s.success_rate).toFixed(2) + "%";
      cell(row, rate, s.success_rate !== null && s.success_rate < 0.99 ? "bad" : "");
      cell(row, num(s.p50_ms, 1)); cell(row, num(s.p99_ms, 1));
      body.appendChild(row);
    }
    if (!services.services.length) {
      const row = document.createElement("tr"); cell(row, "no reports yet", "muted");
      row.firstChild.colSpan = 7; body.appendChild(row);
    }
    const response = await fetch("v1/policy");
    if (response.ok) {
      const policy = await response.json();
      document.getElementById("version").textContent = String(policy.version);
      document.getElementById("policy").textContent = JSON.stringify(policy.policy, null, 2);
    }
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    document.getElementById("updated").textContent = "control plane unreachable: " + err;
  }
}
refresh(); setInterval(refresh, 3000);
</script></body></html>
"""
