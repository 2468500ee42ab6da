// The status page: polls /ui/data and redraws. Every piece of data reaches the DOM as text (textContent,
// attribute values), never as markup; the admin token lives in the password field only, never stored.
"use strict";

const POLL_MS = 1500;
const SVG = "http://www.w3.org/2000/svg";
const SERIES = 8;
let regionOrder = [];

function el(tag, props, children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children || []) node.append(child);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return node;
}

function badge(value) {
  return el("span", { class: "badge state-" + String(value).replace(/[^a-z-]/gi, ""), text: String(value) });
}

function fmt(value, digits, unit) {
  if (value === null || value === undefined) return "–";
  return Number(value).toFixed(digits) + (unit || "");
}

function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleTimeString() : "–";
}

function seriesClass(region) {
  const index = regionOrder.indexOf(region);
  return "s" + ((index < 0 ? 0 : index) % SERIES);
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// The reason the plan gives a region its weight, from the first group that routes to it.
function weightReason(data, region) {
  for (const groups of Object.values(data.services || {})) {
    for (const group of Object.values(groups)) {
      const found = group.weights[region];
      if (found) return found.reason;
    }
  }
  return "";
}

function renderHeader(data) {
  const state = document.getElementById("plane-state");
  state.textContent = data.ready ? "ready" : "not ready";
  state.className = "badge state-" + (data.ready ? "healthy" : "unhealthy");
  document.getElementById("updated").textContent =
    "updated " + when(data.now) + (data.dry_run ? " · dry run" : "") + " · last change " + when(data.last_change);
  const alerts = data.alerts || [];
  document.getElementById("alerts-section").hidden = alerts.length === 0;
  fill(document.getElementById("alerts"), alerts.map((a) =>
    el("li", { text: Object.entries(a).map(([k, v]) => k + ": " + (typeof v === "string" ? v : JSON.stringify(v))).join(" · ") })));
}

function renderRegions(data) {
  const rows = Object.entries(data.regions).map(([name, r]) => {
    const why = [...(r.reasons || [])];
    const reason = weightReason(data, name);
    if (reason) why.push("weight: " + reason);
    return el("tr", { "data-region": name, "data-state": r.state }, [
      el("th", { text: name, scope: "row" }),
      el("td", {}, [badge(r.state)]),
      el("td", { class: "num", text: fmt(r.score, 2) }),
      el("td", { class: "num", text: r.ttft_s === null ? "–" : fmt(r.ttft_s * 1000, 0, " ms") }),
      el("td", { class: "num", text: fmt(r.queue_depth, 0) }),
      el("td", { class: "num", text: r.kv_cache_usage === null ? "–" : fmt(r.kv_cache_usage * 100, 0, " %") }),
      el("td", { text: r.jurisdiction }),
      el("td", { class: "why", text: why.join("; ") }),
    ]);
  });
  fill(document.querySelector("#regions tbody"), rows);
}

function renderGroups(data) {
  const cards = [];
  for (const [service, groups] of Object.entries(data.services || {})) {
    for (const [group, entry] of Object.entries(groups)) {
      const weights = Object.entries(entry.weights);
      const total = weights.reduce((sum, [, w]) => sum + w.weight, 0) || 1;
      const rows = [];
      for (const [region, w] of weights) {
        const bar = el("div", { class: "bar " + "b" + seriesClass(region).slice(1) });
        bar.style.width = (100 * w.weight / total).toFixed(1) + "%";
        rows.push(el("div", { class: "bar-row", "data-region": region, "data-weight": String(w.weight) }, [
          el("span", { text: region }),
          el("div", { class: "bar-track" }, [bar]),
          el("span", { class: "num", text: String(w.weight) }),
          el("span", { class: "bar-reason", text: w.reason }),
        ]));
      }
      cards.push(el("div", { class: "group", "data-group": service + "/" + group }, [
        el("h3", {}, [el("span", { text: service + " / " + group }), badge(entry.mode)]),
        ...rows,
      ]));
    }
  }
  document.getElementById("groups").replaceChildren(...cards);
}

function renderTimeline(data) {
  const samples = data.history.samples;
  const box = document.getElementById("timeline");
  if (samples.length === 0) {
    box.replaceChildren(el("p", { class: "muted", text: "Collecting samples…" }));
    return;
  }
  // Samples are changes: each holds until the next one (or now). The axis spans what was sampled, up to
  // 15 minutes, so a plane started a minute ago still reads clearly.
  const end = Math.max(data.now, samples[samples.length - 1].at + 1);
  const start = Math.min(data.history.start, end - 1);
  const next = (i) => (i + 1 < samples.length ? samples[i + 1].at : end);
  const width = 900, left = 90, right = 10, plotW = width - left - right;
  const x = (t) => left + plotW * Math.max(0, (t - start)) / (end - start);
  const changes = [];
  for (let i = 1; i < samples.length; i++) {
    if (JSON.stringify(samples[i].weights) !== JSON.stringify(samples[i - 1].weights)) changes.push(samples[i].at);
  }
  for (const entry of data.audit || []) {
    if (entry.event === "plan_changed" && entry.ts >= start) changes.push(entry.ts);
  }
  const regions = Object.keys(data.regions);
  const out = [];
  for (const key of Object.keys(samples[samples.length - 1].weights)) {
    const weightH = 80, rowH = 12, top = 14;
    const height = top + weightH + 8 + regions.length * rowH + 16;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "timeline of " + key });
    const title = svg("text", { x: left, y: 10 });
    title.textContent = key;
    chart.append(title);
    const max = Math.max(100, ...samples.map((s) => Math.max(0, ...Object.values(s.weights[key] || {}))));
    const y = (w) => top + weightH - weightH * w / max;
    chart.append(svg("line", { class: "axis", x1: left, x2: width - right, y1: y(0), y2: y(0) }));
    for (const region of regions) {
      const points = [];
      samples.forEach((s, i) => {
        if (!s.weights[key] || !(region in s.weights[key])) return;
        const level = y(s.weights[key][region]).toFixed(1);
        points.push(`${x(s.at).toFixed(1)},${level}`, `${x(next(i)).toFixed(1)},${level}`);
      });
      if (points.length) {
        chart.append(svg("polyline", { class: "line " + seriesClass(region), points: points.join(" ") }));
      }
    }
    regions.forEach((region, i) => {
      const rowY = top + weightH + 8 + i * rowH;
      const label = svg("text", { x: 0, y: rowY + 9 });
      label.textContent = region;
      chart.append(label);
      let runStart = 0;
      for (let j = 1; j <= samples.length; j++) {
        const state = samples[runStart].health[region] || "unknown";
        if (j < samples.length && (samples[j].health[region] || "unknown") === state) continue;
        const x1 = x(samples[runStart].at), x2 = x(j < samples.length ? samples[j].at : end);
        chart.append(svg("rect", { class: "h-" + state, x: x1, y: rowY, width: Math.max(1, x2 - x1), height: rowH - 2 }));
        runStart = j;
      }
    });
    for (const at of changes) {
      if (at >= start) chart.append(svg("line", { class: "mark", x1: x(at), x2: x(at), y1: top, y2: height - 14 }));
    }
    for (const [label, t] of [["-" + Math.round((end - start) / 60 * 10) / 10 + " min", start], ["now", end]]) {
      const tick = svg("text", { x: t === end ? width - right - 20 : left, y: height - 2 });
      tick.textContent = label;
      chart.append(tick);
    }
    out.push(chart);
  }
  const legend = el("div", { class: "legend" }, regions.map((r) =>
    el("span", {}, [el("span", { class: "swatch b" + seriesClass(r).slice(1) }), document.createTextNode(r)])));
  box.replaceChildren(legend, ...out);
}

