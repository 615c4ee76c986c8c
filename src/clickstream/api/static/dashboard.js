// The live view's dashboard: reads the push stream and redraws three panels, no library.
// Every id, category and platform comes from events or the catalog: it is only ever set as
// textContent or an attribute value, never parsed as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const MAX_USERS_SHOWN = 600;
const MAX_CATEGORIES_SHOWN = 15;
const SPARKLINE_SECONDS = 600;
const PALETTE = ["#4c9aff", "#3fb950", "#f0883e", "#d2a8ff", "#ff7b72", "#e3b341", "#39c5cf",
                 "#8b949e"];
const history = [];  // [epoch ms, active users], one a snapshot

function apiKey() {
  const match = /(?:^#|&)key=([^&]*)/.exec(location.hash);
  if (match) sessionStorage.setItem("clickstream-key", decodeURIComponent(match[1]));
  return sessionStorage.getItem("clickstream-key");
}

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function html(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function number(n) { return n.toLocaleString("en-US"); }

function duration(seconds) {
  if (seconds % 3600 === 0) return `${seconds / 3600} hour${seconds === 3600 ? "" : "s"}`;
  if (seconds % 60 === 0) return `${seconds / 60} minute${seconds === 60 ? "" : "s"}`;
  return `${seconds} seconds`;
}

function setState(name, label) {
  const node = document.getElementById("state");
  node.className = `state ${name}`;
  node.textContent = label;
}

function drawSparkline(snapshot) {
  const at = Date.parse(snapshot.as_of);
  history.push([at, snapshot.active_users.count]);
  while (history.length && history[0][0] < at - SPARKLINE_SECONDS * 1000) history.shift();
  const svg = document.getElementById("sparkline");
  svg.replaceChildren();
  const first = history[0][0];
  const span = Math.max(at - first, 60_000);
  const top = Math.max(1, ...history.map((p) => p[1]));
  const points = history.map(([t, n]) => [300 - ((at - t) / span) * 300, 58 - (n / top) * 54]);
  const line = points.map((p) => `${p[0].toFixed(1)},${p[1].toFixed(1)}`).join(" ");
  const last = points[points.length - 1];
  svg.append(el("polygon", { points: `${points[0][0].toFixed(1)},60 ${line} ${last[0].toFixed(1)},60` }));
  svg.append(el("polyline", { points: line }));
  const minutes = Math.max(1, Math.round(span / 60_000));
  document.getElementById("sparkline-span").textContent =
    `last ${minutes} minute${minutes === 1 ? "" : "s"} (max ${number(top)})`;
}

function drawUsers(snapshot) {
  document.getElementById("active-count").textContent = number(snapshot.active_users.count);
  const list = document.getElementById("users-list");
  const users = snapshot.active_users.users;
  list.replaceChildren(...users.slice(0, MAX_USERS_SHOWN).map((u) => html("li", {}, u)));
  const more = users.length - MAX_USERS_SHOWN;
  document.getElementById("users-more").textContent =
    more > 0 ? `and ${number(more)} more (see /api/realtime)` : "";
}

function drawCategories(snapshot) {
  const svg = document.getElementById("categories");
  const rows = snapshot.categories.slice(0, MAX_CATEGORIES_SHOWN);
  const width = svg.clientWidth || 400;
  const rowHeight = 24;
  const label = 130;
  const valueWidth = 56;
  svg.setAttribute("viewBox", `0 0 ${width} ${Math.max(rows.length, 1) * rowHeight}`);
  svg.style.height = `${Math.max(rows.length, 1) * rowHeight}px`;
  svg.replaceChildren();
  if (!rows.length) {
    svg.append(el("text", { x: 0, y: rowHeight / 2, class: "value" }, "no views in the window"));
  }
  const top = Math.max(1, ...rows.map((r) => r.views));
  rows.forEach((row, i) => {
    const y = i * rowHeight;
    const g = el("g", { "data-category": row.category, "data-views": row.views });
    const chars = Array.from(row.category);  // code points: never half an emoji
    const name = chars.length > 18 ? chars.slice(0, 17).join("") + "…" : row.category;
    g.append(el("title", {}, `${row.category}: ${number(row.views)} views`));
    g.append(el("text", { x: 0, y: y + rowHeight / 2 }, name));
    const barWidth = Math.max(2, ((width - label - valueWidth) * row.views) / top);
    g.append(el("rect", { x: label, y: y + 4, width: barWidth, height: rowHeight - 8, rx: 3 }));
    g.append(el("text", { x: label + barWidth + 6, y: y + rowHeight / 2, class: "value" },
                number(row.views)));
    svg.append(g);
  });
  const more = snapshot.categories.length - rows.length;
  document.getElementById("categories-more").textContent =
    more > 0 ? `and ${number(more)} more categories` : "";
}

function drawPlatforms(snapshot) {
  const svg = document.getElementById("donut");
  const legend = document.getElementById("platforms");
  const total = snapshot.platforms.reduce((sum, p) => sum + p.views, 0);
  svg.replaceChildren();
  legend.replaceChildren();
  const radius = 70;
  const circumference = 2 * Math.PI * radius;
  svg.append(el("circle", { cx: 100, cy: 100, r: radius, fill: "none", stroke: "#2d3743",
                            "stroke-width": 34 }));
  let offset = 0;
  snapshot.platforms.forEach((p, i) => {
    const color = PALETTE[i % PALETTE.length];
    const length = total ? (p.views / total) * circumference : 0;
    svg.append(el("circle", {
      cx: 100, cy: 100, r: radius, fill: "none", stroke: color, "stroke-width": 34,
      "stroke-dasharray": `${length} ${circumference - length}`,
      "stroke-dashoffset": -offset, transform: "rotate(-90 100 100)",
    }));
    offset += length;
    const item = html("li", { "data-platform": p.platform, "data-views": p.views });
    const swatch = html("span", { class: "swatch" });
    swatch.style.background = color;
    const share = total ? ` (${Math.round((p.views / total) * 100)}%)` : "";
    item.append(swatch, html("span", { class: "name" }, p.platform),
                html("span", { class: "views" }, number(p.views) + share));
    legend.append(item);
  });
  svg.append(el("text", { x: 100, y: 104 }, number(total)));
  svg.append(el("text", { x: 100, y: 124, class: "sub" }, "views"));
}

function draw(snapshot) {
  document.getElementById("window").textContent = duration(snapshot.window_seconds);
  const asOf = document.getElementById("as-of");
  asOf.textContent = new Date(snapshot.as_of).toLocaleTimeString();
  asOf.setAttribute("datetime", snapshot.as_of);
  asOf.title = snapshot.as_of;
  document.getElementById("views-total").textContent = number(snapshot.views);
  document.getElementById("late-count").textContent = number(snapshot.late_events);
  document.getElementById("future-count").textContent = number(snapshot.future_events);
  document.getElementById("duplicate-count").textContent = number(snapshot.duplicates);
  if (snapshot.catching_up) setState("catching-up", "catching up");
  else setState("live", "live");
  drawUsers(snapshot);
  drawSparkline(snapshot);
  drawCategories(snapshot);
  drawPlatforms(snapshot);
  document.body.dataset.asOf = snapshot.as_of;
}

function handle(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (name === "snapshot" && data.length) draw(JSON.parse(data.join("\n")));
}

async function follow() {
  const headers = { Accept: "text/event-stream" };
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  const response = await fetch("/api/realtime/stream", { headers, cache: "no-store" });
  if (!response.ok) throw new Error(`the stream answered ${response.status}`);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      handle(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
    }
  }
}

async function run() {
  for (;;) {
    try {
      await follow();
      setState("offline", "reconnecting");
    } catch (error) {
      setState("offline", `offline: ${error.message}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

run();
