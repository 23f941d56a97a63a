// crawlguard operator dashboard. Plain DOM, no dependencies, CSP-safe: no inline code, no
// eval, no innerHTML with data (every value goes in through textContent or a DOM property).
"use strict";

(() => {
  const KINDS = [
    "ua-missing", "ua-generic", "ua-undescriptive", "ua-mismatch", "ua-impersonation",
    "ua-ambiguous", "robots-disallow", "robots-unreachable", "crawl-delay", "origin-backoff",
    "tenant-limit", "state-unavailable", "destination-forbidden", "request-invalid",
    "store-backlogged", "proxy-busy",
  ];
  const ACTIONS = ["blocked", "logged", "delayed"];
  const MODES = ["enforce", "monitor", "off"];
  // range -> bucket width (ms) and count; buckets are aligned to local clock boundaries
  const RANGES = {
    "1h": { step: 5 * 60e3, n: 12, label: "last hour", per: "5 minutes" },
    "24h": { step: 3600e3, n: 24, label: "last 24 hours", per: "hour" },
    "7d": { step: 6 * 3600e3, n: 28, label: "last 7 days", per: "6 hours" },
    "30d": { step: 86400e3, n: 30, label: "last 30 days", per: "day" },
  };
  const DEFAULT_RANGE = "24h";
  // Finer buckets for data younger than the range: a chart of fresh data gets several bars
  // (at least MIN_SPAN of them) instead of one.
  const FINER = [
    { step: 60e3, per: "minute" },
    { step: 5 * 60e3, per: "5 minutes" },
    { step: 15 * 60e3, per: "15 minutes" },
    { step: 3600e3, per: "hour" },
    { step: 6 * 3600e3, per: "6 hours" },
  ];
  const MIN_SPAN = 6;
  const REFRESH_MS = 30e3;
  const SITES_SHOWN = 10; // busy sites in the panel (GET /api/sites?sort=busy)
  const SITE_TENANTS_SHOWN = 5; // tenants listed per site, most slots first
  const PAGE_SIZE = 50;
  const PALETTE = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
    "#b07aa1", "#edc948", "#ff9da7", "#9c755f", "#8cd17d",
  ];
  const SHA256 = /^[0-9a-f]{64}$/;
  const SVGNS = "http://www.w3.org/2000/svg";

  const nf = new Intl.NumberFormat();
  const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const hmFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
  const dayFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
  const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

  const $ = (sel) => document.querySelector(sel);

  const state = {
    tenant: "",
    kind: "",
    action: "",
    range: DEFAULT_RANGE,
    live: true,
    seq: 0,
    timer: 0,
    win: null,
    cursor: null,
    pages: 0,
    shown: new Set(),
    first: null, // [ts, id] of the newest row shown
    tenants: [],
    tenancy: null, // GET /api/tenancy: {source, rotate_grace, tenants?}; null if unavailable
    colors: new Map(),
    summary: null,
    per: "", // the chart's bucket width in words (finer than the range's for fresh data)
    lastWidth: 0,
    badKind: "", // a ?kind= the page does not know: said, not silently dropped
    expanded: new Set(), // ids of the first rows of the groups the operator opened
    sitesWindow: 60, // seconds GET /api/sites counts slots over
  };

  class AuthError extends Error {}

  // -- small DOM helpers ------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === undefined || value === null || value === false) continue;
        if (key === "class") node.className = value;
        else if (key === "text") node.textContent = String(value);
        else if (key === "dataset") Object.assign(node.dataset, value);
        else if (key in node && typeof node[key] !== "function") node[key] = value;
        else node.setAttribute(key, value === true ? "" : String(value));
      }
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function swatch(tenant) {
    const s = el("span", { class: "swatch", "aria-hidden": "true" });
    s.style.backgroundColor = colorOf(tenant); // CSSOM, allowed by the CSP
    return s;
  }

  function kindCategory(kind) {
    if (kind.startsWith("ua-")) return "cat-ua";
    if (kind.startsWith("robots-")) return "cat-robots";
    if (kind === "crawl-delay" || kind === "origin-backoff" || kind === "tenant-limit") return "cat-pacing";
    return "cat-other";
  }

  function fmt(n) {
    return nf.format(n);
  }

  function parseTs(ts) {
    const d = new Date(ts);
    return Number.isNaN(d.getTime()) ? null : d;
  }

  function ago(date) {
    const s = Math.max(0, (Date.now() - date.getTime()) / 1000);
    if (s < 45) return "just now";
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  function timeEl(ts, text) {
    const d = parseTs(ts);
    if (!d) return el("span", { class: "none", text: ts || "—" });
    return el("time", { dateTime: ts, title: `${fullFmt.format(d)} (${ts})`, text: text(d) });
  }

  function sameDay(a, b) {
    return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
  }

  // -- colours: one per tenant, stable for the page's life -------------------------------

  function colorOf(tenant) {
    let c = state.colors.get(tenant);
    if (!c) {
      const i = state.colors.size;
      c = i < PALETTE.length ? PALETTE[i] : `hsl(${Math.round((i * 137.508) % 360)} 45% 52%)`;
      state.colors.set(tenant, c);
    }
    return c;
  }

  // -- URL <-> filters --------------------------------------------------------------------

  function readUrl() {
    const q = new URLSearchParams(location.search);
    const tenant = (q.get("tenant") || "").slice(0, 200);
    const kind = q.get("kind") || "";
    const action = q.get("action") || "";
    const range = q.get("range") || DEFAULT_RANGE;
    state.tenant = tenant;
    state.kind = KINDS.includes(kind) ? kind : "";
    state.badKind = kind && !KINDS.includes(kind) ? kind.slice(0, 100) : "";
    state.action = ACTIONS.includes(action) ? action : "";
    state.range = Object.hasOwn(RANGES, range) ? range : DEFAULT_RANGE;
  }

  function writeUrl(push) {
    const q = new URLSearchParams();
    if (state.tenant) q.set("tenant", state.tenant);
    if (state.kind) q.set("kind", state.kind);
    if (state.action) q.set("action", state.action);
    if (state.range !== DEFAULT_RANGE) q.set("range", state.range);
    const qs = q.toString();
    const url = location.pathname + (qs ? `?${qs}` : "");
    if (url !== location.pathname + location.search) {
      history[push ? "pushState" : "replaceState"](null, "", url);
    }
  }

  function syncControls() {
    ensureTenantOption(state.tenant);
    $("#f-tenant").value = state.tenant;
    $("#f-kind").value = state.kind;
    $("#f-action").value = state.action;
    const radio = document.getElementById(`r-${state.range}`);
    if (radio) radio.checked = true;
    $("#f-clear").hidden = !(state.tenant || state.kind || state.action);
  }

  function ensureTenantOption(id) {
    if (!id) return;
    const select = $("#f-tenant");
    if ([...select.options].some((o) => o.value === id)) return;
    select.append(el("option", { value: id, text: id }));
  }

  function setFilter(changes) {
    Object.assign(state, changes);
    syncControls();
    writeUrl(true);
    refresh(true);
  }

  // -- the API ----------------------------------------------------------------------------

  function toLogin() {
    const next = location.pathname + location.search;
    location.assign(`/login?next=${encodeURIComponent(next)}`);
  }

  async function api(path, params) {
    const q = new URLSearchParams();
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== undefined && value !== null && value !== "") q.set(key, String(value));
    }
    const qs = q.toString();
    const res = await fetch(path + (qs ? `?${qs}` : ""), {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" },
    });
    if (res.status === 401) {
      toLogin();
      throw new AuthError("login required");
    }
    if (!res.ok) {
      let message = `${res.status} ${res.statusText}`;
      try {
        const body = await res.json();
        if (body && typeof body.error === "string") message = body.error;
      } catch {
        // not JSON: keep the status line
      }
      throw new Error(`${path}: ${message}`);
    }
    return { data: await res.json(), headers: res.headers };
  }

  // A change (POST/PATCH/DELETE) with the session cookie; the browser adds the page's Origin,
  // which the API requires of a cookie-authenticated change.
  async function send(method, path, body) {
    const init = {
      method,
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" },
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    if (res.status === 401) {
      toLogin();
      throw new AuthError("login required");
    }
    let data = null;
    try {
      data = await res.json();
    } catch {
      // not JSON: the status line says it
    }
    if (!res.ok) {
      const message = data && typeof data.error === "string" ? data.error : `${res.status} ${res.statusText}`;
      throw new Error(message);
    }
    return data;
  }

  // Where tenants come from; a failure here only hides the lifecycle actions. A large
  // registry comes truncated: the tenant the filter selects is then asked for by id.
  async function fetchTenancy() {
    try {
      const tenancy = (await api("/api/tenancy")).data;
      const wanted = state.tenant;
      if (tenancy.truncated && wanted && !tenancy.tenants.some((r) => r.id === wanted)) {
        try {
          tenancy.tenants.push((await api(`/api/tenants/${encodeURIComponent(wanted)}`)).data);
        } catch (err) {
          if (err instanceof AuthError) throw err; // not in the registry: no actions for it
        }
      }
      return tenancy;
    } catch (err) {
      if (err instanceof AuthError) throw err;
      return null;
    }
  }

  // The busiest sites now (not the time range: the site budgets' own window). A failure
  // shows in the panel and leaves the rest of the page alone.
  async function fetchSites() {
    try {
      return { data: (await api("/api/sites", { sort: "busy", limit: SITES_SHOWN })).data };
    } catch (err) {
      if (err instanceof AuthError) throw err;
      return { error: String(err.message || err) };
    }
  }

  function windowFor(range) {
    const { step, n } = RANGES[range];
    const offset = -new Date().getTimezoneOffset() * 60e3;
    const until = Math.floor((Date.now() + offset) / step) * step - offset + step;
    return { since: new Date(until - n * step).toISOString(), until: new Date(until).toISOString(), n, step };
  }

  // The range's summary; when its data is younger than the range (it fills fewer than
  // MIN_SPAN buckets, the newest ones), asked again from its first bucket in finer ones.
  async function fetchSummary(win) {
    let res = await api("/api/summary", { ...filterParams(), since: win.since, until: win.until, buckets: win.n });
    let per = RANGES[state.range].per;
    let step = win.step;
    const until = Date.parse(win.until);
    for (let round = 0; round < 3; round++) {
      const counts = res.data.series || [];
      const n = (res.data.buckets || []).length;
      let first = n;
      for (const s of counts) {
        const i = s.counts.findIndex((c) => c > 0);
        if (i >= 0) first = Math.min(first, i);
      }
      const filled = n - first;
      if (!res.data.total || filled >= MIN_SPAN || first >= n) break;
      const start = Date.parse(res.data.buckets[first]);
      const span = until - start;
      const finer = [...FINER].reverse().find((f) => f.step < step && span / f.step >= MIN_SPAN) ||
        FINER.find((f) => f.step < step);
      if (!finer || !Number.isFinite(start)) break;
      const k = Math.min(200, Math.ceil(span / finer.step));
      const since = new Date(until - k * finer.step).toISOString();
      res = await api("/api/summary", { ...filterParams(), since, until: win.until, buckets: k });
      step = finer.step;
      per = finer.per;
    }
    return { ...res, per };
  }

  function filterParams() {
    return { tenant: state.tenant, kind: state.kind, action: state.action };
  }

  // Violations: without an action filter, held (delayed) records are pacing doing its job,
  // not violations; the summary leaves them out, so the table does too.
  async function fetchRows(after, win) {
    const rows = [];
    let cursor = after;
    for (let i = 0; i < 5; i++) {
      const { data, headers } = await api("/api/violations", {
        ...filterParams(),
        since: win.since,
        limit: PAGE_SIZE,
        cursor,
      });
      for (const r of data) if (state.action || r.action !== "delayed") rows.push(r);
      cursor = headers.get("X-Next-Cursor");
      if (!cursor || rows.length > 0) break;
    }
    return { rows, cursor: cursor || null };
  }

  // -- refresh ----------------------------------------------------------------------------

  async function refresh(reset) {
    const seq = ++state.seq;
    const win = windowFor(state.range);
    // once "load more" was used, keep the table's window and only add newer rows on top
    const keepRows = !reset && state.pages > 1 && state.win;
    document.body.classList.add("busy");
    $("#main").setAttribute("aria-busy", "true");
    try {
      const [summary, tenants, page, tenancy, sites] = await Promise.all([
        fetchSummary(win),
        api("/api/tenants", { since: win.since }),
        fetchRows(null, keepRows ? state.win : win),
        fetchTenancy(),
        fetchSites(),
      ]);
      if (seq !== state.seq) return; // a newer refresh started meanwhile
      state.tenancy = tenancy;
      state.tenants = mergeManaged(tenants.data.tenants || [], tenancy);
      for (const t of state.tenants) colorOf(t.id);
      for (const s of summary.data.series || []) colorOf(s.tenant);
      renderTenantOptions();
      state.summary = summary.data;
      state.per = summary.per;
      renderKpis(summary.data);
      renderChart();
      renderKinds(summary.data);
      renderHosts(summary.data);
      renderTenants();
      renderSites(sites);
      if (keepRows) {
        prependRows(page.rows);
      } else {
        state.win = win;
        replaceRows(page.rows, page.cursor);
      }
      showError(null);
      showBadKind();
      $("#updated").textContent = timeFmt.format(new Date());
    } catch (err) {
      if (err instanceof AuthError || seq !== state.seq) return;
      showError(err);
    } finally {
      if (seq === state.seq) {
        document.body.classList.remove("busy");
        $("#main").setAttribute("aria-busy", "false");
        schedule();
      }
    }
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = 0;
    if (state.live && document.visibilityState === "visible") {
      state.timer = setTimeout(() => refresh(false), REFRESH_MS);
    }
  }

  // As the API answers an unknown kind (400 "unknown kind"), but the page still shows
  // something useful: every kind, and says so.
  function showBadKind() {
    const box = $("#kind-warning");
    if (!state.badKind) {
      box.hidden = true;
      return;
    }
    const near = KINDS.filter((k) => k.includes(state.badKind.toLowerCase().replace(/_/g, "-")) ||
      state.badKind.toLowerCase().includes(k));
    box.textContent = `Unknown kind ${JSON.stringify(state.badKind)} in the address: showing all kinds.` +
      (near.length ? ` Did you mean ${near[0]}?` : "") + ` Valid kinds: ${KINDS.join(", ")}.`;
    box.hidden = false;
  }

  function showError(err) {
    const banner = $("#error");
    if (!err) {
      banner.hidden = true;
      banner.textContent = "";
      return;
    }
    banner.textContent = `Could not load the dashboard data: ${err.message || err}. ` +
      (state.live ? "Retrying automatically." : "Press Refresh to retry.");
    banner.hidden = false;
  }

  // -- header, KPIs -----------------------------------------------------------------------

  function renderTenantOptions() {
    const select = $("#f-tenant");
    const ids = state.tenants.map((t) => t.id);
    if (state.tenant && !ids.includes(state.tenant)) ids.push(state.tenant);
    const current = [...select.options].slice(1).map((o) => o.value);
    if (current.join("\n") === ids.join("\n")) return;
    select.replaceChildren(el("option", { value: "", text: "All tenants" }), ...ids.map((id) => el("option", { value: id, text: id })));
    select.value = state.tenant;
  }

  function visibleTenants() {
    return state.tenants.filter((t) => !state.tenant || t.id === state.tenant);
  }

  function renderKpis(summary) {
    const range = RANGES[state.range];
    const tenants = visibleTenants();
    const requests = tenants.reduce((a, t) => a + (t.requests_total || 0), 0);
    const held = tenants.reduce((a, t) => a + (t.held || 0), 0);
    const offenders = new Set((summary.series || []).filter((s) => s.counts.some((n) => n > 0)).map((s) => s.tenant));
    $("#kpi-violations").textContent = fmt(summary.total);
    const scope = [state.kind, state.action === "delayed" ? "held only" : state.action].filter(Boolean);
    $("#kpi-violations-note").textContent = [...scope, range.label].join(", ");
    $("#kpi-requests").textContent = fmt(requests);
    // with a kind filter, the share of that kind: what the other cards count too
    const violationsOf = (t) => (state.kind ? (t.violations || {})[state.kind] || 0 : t.violations_total || 0);
    const allViolations = tenants.reduce((a, t) => a + violationsOf(t), 0);
    $("#kpi-requests-note").textContent = requests > 0
      ? `${((100 * allViolations) / requests).toFixed(allViolations * 1000 < requests ? 2 : 1)}% were ${state.kind ? `${state.kind} violations` : "violations"}`
      : "counted hourly";
    $("#kpi-held").textContent = fmt(held);
    $("#kpi-tenants").textContent = fmt(offenders.size);
    $("#kpi-tenants-note").textContent = `of ${fmt(Math.max(tenants.length, offenders.size))} tenant${tenants.length === 1 ? "" : "s"}`;
  }

  // -- the chart: stacked bars per bucket, one colour per tenant --------------------------

  // y axis: integer ticks at 1, 2 or 5 x 10^k, at most 5 of them above zero
  function yTicks(max) {
    const rough = Math.max(1, max) / 4;
    const mag = 10 ** Math.floor(Math.log10(rough));
    let step = mag;
    for (const f of [1, 2, 5, 10]) {
      if (f * mag >= rough) {
        step = f * mag;
        break;
      }
    }
    step = Math.max(1, Math.round(step));
    const top = Math.max(step, Math.ceil(max / step) * step);
    return { top, step };
  }

  // x axis: label every `stride` buckets, on round local times; strides per bucket width
  const STRIDES = {
    60: [1, 2, 5, 10, 15, 30, 60],
    300: [1, 2, 3, 6, 12],
    900: [1, 2, 4, 8, 16],
    3600: [1, 2, 3, 4, 6, 12, 24],
    21600: [4, 8, 12, 28],
    86400: [1, 2, 3, 5, 7, 10, 15],
  };

  function xLabel(date, stepSeconds) {
    if (stepSeconds >= 86400 || (date.getHours() === 0 && date.getMinutes() === 0)) {
      return dayFmt.format(date);
    }
    return hmFmt.format(date);
  }

  function renderChart() {
    const summary = state.summary;
    if (!summary) return;
    const box = $("#chart");
    const series = summary.series || [];
    const buckets = (summary.buckets || []).map((b) => parseTs(b));
    const n = buckets.length;
    const stepSeconds = Number(summary.bucket_seconds) || 3600;
    const range = RANGES[state.range];
    const fresh = state.per && state.per !== range.per;
    $("#chart-sub").textContent = `${range.label}, per ${state.per || range.per}` +
      (fresh ? ` (all of it since ${hmFmt.format(buckets[0] || new Date())})` : "") +
      (state.kind ? ` · ${state.kind}` : "") +
      (state.action ? ` · ${state.action}` : " · held requests not counted");
    renderLegend(series);
    renderChartTable(series, buckets, stepSeconds);

    const width = Math.max(280, Math.floor(box.clientWidth || 600));
    state.lastWidth = width;
    if (!summary.total) {
      const filtered = state.tenant || state.kind || state.action;
      box.replaceChildren(emptyState("No violations in this range",
        filtered ? "Nothing matches these filters." : "Every request in the window kept to the rules."));
      box.setAttribute("role", "img");
      box.setAttribute("aria-label", `No violations, ${range.label}`);
      return;
    }
    const totals = new Array(n).fill(0);
    for (const s of series) s.counts.forEach((c, i) => { totals[i] += c; });
    const { top: peak, step: tickStep } = yTicks(Math.max(...totals, 1));
    const height = width < 500 ? 200 : 260;
    const m = { top: 10, right: 8, bottom: 26, left: 8 + String(fmt(peak)).length * 7 + 8 };
    const pw = width - m.left - m.right;
    const ph = height - m.top - m.bottom;
    const band = pw / n;
    const barW = Math.max(1, Math.min(band * 0.72, 48));
    const y = (v) => m.top + ph - (v / peak) * ph;

    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, "aria-hidden": "true", focusable: "false" });
    // y grid and labels
    const grid = svg("g", { class: "grid" });
    const axis = svg("g", { class: "axis" });
    for (let v = 0; v <= peak; v += tickStep) {
      const yy = Math.round(y(v)) + 0.5;
      grid.append(svg("line", { x1: m.left, x2: width - m.right, y1: yy, y2: yy }));
      axis.append(svg("text", { x: m.left - 8, y: yy + 4, "text-anchor": "end" }, fmt(v)));
    }
    root.append(grid);
    // bars
    const bars = svg("g", { class: "bars" });
    for (let i = 0; i < n; i++) {
      let acc = 0;
      const x = m.left + band * i + (band - barW) / 2;
      for (const s of series) {
        const c = s.counts[i] || 0;
        if (!c) continue;
        const y0 = y(acc);
        const y1 = y(acc + c);
        acc += c;
        const rect = svg("rect", {
          class: "seg",
          x: x.toFixed(2),
          y: y1.toFixed(2),
          width: barW.toFixed(2),
          height: Math.max(0.5, y0 - y1 - (acc < totals[i] ? 0.75 : 0)).toFixed(2),
          fill: colorOf(s.tenant),
          rx: Math.min(2, barW / 4),
          "data-tenant": s.tenant,
          "data-count": c,
        });
        bars.append(rect);
      }
    }
    root.append(bars);
    // x axis: baseline + as many labels as fit
    axis.append(svg("line", { x1: m.left, x2: width - m.right, y1: m.top + ph + 0.5, y2: m.top + ph + 0.5 }));
    const texts = buckets.map((d) => (d ? xLabel(d, stepSeconds) : ""));
    const textW = (t) => t.length * 6.4 + 10; // 11px system font, generous
    const widest = Math.max(...texts.map(textW));
    const strides = STRIDES[stepSeconds] || [1, 2, 5, 10, 20, 50];
    const stride = strides.find((k) => k * band >= widest) || Math.ceil(widest / band);
    const offset = -new Date().getTimezoneOffset() * 60;
    let right = -Infinity;
    for (let i = 0; i < n; i++) {
      const d = buckets[i];
      if (!d) continue;
      const k = Math.round((d.getTime() / 1000 + offset) / stepSeconds);
      if (k % stride !== 0) continue;
      const cx = m.left + band * i + band / 2;
      const half = textW(texts[i]) / 2;
      // skip a label that would overlap the previous one or run off either edge
      if (cx - half < right || cx - half < 0 || cx + half > width + 4) continue;
      right = cx + half;
      axis.append(svg("text", { x: cx.toFixed(1), y: height - 8, "text-anchor": "middle" }, texts[i]));
    }
    root.append(axis);
    // hover targets, one per bucket
    const hits = svg("g", {});
    for (let i = 0; i < n; i++) {
      const hit = svg("rect", { class: "hit", x: m.left + band * i, y: m.top, width: band, height: ph, "data-i": i });
      hits.append(hit);
    }
    root.append(hits);
    hits.addEventListener("pointermove", (ev) => showTip(ev, series, buckets, stepSeconds, totals));
    hits.addEventListener("pointerleave", hideTip);

    box.replaceChildren(root);
    box.setAttribute("role", "img");
    const parts = series.filter((s) => s.counts.some((c) => c > 0)).map((s) => `${s.tenant} ${fmt(sum(s.counts))}`);
    box.setAttribute("aria-label", `Stacked bar chart of violations per ${state.per || range.per}, ${range.label}: ${fmt(summary.total)} in total; ${parts.join(", ")}. A table with the same data follows.`);
  }

  function sum(list) {
    return list.reduce((a, b) => a + b, 0);
  }

  function showTip(ev, series, buckets, stepSeconds, totals) {
    const target = ev.target;
    if (!(target instanceof SVGElement) || !target.dataset.i) return;
    const i = Number(target.dataset.i);
    const tip = $("#chart-tip");
    const start = buckets[i];
    const end = start ? new Date(start.getTime() + stepSeconds * 1000) : null;
    const title = start
      ? (stepSeconds >= 86400 ? dayFmt.format(start) : `${dayFmt.format(start)} ${hmFmt.format(start)}–${hmFmt.format(end)}`)
      : "";
    const rows = series.filter((s) => s.counts[i] > 0).map((s) =>
      el("div", { class: "tip-row" }, swatch(s.tenant), el("span", { text: s.tenant }), el("strong", { text: fmt(s.counts[i]) })));
    const parts = [el("div", { class: "tip-title", text: title })];
    parts.push(...(rows.length ? rows : [el("div", { text: "No violations" })]));
    if (rows.length > 1) {
      parts.push(el("div", { class: "tip-row tip-total" }, el("span", { text: "Total" }), el("span"), el("strong", { text: fmt(totals[i]) })));
    }
    tip.replaceChildren(...parts);
    for (const h of document.querySelectorAll("#chart .hit.on")) h.classList.remove("on");
    target.classList.add("on");
    tip.hidden = false;
    const card = tip.parentElement.getBoundingClientRect();
    const r = target.getBoundingClientRect();
    const tw = tip.offsetWidth;
    let left = r.left - card.left + r.width / 2 + 12;
    if (left + tw > card.width - 8) left = r.left - card.left + r.width / 2 - tw - 12;
    tip.style.left = `${Math.max(8, left)}px`; // CSSOM, allowed by the CSP
    tip.style.top = `${Math.max(8, ev.clientY - card.top - 20)}px`;
  }

  function hideTip() {
    $("#chart-tip").hidden = true;
    for (const h of document.querySelectorAll("#chart .hit.on")) h.classList.remove("on");
  }

  function renderLegend(series) {
    const list = $("#legend");
    const items = series.map((s) => {
      const total = sum(s.counts);
      const pressed = state.tenant === s.tenant;
      const button = el("button", {
        type: "button",
        class: "legend-item",
        "aria-pressed": pressed ? "true" : "false",
        title: pressed ? "Show all tenants" : `Show only ${s.tenant}`,
        dataset: { tenant: s.tenant, count: String(total) },
      }, swatch(s.tenant), el("span", { class: "name", text: s.tenant }), el("span", { class: total ? "count" : "count zero", text: fmt(total) }));
      button.addEventListener("click", () => setFilter({ tenant: pressed ? "" : s.tenant }));
      button.addEventListener("pointerenter", () => highlight(s.tenant));
      button.addEventListener("pointerleave", () => highlight(null));
      button.addEventListener("focus", () => highlight(s.tenant));
      button.addEventListener("blur", () => highlight(null));
      return el("li", null, button);
    });
    list.replaceChildren(...items);
    list.hidden = items.length === 0;
  }

  function highlight(tenant) {
    const box = $("#chart");
    box.classList.toggle("dim", Boolean(tenant));
    for (const seg of box.querySelectorAll(".seg")) seg.classList.toggle("hl", seg.dataset.tenant === tenant);
  }

  function renderChartTable(series, buckets, stepSeconds) {
    const table = $("#chart-table");
    const head = el("tr", null, el("th", { scope: "col", text: "Bucket start" }),
      ...series.map((s) => el("th", { scope: "col", text: s.tenant })));
    const body = buckets.map((d, i) => el("tr", null,
      el("th", { scope: "row", text: d ? `${dayFmt.format(d)} ${hmFmt.format(d)}` : "" }),
      ...series.map((s) => el("td", { text: fmt(s.counts[i] || 0) }))));
    const foot = el("tr", null, el("th", { scope: "row", text: "Total" }),
      ...series.map((s) => el("td", { text: fmt(sum(s.counts)) })));
    table.replaceChildren(
      el("caption", { text: `Violations per tenant, per ${stepSeconds >= 86400 ? "day" : RANGES[state.range].per}` }),
      el("thead", null, head), el("tbody", null, ...body), el("tfoot", null, foot));
  }

  function emptyState(title, detail) {
    return el("div", { class: "empty" }, el("strong", { text: title }), detail ? el("span", { text: detail }) : null);
  }

  // -- by kind, top hosts -----------------------------------------------------------------

  function barRow(tag, label, count, max, cls, extra) {
    const fill = el("span", { class: "bar-fill" });
    fill.style.width = `${max ? Math.max(1.5, (100 * count) / max) : 0}%`;
    return el(tag, { class: `bar-row ${cls || ""}`.trim(), ...extra },
      el("span", { class: "bar-label", text: label, title: label }),
      el("span", { class: "bar-track", "aria-hidden": "true" }, fill),
      el("span", { class: "bar-count", text: fmt(count) }));
  }

  function renderKinds(summary) {
    const list = $("#kinds");
    const kinds = summary.by_kind || [];
    if (!kinds.length) {
      list.replaceChildren(el("li", null, emptyState("No violations in this range")));
      return;
    }
    const max = Math.max(...kinds.map((k) => k.count));
    list.replaceChildren(...kinds.map((k) => {
      const pressed = state.kind === k.kind;
      const row = barRow("button", k.kind, k.count, max, kindCategory(k.kind), {
        type: "button",
        "aria-pressed": pressed ? "true" : "false",
        title: pressed ? "Show all kinds" : `Show only ${k.kind}`,
        dataset: { kind: k.kind },
      });
      row.addEventListener("click", () => setFilter({ kind: pressed ? "" : k.kind }));
      return el("li", null, row);
    }));
  }

  function renderHosts(summary) {
    const box = $("#hosts");
    const groups = new Map();
    for (const h of summary.top_hosts || []) {
      if (!groups.has(h.tenant)) groups.set(h.tenant, []);
      groups.get(h.tenant).push(h);
    }
    if (!groups.size) {
      box.replaceChildren(emptyState("No violations in this range"));
      return;
    }
    const limit = groups.size === 1 ? 10 : 5;
    const order = [...groups.keys()].sort((a, b) => sum(groups.get(b).map((h) => h.count)) - sum(groups.get(a).map((h) => h.count)) || a.localeCompare(b));
    box.replaceChildren(...order.map((tenant) => {
      const hosts = groups.get(tenant).slice(0, limit);
      const max = Math.max(...hosts.map((h) => h.count));
      return el("div", { class: "host-group", dataset: { tenant } },
        el("h3", null, swatch(tenant), el("span", { class: "name", text: tenant })),
        el("ol", { class: "bars" }, ...hosts.map((h) => el("li", null, barRow("div", h.host, h.count, max, "", {})))));
    }));
    for (const group of box.querySelectorAll(".host-group")) {
      for (const fill of group.querySelectorAll(".bar-fill")) fill.style.backgroundColor = colorOf(group.dataset.tenant);
    }
  }

  // -- tenants ----------------------------------------------------------------------------

  function breakdown(counts, limit) {
    const entries = Object.entries(counts || {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    if (!entries.length) return null;
    const shown = entries.slice(0, limit).map(([k, v]) => `${k} ${fmt(v)}`);
    if (entries.length > limit) shown.push(`+${entries.length - limit} more`);
    return el("span", { class: "breakdown", text: shown.join(" · ") });
  }

  // Store-managed tenants (tenancy.source: store) carry their registry record, and those the
  // counts do not know yet (new, quiet) get a row too, unless the registry is too large to
  // list (then only the one the filter selects).
  function mergeManaged(list, tenancy) {
    if (!tenancy || tenancy.source !== "store" || !Array.isArray(tenancy.tenants)) return list;
    const records = new Map(tenancy.tenants.map((r) => [r.id, r]));
    const out = list.map((t) => {
      const r = records.get(t.id);
      return r ? { ...t, configured: true, mode: r.mode, pacing: r.pacing, managed: r } : t;
    });
    const known = new Set(list.map((t) => t.id));
    for (const r of tenancy.tenants) {
      if (!known.has(r.id) && (!tenancy.truncated || r.id === state.tenant)) {
        out.push({ id: r.id, configured: true, mode: r.mode, pacing: r.pacing, managed: r,
          requests: {}, requests_total: 0, violations: {}, violations_total: 0, held: 0, last_violation: null });
      }
    }
    return out;
  }

  function managedSource() {
    return Boolean(state.tenancy && state.tenancy.source === "store");
  }

  function renderTenants() {
    const body = $("#tenants tbody");
    const tenants = visibleTenants();
    const managed = managedSource();
    $("#tenants .actions-col").hidden = !managed;
    $("#tenants-sub").textContent = `${RANGES[state.range].label}, all kinds` + (state.tenant ? "" : " · select a tenant to filter");
    if (!tenants.length) {
      body.replaceChildren(el("tr", null, el("td", { class: "empty-cell", colSpan: managed ? 7 : 6, text: "No tenants to show" })));
      return;
    }
    body.replaceChildren(...tenants.map((t) => {
      const name = el("button", { type: "button", class: "tenant-link", text: t.id, title: state.tenant === t.id ? "Show all tenants" : `Show only ${t.id}` });
      name.addEventListener("click", () => setFilter({ tenant: state.tenant === t.id ? "" : t.id }));
      const disabled = Boolean(t.managed && t.managed.disabled);
      const mode = disabled ? "disabled" : t.configured ? t.mode || "unknown" : "not configured";
      const modeCls = disabled ? "mode-disabled" : t.configured && MODES.includes(t.mode) ? `mode-${t.mode}` : "mode-unknown";
      const modeCell = el("td", null, el("span", { class: `badge ${modeCls}`, text: mode }),
        t.pacing ? el("span", { class: "breakdown", text: `pacing: ${t.pacing}` }) : null);
      const last = t.last_violation ? timeEl(t.last_violation, (d) => ago(d)) : el("span", { class: "muted", text: "none" });
      return el("tr", { dataset: { tenant: t.id } },
        el("td", null, el("span", { class: "tenant-cell" }, swatch(t.id), name)),
        modeCell,
        el("td", { class: "num" }, el("span", { class: "big", text: fmt(t.requests_total || 0) }), breakdown(t.requests, 3)),
        el("td", { class: "num" }, el("span", { class: "big", text: fmt(t.violations_total || 0) }), breakdown(t.violations, 3)),
        el("td", { class: "num" }, el("span", { class: "big", text: fmt(t.held || 0) })),
        el("td", null, last),
        managed ? actionsCell(t) : null);
    }));
  }

  // -- busy sites: the platform's shared budget per site ----------------------------------

  function rps(value) {
    return `${fmt(Math.round(Number(value) * 100) / 100)}/s`;
  }

  function percent(value) {
    return `${fmt(Math.round(Number(value) * 1000) / 10)}%`;
  }

  function siteRow(s) {
    const budget = typeof s.budget_rps === "number" && s.budget_rps > 0 ? s.budget_rps : null;
    const fill = el("span", { class: "meter-fill" });
    const used = budget ? Math.min(1, Number(s.rate_rps) / budget) : 0;
    fill.style.width = `${Math.round(100 * used)}%`; // CSSOM, allowed by the CSP
    if (used >= 0.95) fill.classList.add("full");
    const rate = el("td", { class: "rate" },
      el("span", { class: "big", text: rps(s.rate_rps) }),
      budget ? el("span", { class: "meter", "aria-hidden": "true" }, fill) : null,
      el("span", { class: "breakdown", text: budget ? `budget ${rps(budget)} · every ${fmt(Math.round(s.interval * 1000) / 1000)} s` : "no pace" }));
    const b = s.backoff || {};
    const backoff = el("td", { class: "backoff" });
    if (typeof b.rate === "number" && b.rate < 1) {
      backoff.append(el("span", { class: "badge slowed", text: `rate ${percent(b.rate)}`, title: "the site's rate after back-off, of its budget" }));
    }
    if (Number(b.paused_for) > 0) backoff.append(el("span", { class: "badge paused", text: `paused ${duration(b.paused_for)}`, title: "no slot until the site's Retry-After has passed" }));
    if (typeof b.capped_rps === "number") backoff.append(el("span", { class: "badge", text: `RateLimit ${rps(b.capped_rps)}`, title: "the site's own RateLimit header caps the rate" }));
    if (!backoff.childNodes.length) backoff.append(el("span", { class: "muted", text: "none" }));
    const cap = s.max_concurrency === null || s.max_concurrency === undefined ? "∞" : fmt(s.max_concurrency);
    const tenants = Array.isArray(s.tenants) ? s.tenants : [];
    const shares = tenants.slice(0, SITE_TENANTS_SHOWN).map((t) => el("li", {
      class: t.waiting ? "share waiting" : "share",
      dataset: { tenant: String(t.tenant) },
      title: `${t.tenant}: ${fmt(t.grants)} slot${t.grants === 1 ? "" : "s"} in the last ${fmt(state.sitesWindow)} s, weight ${fmt(t.weight)}${t.waiting ? ", waiting for its turn" : ""}`,
    }, swatch(String(t.tenant)), el("span", { class: "name", text: t.tenant }), el("span", { class: "pct", text: percent(t.share) }),
    t.waiting ? el("span", { class: "wait", text: "waiting" }) : null));
    const total = Number(s.tenants_total) || tenants.length;
    if (total > shares.length) shares.push(el("li", { class: "muted", text: `+${fmt(total - shares.length)} more` }));
    return el("tr", { dataset: { site: String(s.site) } },
      el("td", null, el("span", { class: "site-name", text: s.site, title: String(s.site) })),
      rate,
      backoff,
      el("td", { class: "num" }, el("span", { class: "big", text: `${fmt(s.in_flight)} / ${cap}` })),
      el("td", { class: "tenants-cell" }, shares.length ? el("ul", { class: "share-list" }, ...shares) : el("span", { class: "muted", text: "none" })));
  }

  function renderSites(result) {
    const body = $("#sites-table tbody");
    const data = result && result.data;
    state.sitesWindow = data && Number(data.window) > 0 ? Number(data.window) : 60;
    $("#sites-sub").textContent = `Slots granted in the last ${fmt(state.sitesWindow)} s against each site's budget, busiest first (top ${SITES_SHOWN})`;
    if (!data) {
      const why = result ? result.error : "no answer";
      body.replaceChildren(el("tr", null, el("td", { class: "empty-cell", colSpan: 5, text: `Site budgets unavailable: ${why}` })));
      return;
    }
    const sites = Array.isArray(data.sites) ? data.sites : [];
    for (const s of sites) for (const t of s.tenants || []) colorOf(String(t.tenant));
    if (!sites.length) {
      body.replaceChildren(el("tr", null, el("td", { class: "empty-cell", colSpan: 5 },
        emptyState("No busy sites", "No tenant was granted a slot in the last minute."))));
      return;
    }
    body.replaceChildren(...sites.map(siteRow));
  }

  // -- tenant lifecycle (tenancy.source: store) -------------------------------------------

  function actionsCell(t) {
    const cell = el("td", { class: "actions" });
    const r = t.managed;
    if (!r) {
      cell.append(el("span", { class: "muted", text: "not managed here", title: "Only tenants in the tenant store can be changed from the dashboard." }));
      return cell;
    }
    if (r.disabled) {
      cell.append(el("span", { class: "muted", text: "disabled", title: "Disabled tenants are kept for their records; their token is refused." }));
      return cell;
    }
    const modeSelect = el("select", { class: "mode-select", "aria-label": `Mode of ${t.id}`, title: `Change the mode of ${t.id}` },
      ...MODES.map((m) => el("option", { value: m, text: m, selected: m === r.mode })));
    modeSelect.value = r.mode;
    modeSelect.addEventListener("change", () => changeMode(r, modeSelect));
    const rotate = el("button", { type: "button", class: "rotate", text: "Rotate token", title: `Issue a new token for ${t.id}` });
    rotate.addEventListener("click", () => rotateToken(r, rotate));
    const disable = el("button", { type: "button", class: "disable danger", text: "Disable", title: `Refuse ${t.id}'s token everywhere` });
    disable.addEventListener("click", () => disableTenant(r, disable));
    cell.append(el("span", { class: "action-row" }, modeSelect, rotate, disable));
    return cell;
  }

  function duration(seconds) {
    const s = Number(seconds) || 0;
    if (s < 120) return `${fmt(Math.round(s * 10) / 10)} s`;
    if (s < 3600) return `${fmt(Math.round(s / 60))} min`;
    if (s < 172800) return `${fmt(Math.round(s / 360) / 10)} h`;
    return `${fmt(Math.round(s / 86400))} days`;
  }

  // A modal yes/no; resolves true only on the confirm button.
  function confirmAction(title, text, okLabel, danger) {
    const dialog = $("#confirm");
    $("#confirm-title").textContent = title;
    $("#confirm-text").textContent = text;
    const ok = $("#confirm-ok");
    ok.textContent = okLabel;
    ok.classList.toggle("danger", Boolean(danger));
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.showModal();
    });
  }

  function notify(message, isError) {
    const box = $("#notice");
    box.textContent = message;
    box.classList.toggle("notice-error", Boolean(isError));
    box.hidden = false;
  }

  async function act(control, work) {
    control.disabled = true;
    try {
      await work();
    } catch (err) {
      if (!(err instanceof AuthError)) notify(String(err.message || err), true);
    } finally {
      control.disabled = false;
      refresh(false);
    }
  }

  async function rotateToken(r, button) {
    const grace = state.tenancy ? duration(state.tenancy.rotate_grace) : "the configured grace";
    const yes = await confirmAction(`Rotate ${r.id}'s token?`,
      `A new token is issued and shown once. The current token keeps working for ${grace}, then every replica refuses it (407).`,
      "Rotate token", false);
    if (!yes) return;
    await act(button, async () => {
      const data = await send("POST", `/api/tenants/${encodeURIComponent(r.id)}/rotate`);
      showToken(r.id, data.token, `The previous token keeps working for ${grace}.`);
      notify(`Rotated ${r.id}'s token.`, false);
    });
  }

  async function changeMode(r, select) {
    const mode = select.value;
    const yes = await confirmAction(`Change ${r.id}'s mode to ${mode}?`,
      mode === "enforce" ? `${r.id}'s violations are refused from now on.`
        : mode === "monitor" ? `${r.id}'s requests are forwarded; violations are only recorded.`
          : `${r.id}'s requests are forwarded and nothing is recorded.`,
      `Set ${mode}`, mode === "off");
    if (!yes) {
      select.value = r.mode;
      return;
    }
    await act(select, async () => {
      await send("PATCH", `/api/tenants/${encodeURIComponent(r.id)}`, { mode });
      notify(`${r.id} is now in ${mode} mode.`, false);
    });
  }

  async function disableTenant(r, button) {
    const yes = await confirmAction(`Disable ${r.id}?`,
      `Every replica refuses ${r.id}'s token (407) within seconds and closes its open tunnels. Its records are kept; this cannot be undone from the dashboard.`,
      "Disable tenant", true);
    if (!yes) return;
    await act(button, async () => {
      await send("DELETE", `/api/tenants/${encodeURIComponent(r.id)}`);
      notify(`${r.id} is disabled.`, false);
    });
  }

  // The new token, once: cleared from the page when the dialog closes.
  function showToken(id, token, note) {
    $("#token-tenant").textContent = id;
    $("#token-value").value = token;
    $("#token-note").textContent = note;
    $("#token-copied").textContent = "";
    $("#token-dialog").showModal();
    $("#token-value").select();
  }

  async function copyToken() {
    const input = $("#token-value");
    try {
      await navigator.clipboard.writeText(input.value);
    } catch {
      input.select(); // no clipboard API (plain http on a remote host): the legacy command
      if (!document.execCommand("copy")) {
        $("#token-copied").textContent = "Copy failed: select the token and copy it by hand.";
        return;
      }
    }
    $("#token-copied").textContent = "Copied to the clipboard.";
  }

  // -- recent violations ------------------------------------------------------------------

  function text(value, cls) {
    if (value === null || value === undefined || value === "") return el("span", { class: "none", text: "—" });
    return el("span", { class: cls, text: value, title: cls ? String(value) : undefined });
  }

  function rowFor(r) {
    const when = parseTs(r.ts);
    const time = el("td", { class: "time" });
    if (when) {
      time.append(el("time", { dateTime: r.ts, title: `${fullFmt.format(when)} (${r.ts})`, text: timeFmt.format(when) }));
      time.append(el("span", { class: "date", text: sameDay(when, new Date()) ? ago(when) : dayFmt.format(when) }));
    } else {
      time.append(text(r.ts));
    }
    const rule = el("td", { class: "rule" });
    if (r.rule) rule.append(el("code", { text: r.rule, title: r.rule }));
    if (r.reason) rule.append(el("span", { class: "reason", text: r.reason, title: r.reason }));
    if (typeof r.robots_sha256 === "string" && SHA256.test(r.robots_sha256)) {
      rule.append(el("a", {
        class: "evidence",
        href: `/api/evidence/${r.robots_sha256}`,
        target: "_blank",
        rel: "noopener noreferrer",
        title: `robots.txt in force (sha256 ${r.robots_sha256})`,
        text: "robots.txt evidence ↗",
      }));
    }
    if (!rule.childNodes.length) rule.append(text(null));
    const delay = el("td", { class: "delay" });
    // the site's Crawl-delay is why a pacing refusal or hold happened; on other kinds (a
    // robots-disallow row carries the robots.txt's value too) it decided nothing
    if (r.crawl_delay !== null && r.crawl_delay !== undefined && r.kind === "crawl-delay") delay.append(el("span", { text: `crawl-delay ${fmt(r.crawl_delay)} s` }));
    if (r.retry_after !== null && r.retry_after !== undefined) delay.append(el("span", { text: `retry-after ${fmt(r.retry_after)} s` }));
    if (r.delay_seconds !== null && r.delay_seconds !== undefined) delay.append(el("span", { text: `held ${fmt(Math.round(r.delay_seconds * 100) / 100)} s` }));
    if (!delay.childNodes.length) delay.append(text(null));
    const kind = String(r.kind || "");
    const action = String(r.action || "");
    const key = JSON.stringify([String(r.tenant), kind, String(r.url), action]);
    return el("tr", { dataset: { id: String(r.id), tenant: String(r.tenant), kind, action, key } },
      time,
      el("td", null, el("span", { class: "tenant-cell" }, swatch(String(r.tenant)), el("span", { text: r.tenant }))),
      el("td", { class: "kind" },
        el("span", { class: `badge ${kindCategory(kind)}`, text: kind }),
        el("span", { class: `badge ${ACTIONS.includes(action) ? action : ""}`, text: action }),
        ...foldBadge(r)),
      el("td", { class: "req" }, el("span", { class: "method", text: r.method }), urlText(r.url)),
      el("td", { class: "ua-cell" }, text(r.user_agent, "ua")),
      rule,
      delay);
  }

  // The URL, cut to two lines (three on a phone); a click or Enter shows all of it.
  function urlText(url) {
    if (url === null || url === undefined || url === "") return text(null);
    const span = el("span", { class: "url", text: url, title: String(url), tabIndex: 0, "aria-expanded": "false" });
    const toggle = () => span.setAttribute("aria-expanded", span.getAttribute("aria-expanded") === "true" ? "false" : "true");
    span.addEventListener("click", toggle);
    span.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        toggle();
      }
    });
    return span;
  }

  // Runs of identical rows (same tenant, kind, URL and action, one after the other) fold
  // into their newest row with a ×N button that shows the others: a crawler hammering one
  // URL is one line, not a screenful. Redone after every change to the table.
  function regroup() {
    const body = $("#violations-table tbody");
    for (const b of body.querySelectorAll(".group-toggle")) b.remove();
    const trs = [...body.querySelectorAll("tr[data-id]")];
    let i = 0;
    while (i < trs.length) {
      const head = trs[i];
      let j = i + 1;
      while (j < trs.length && trs[j].dataset.key === head.dataset.key) j++;
      const n = j - i;
      head.classList.remove("in-group");
      head.hidden = false;
      head.classList.toggle("group-head", n > 1);
      if (n > 1) {
        const open = state.expanded.has(head.dataset.id);
        const button = el("button", {
          type: "button",
          class: "group-toggle",
          text: `×${fmt(n)}`,
          title: `${fmt(n)} identical violations in a row (same tenant, kind, URL and action); select to ${open ? "fold" : "show"} them`,
          "aria-expanded": open ? "true" : "false",
          dataset: { count: String(n) },
        });
        button.addEventListener("click", () => {
          if (state.expanded.has(head.dataset.id)) state.expanded.delete(head.dataset.id);
          else state.expanded.add(head.dataset.id);
          regroup();
        });
        head.querySelector("td.kind").append(button);
        for (let k = i + 1; k < j; k++) {
          trs[k].classList.add("in-group");
          trs[k].hidden = !open;
        }
      }
      i = j;
    }
  }

  // A folded record stands for `count` identical refusals (store.fold_after): say how many.
  function foldBadge(r) {
    const n = Number(r.count);
    if (!Number.isFinite(n) || n <= 1) return [];
    return [el("span", {
      class: "badge folded",
      text: `×${fmt(n)}`,
      title: `${fmt(n)} identical refusals from ${r.first_ts || r.ts} to ${r.last_ts || r.ts}, folded into one record; the URL and User-Agent are one sample`,
    })];
  }

  function replaceRows(rows, cursor) {
    state.shown = new Set(rows.map((r) => r.id));
    state.first = rows.length ? [rows[0].ts, rows[0].id] : null;
    state.cursor = cursor;
    state.pages = 1;
    const body = $("#violations-table tbody");
    if (!rows.length) {
      body.replaceChildren(el("tr", { class: "empty-row" }, el("td", { class: "empty-cell", colSpan: 7 },
        emptyState("No violations in this range", state.tenant || state.kind || state.action ? "Nothing matches these filters." : null))));
    } else {
      body.replaceChildren(...rows.map(rowFor));
    }
    regroup();
    updateMore();
  }

  function appendRows(rows, cursor) {
    const body = $("#violations-table tbody");
    const fresh = rows.filter((r) => !state.shown.has(r.id));
    for (const r of fresh) state.shown.add(r.id);
    body.append(...fresh.map(rowFor));
    state.cursor = cursor;
    state.pages += 1;
    regroup();
    updateMore();
  }

  function newer(r, key) {
    return !key || r.ts > key[0] || (r.ts === key[0] && r.id > key[1]);
  }

  function prependRows(rows) {
    const fresh = rows.filter((r) => !state.shown.has(r.id) && newer(r, state.first));
    if (!fresh.length) return;
    const body = $("#violations-table tbody");
    const emptyRow = body.querySelector(".empty-row");
    if (emptyRow) emptyRow.remove();
    for (const r of fresh) state.shown.add(r.id);
    state.first = [fresh[0].ts, fresh[0].id];
    body.prepend(...fresh.map(rowFor));
    regroup();
    updateMore();
  }

  function updateMore() {
    const n = state.shown.size;
    $("#shown").textContent = n ? `Showing ${fmt(n)} record${n === 1 ? "" : "s"}${state.cursor ? "" : " (all)"}` : "";
    $("#load-more").hidden = !state.cursor;
    $("#violations-sub").textContent = `${RANGES[state.range].label}, newest first` +
      (state.action ? ` · ${state.action} only` : " · held requests not shown");
  }

  async function loadMore() {
    const button = $("#load-more");
    if (!state.cursor || button.disabled) return;
    button.disabled = true;
    button.textContent = "Loading…";
    const seq = state.seq;
    try {
      const page = await fetchRows(state.cursor, state.win);
      if (seq !== state.seq) return; // filters changed meanwhile
      appendRows(page.rows, page.cursor);
    } catch (err) {
      if (!(err instanceof AuthError)) showError(err);
    } finally {
      button.disabled = false;
      button.textContent = "Load more";
    }
  }

  // -- wiring -----------------------------------------------------------------------------

  function setLive(live) {
    state.live = live;
    const button = $("#live");
    button.setAttribute("aria-pressed", live ? "true" : "false");
    $("#live-label").textContent = live ? "Live" : "Paused";
    button.title = live ? "Refreshing every 30 seconds; select to pause" : "Paused; select to refresh automatically";
    if (live) refresh(false);
    else schedule();
  }

  function init() {
    const kindSelect = $("#f-kind");
    for (const k of KINDS) kindSelect.append(el("option", { value: k, text: k }));
    readUrl();
    syncControls();
    writeUrl(false);
    const tz = Intl.DateTimeFormat().resolvedOptions().timeZone;
    $("#tz").textContent = !tz || /^(UTC|Etc\/UTC|Etc\/GMT|GMT)$/.test(tz)
      ? "Times are in UTC."
      : `Times are in ${tz}; hover a time for UTC.`;

    $("#f-tenant").addEventListener("change", (e) => setFilter({ tenant: e.target.value }));
    $("#f-kind").addEventListener("change", (e) => setFilter({ kind: e.target.value }));
    $("#f-action").addEventListener("change", (e) => setFilter({ action: e.target.value }));
    for (const radio of document.querySelectorAll('input[name="range"]')) {
      radio.addEventListener("change", (e) => setFilter({ range: e.target.value }));
    }
    $("#filters").addEventListener("submit", (e) => e.preventDefault());
    $("#f-clear").addEventListener("click", () => setFilter({ tenant: "", kind: "", action: "" }));
    $("#load-more").addEventListener("click", loadMore);
    $("#refresh-now").addEventListener("click", () => refresh(false));
    $("#live").addEventListener("click", () => setLive(!state.live));
    $("#token-copy").addEventListener("click", copyToken);
    $("#token-dialog").addEventListener("close", () => {
      $("#token-value").value = "";
    });
    window.addEventListener("popstate", () => {
      readUrl();
      syncControls();
      refresh(true);
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && state.live) refresh(false);
      else schedule();
    });
    let frame = 0;
    new ResizeObserver(() => {
      cancelAnimationFrame(frame);
      frame = requestAnimationFrame(() => {
        const width = Math.floor($("#chart").clientWidth);
        if (state.summary && width && width !== state.lastWidth) renderChart();
      });
    }).observe($("#chart"));
    refresh(true);
  }

  init();
})();