function renderOverrides(data) {
  const overrides = data.overrides || [];
  document.getElementById("no-overrides").hidden = overrides.length > 0;
  fill(document.querySelector("#overrides tbody"), overrides.map((o) => {
    const expire = el("button", { type: "button", class: "secondary", text: "Expire" });
    expire.addEventListener("click", () => removeOverride(o.region, o.service));
    return el("tr", { "data-region": o.region, "data-action": o.action }, [
      el("td", { text: o.region }),
      el("td", { text: o.action + (o.weight !== null && o.weight !== undefined ? " " + o.weight : "") }),
      el("td", { text: o.service || "all" }),
      el("td", { class: "num", text: when(o.until) + " (" + Math.max(0, Math.round(o.until - data.now)) + " s)" }),
      el("td", { class: "reason", text: o.reason || "" }),
      el("td", {}, [expire]),
    ]);
  }));
  const select = document.getElementById("form-region");
  const names = Object.keys(data.regions);
  if (select.options.length !== names.length) {
    const chosen = select.value;
    select.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
    if (names.includes(chosen)) select.value = chosen;
  }
}

function renderSync(data) {
  const rows = [];
  for (const [region, r] of Object.entries(data.regions)) {
    for (const [model, m] of Object.entries(r.models || {})) {
      rows.push(el("tr", { "data-region": region, "data-model": model }, [
        el("td", { text: region }), el("td", { text: model }), el("td", { text: m.wanted }),
        el("td", { text: m.current || "–" }), el("td", {}, [badge(m.verified ? "true" : "false")]),
        el("td", { text: [m.why_not, m.last_error].filter(Boolean).join("; ") }),
      ]));
    }
  }
  document.getElementById("sync-section").hidden = rows.length === 0;
  fill(document.querySelector("#sync tbody"), rows);
}

