// Operator dashboard: reads /v1/admin/* with an admin token kept in this variable only.
// Everything shown that comes from users is inserted with textContent, never as HTML.
"use strict";

(function () {
  let token = null;
  let timers = [];
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);

  // --- auth -----------------------------------------------------------------------------

  function tokenFromFragment() {
    const match = /(?:^|&)token=([^&]+)/.exec(location.hash.slice(1));
    if (!match) return null;
    // The token must not stay in the address bar (screenshots, shoulder surfing, history).
    history.replaceState(null, "", location.pathname + location.search);
    return decodeURIComponent(match[1]);
  }

  async function api(path) {
    const response = await fetch(path, { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
    if (response.status === 401 || response.status === 403) {
      const body = await response.json().catch(() => ({}));
      throw Object.assign(new Error(body.detail || "not allowed"), { auth: true });
    }
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response;
  }

  function signOut(message) {
    token = null;
    timers.forEach(clearInterval);
    timers = [];
    $("main").hidden = true;
    $("login").hidden = false;
    $("csv").disabled = true;
    $("status").textContent = "not signed in";
    $("login-error").textContent = message || "";
  }

  // --- formatting -----------------------------------------------------------------------

  const pct = (x) => (x === null || x === undefined ? "–" : (x * 100).toFixed(1) + "%");
  const secs = (ms) => (ms === null || ms === undefined ? "–" : (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s");
  const age = (s) => (s === null ? "–" : s < 120 ? s + " s" : s < 7200 ? Math.round(s / 60) + " min" : (s / 3600).toFixed(1) + " h");
  const when = (ts) => new Date(ts * 1000).toLocaleString();

  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function fill(tableId, items, render) {
    const body = $(tableId).querySelector("tbody");
    body.replaceChildren();
    if (!items.length) {
      const row = body.insertRow();
      const td = cell(row, "none", "muted");
      td.colSpan = $(tableId).querySelectorAll("th").length;
      return;
    }
    items.forEach((item) => render(body.insertRow(), item));
  }

  // --- charts (hand-drawn SVG) ----------------------------------------------------------

  function el(name, attrs, parent, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    return [1, 2, 2.5, 5, 10].map((m) => m * p).find((m) => m >= v);
  }

  function lineChart(svg, points, series, opts) {
    svg.replaceChildren();
    const W = 640, H = 220, L = 44, R = 12, T = 18, B = 28;
    const values = [];
    points.forEach((p) => series.forEach((s) => { const v = s.value(p); if (v !== null) values.push(v); }));
    svg.dataset.points = String(values.length);
    el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }, svg);
    el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }, svg);
    if (!values.length || points.length === 0) {
      el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, svg, "no starts in this range yet");
      return;
    }
    const ymax = opts.ymax || niceMax(Math.max(...values));
    const t0 = points[0].t, t1 = points[points.length - 1].t;
    const x = (t) => L + (t1 === t0 ? (W - L - R) / 2 : ((t - t0) / (t1 - t0)) * (W - L - R));
    const y = (v) => H - B - (v / ymax) * (H - T - B);
    [0, 0.5, 1].forEach((f) => {
      el("line", { x1: L, y1: y(ymax * f), x2: W - R, y2: y(ymax * f), class: "axis" }, svg);
      el("text", { x: L - 6, y: y(ymax * f) + 3, "text-anchor": "end", class: "tick" }, svg, opts.format(ymax * f));
    });
    const hourly = points.length > 1 && points[1].t - points[0].t < 86400;
    const label = (t) => { const d = new Date(t * 1000); return hourly ? d.getHours() + ":00" : (d.getMonth() + 1) + "/" + d.getDate(); };
    [0, Math.floor((points.length - 1) / 2), points.length - 1].forEach((i) => {
      el("text", { x: x(points[i].t), y: H - 8, "text-anchor": "middle", class: "tick" }, svg, label(points[i].t));
    });
    series.forEach((s, n) => {
      let d = "";
      let pen = "M";
      points.forEach((p) => {
        const v = s.value(p);
        if (v === null) return;  // an hour without starts: the line goes on to the next
        d += pen + x(p.t).toFixed(1) + "," + y(v).toFixed(1) + " ";
        pen = "L";
        el("circle", { cx: x(p.t).toFixed(1), cy: y(v).toFixed(1), r: 3, class: "dot-" + s.cls }, svg);
      });
      if (d) el("path", { d: d.trim(), class: s.cls }, svg);
      el("text", { x: W - R - 110 + n * 55, y: 12, class: "legend", fill: "currentColor" }, svg, "● " + s.name).classList.add("dot-" + s.cls);
    });
  }

  // --- views ----------------------------------------------------------------------------

  async function loadOverview() {
    const o = await (await api("/v1/admin/overview")).json();
    $("k-sessions").textContent = o.sessions.active;
    $("k-states").textContent = Object.entries(o.sessions.by_state).map(([k, v]) => v + " " + k).join(", ");
    const lc = o.lifecycle;
    $("k-asleep").textContent = lc.sleeping + " / " + lc.hibernated;
    $("k-asleep-sub").textContent = lc.recent_wakes.length + " recent wakes · " + lc.recent_resumes.length + " recent resumes";
    fill("wakes", lc.recent_wakes, (row, w) => {
      cell(row, when(w.at));
      cell(row, w.session);
      cell(row, w.trigger);
      cell(row, w.ms + " ms");
    });
    fill("resumes", lc.recent_resumes, (row, r) => {
      cell(row, when(r.at));
      cell(row, r.session);
      cell(row, r.user);
      cell(row, r.trigger);
    });
    $("k-pool").textContent = o.pool.pooled + " / " + o.pool.target;
    $("k-pool-sub").textContent = "warm / target · " + o.pool.reserved + " kept for their last user · " +
      o.pool.hits + " hits, " + o.pool.reserved_hits + " reserved hits, " + o.pool.misses + " misses";
    fill("hosts", o.hosts, (row, h) => {
      const state = h.up ? (h.drained ? "drained" : "up") : "down";
      cell(row, h.name);
      const s = cell(row, state + (h.up ? "" : " (" + h.reason + ")"), "state-" + state);
      s.title = h.reason || "";
      const td = cell(row, "");
      const bar = document.createElement("span");
      bar.className = "bar" + (h.load > 0.85 ? " high" : "");
      const fillBar = document.createElement("span");
      fillBar.style.width = Math.min(100, Math.round(h.load * 100)) + "%";
      bar.appendChild(fillBar);
      td.appendChild(bar);
      td.appendChild(document.createTextNode(h.capacity ? Math.round(h.load * 100) + "%" : "?"));
      cell(row, h.containers + " / " + (h.capacity || "?"));
      cell(row, h.pooled);
      cell(row, h.reserved);
      cell(row, h.sessions);
    });
    fill("failures", o.failures, (row, f) => {
      cell(row, when(f.ts));
      cell(row, f.user + " / " + f.project);
      cell(row, f.host || "–");
      const r = cell(row, f.reason || f.outcome, "reason");
      r.title = f.detail || "";
    });
    fill("sessions", o.sessions.items, (row, s) => {
      cell(row, s.id);
      cell(row, s.user);
      cell(row, s.project_id);
      cell(row, s.state);
      cell(row, s.host || "–");
      cell(row, s.from_pool === null ? "–" : s.from_pool ? "warm" : "new");
      cell(row, age(s.age_s));
      cell(row, s.shares ? s.shares + " (" + s.share_views + " opened)" : "–");
    });
    $("status").textContent = "live · updated " + new Date().toLocaleTimeString();
  }

  async function loadStats() {
    const days = $("days").value;
    const s = await (await api("/v1/admin/stats?days=" + days)).json();
    $("k-success").textContent = pct(s.success_rate);
    $("k-starts").textContent = s.starts + " starts · error rate " + pct(s.error_rate);
    $("k-p50").textContent = secs(s.phases.total.p50_ms);
    $("k-p95").textContent = "p95 " + secs(s.phases.total.p95_ms);
    $("k-hit").textContent = pct(s.pool_hit_rate);
    $("k-skip").textContent = "install skipped " + pct(s.install_skip_rate);
    fill("phases", Object.entries(s.phases), (row, [name, p]) => {
      cell(row, name);
      cell(row, p.count);
      cell(row, secs(p.p50_ms));
      cell(row, secs(p.p95_ms));
    });
    lineChart($("chart-times"), s.series, [
      { name: "p50", cls: "p50", value: (p) => (p.p50_ms === null ? null : p.p50_ms / 1000) },
      { name: "p95", cls: "p95", value: (p) => (p.p95_ms === null ? null : p.p95_ms / 1000) },
    ], { format: (v) => v.toFixed(v < 10 ? 1 : 0) });
    lineChart($("chart-success"), s.series, [
      { name: "success", cls: "rate", value: (p) => (p.success_rate === null ? null : p.success_rate * 100) },
    ], { ymax: 100, format: (v) => v.toFixed(0) });
    const c = await (await api("/v1/admin/costs?days=" + days)).json();
    $("k-cost").textContent = c.cost === null ? Math.round(c.container_seconds / 3600) + " h" : c.cost.toFixed(2);
    $("k-cost-sub").textContent = (c.cost === null ? "container hours (no price set)" : Math.round(c.container_seconds / 3600) + " container hours") + (c.budget_daily ? " · budget " + c.budget_daily + "/day" : "");
  }

  async function downloadCsv() {
    const response = await api("/v1/admin/records.csv?days=" + $("days").value);
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    link.href = url;
    link.download = "preview-records.csv";
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function guard(work) {
    return () => work().catch((err) => {
      if (err.auth) signOut(err.message);
      else $("status").textContent = "error: " + err.message;
    });
  }

  async function open(candidate) {
    timers.forEach(clearInterval);
    timers = [];
    token = candidate;
    try {
      await loadOverview();
      await loadStats();
    } catch (err) {
      signOut(err.message);
      return;
    }
    $("login").hidden = true;
    $("main").hidden = false;
    $("csv").disabled = false;
    document.body.dataset.ready = "1";
    timers.push(setInterval(guard(loadOverview), 5000));
    timers.push(setInterval(guard(loadStats), 30000));
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      $("token").value = "";
      if (value) open(value);
    });
    $("days").addEventListener("change", guard(loadStats));
    $("csv").addEventListener("click", guard(downloadCsv));
    // A link opened in this tab again changes only the fragment: no new page load.
    window.addEventListener("hashchange", () => {
      const fromUrl = tokenFromFragment();
      if (fromUrl) open(fromUrl);
    });
    const fromUrl = tokenFromFragment();
    if (fromUrl) open(fromUrl);
    else signOut("");
  });
})();