function renderCoordination(data) {
  const c = data.coordination;
  document.getElementById("coord-section").hidden = !c;
  if (!c) return;
  const facts = [
    ["This replica", c.replica], ["Role", c.role], ["Leader", c.leader || "none"], ["Epoch", c.epoch ?? "–"],
    ["Frozen", c.frozen || "no"], ["etcd", c.etcd || "ok"],
    ["Quorum", c.quorum ? `${c.quorum.live.length} live, ${c.quorum.needed} needed` : "–"],
  ];
  document.getElementById("coord").replaceChildren(...facts.flatMap(([k, v]) =>
    [el("dt", { text: k }), el("dd", {}, k === "Role" ? [badge(v)] : [document.createTextNode(String(v))])]));
  fill(document.querySelector("#votes tbody"), Object.entries(c.votes || {}).map(([name, v]) =>
    el("tr", {}, [
      el("td", { text: name }), el("td", { class: "num", text: fmt(v.age, 1, " s") }),
      el("td", { text: Object.entries(v.states).map(([r, s]) => r + " " + s).join(", ") }),
    ])));
}

function renderDrill(data) {
  const d = data.last_drill;
  document.getElementById("drill-section").hidden = !d;
  if (!d) return;
  const facts = [["Drill", d.drill], ["Result", d.passed ? "passed" : "failed"], ["Finished", when(d.finished_at)],
    ["Report", d.report || "–"]];
  document.getElementById("drill").replaceChildren(...facts.flatMap(([k, v]) =>
    [el("dt", { text: k }), el("dd", {}, k === "Result" ? [badge(v)] : [document.createTextNode(v)])]));
  fill(document.getElementById("drill-expectations"), d.expectations.map((e) =>
    el("li", {}, [badge(e.passed ? "passed" : "failed"), document.createTextNode(" " + e.name + (e.message ? ": " + e.message : ""))])));
}

function renderAudit(data) {
  fill(document.getElementById("audit"), (data.audit || []).map((entry) =>
    el("li", { "data-event": entry.event }, [
      el("span", { class: "muted", text: when(entry.ts) + " " }),
      el("strong", { text: entry.event }),
      el("ul", {}, entry.details.map((d) => el("li", { text: d }))),
    ])));
}

function render(data) {
  regionOrder = Object.keys(data.regions);
  renderHeader(data);
  renderRegions(data);
  renderGroups(data);
  renderTimeline(data);
  renderOverrides(data);
  renderSync(data);
  renderCoordination(data);
  renderDrill(data);
  renderAudit(data);
}

async function poll() {
  try {
    const response = await fetch("/ui/data", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (error) {
    const state = document.getElementById("plane-state");
    state.textContent = "unreachable";
    state.className = "badge state-error";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function say(text, ok) {
  const message = document.getElementById("form-message");
  message.textContent = text;
  message.className = ok ? "ok" : "error";
}

async function send(method, path, body) {
  const token = document.getElementById("token").value.trim();
  const headers = body ? { "Content-Type": "application/json" } : {};
  if (token) headers.Authorization = "Bearer " + token;
  try {
    const response = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      say("Refused (" + response.status + "): " + (answer.error || response.statusText), false);
      return;
    }
    say("Done: " + method + " " + path, true);
  } catch (error) {
    say("Failed: " + error, false);
  }
}

function removeOverride(region, service) {
  const query = service ? "?service=" + encodeURIComponent(service) : "";
  return send("DELETE", "/overrides/" + encodeURIComponent(region) + query);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("override-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const body = {
      region: document.getElementById("form-region").value,
      action: "drain",
      duration: Number(document.getElementById("form-duration").value),
    };
    const reason = document.getElementById("form-reason").value;
    if (reason) body.reason = reason;
    send("POST", "/overrides", body);
  });
  document.getElementById("undrain").addEventListener("click", () =>
    removeOverride(document.getElementById("form-region").value, null));
  poll();
});
