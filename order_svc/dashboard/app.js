// The saga dashboard: plain JavaScript, no build step. Data comes from the order
// service's own API (orders, sagas, the live event stream) and, for stock and
// balances, from its /dashboard/api proxy to the inventory and payment services.
"use strict";

const LANES = ["order_svc", "inventory_svc", "payment_svc"];
const state = { status: "", selected: null, refreshTimer: null };

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const child of children) node.append(child);
  return node;
};
const svg = (tag, attrs = {}, text) => {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
};

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail ? JSON.stringify(body.detail) : response.statusText);
  return body;
}

function age(iso) {
  const s = (Date.now() - new Date(iso).getTime()) / 1000;
  return s < 60 ? `${s.toFixed(0)}s` : s < 3600 ? `${(s / 60).toFixed(0)}m` : `${(s / 3600).toFixed(1)}h`;
}

async function loadCounts() {
  const counts = await getJSON("/dashboard/api/summary");
  const box = $("counts");
  box.replaceChildren();
  const label = { PENDING: "in flight", APPROVED: "approved", REJECTED: "rejected", CANCELLED: "cancelled" };
  for (const status of ["PENDING", "APPROVED", "REJECTED", "CANCELLED"]) {
    box.append(el("span", { class: status, id: `count-${status}` }, el("b", {}, String(counts[status] || 0)), ` ${label[status]}`));
  }
}

async function loadOrders() {
  const query = state.status ? `?status=${state.status}&limit=60` : "?limit=60";
  const orders = await getJSON(`/orders${query}`);
  const body = $("orders");
  body.replaceChildren();
  for (const o of orders) {
    const row = el(
      "tr",
      { "data-order": o.order_id },
      el("td", { class: "mono" }, o.order_id.slice(0, 8)),
      el("td", {}, o.customer_id),
      el("td", { class: `status ${o.status}` }, o.status),
      el("td", {}, o.reason || ""),
      el("td", {}, o.total || ""),
      el("td", {}, age(o.created_at)),
    );
    if (o.order_id === state.selected) row.classList.add("selected");
    row.addEventListener("click", () => select(o.order_id));
    body.append(row);
  }
}

async function loadStock() {
  const [stock, balances] = await Promise.all([
    getJSON("/dashboard/api/stock").catch(() => []),
    getJSON("/dashboard/api/balances").catch(() => []),
  ]);
  const s = $("stock");
  s.replaceChildren(
    ...stock.map((p) =>
      el("tr", { "data-product": p.product_id }, el("td", {}, p.product_id), el("td", {}, p.price),
        el("td", {}, String(p.available)), el("td", {}, String(p.reserved)), el("td", {}, String(p.sold))),
    ),
  );
  const b = $("balances");
  b.replaceChildren(
    ...balances.map((a) => el("tr", { "data-customer": a.customer_id }, el("td", {}, a.customer_id), el("td", {}, a.balance))),
  );
  // Rebuild the product choices only when they changed: a rebuild on every refresh
  // would close a dropdown the user has open.
  const select = $("place-product");
  const labels = stock.map((p) => `${p.product_id} (${p.price})`);
  if (labels.join("\n") !== [...select.options].map((o) => o.textContent).join("\n")) {
    const current = select.value;
    select.replaceChildren(...stock.map((p, i) => el("option", { value: p.product_id }, labels[i])));
    if (current) select.value = current;
  }
}

async function select(orderId) {
  state.selected = orderId;
  for (const row of document.querySelectorAll("#orders tr")) {
    row.classList.toggle("selected", row.dataset.order === orderId);
  }
  await loadSaga();
}

async function loadSaga() {
  if (!state.selected) return;
  const saga = await getJSON(`/orders/${state.selected}/saga`);
  const box = $("saga");
  box.classList.remove("empty");
  box.replaceChildren();
  const why = saga.explanation;
  box.append(
    el("h2", {}, "Saga ", el("span", { class: "mono" }, saga.order_id), " ",
      el("span", { id: "saga-status", class: `status ${saga.status}` }, saga.status)),
    el("div", { class: "verdict", id: "saga-verdict" }, why.verdict),
  );
  for (const c of why.compensations) {
    box.append(el("div", { class: `comp ${c.done_by ? "done" : "owed"}` },
      `${c.done_by ? "✓" : "✗ still owed:"} ${c.action} (for ${c.because_of}${c.done_by ? ": " + c.done_by : ""})`));
  }
  const compensated = { true: "everything owed was compensated", false: "compensation still owed", null: "saga in flight" };
  box.append(el("div", { class: "legend", id: "saga-compensated" }, `${compensated[String(why.compensated)]} · trace ${saga.trace_id || "—"}`));
  box.append(swimlanes(saga.events));
  box.append(el("div", { class: "legend" }, "● step   ", el("span", { style: "color: var(--bad)" }, "● compensation"), "   arrows: which event caused which"));
  const table = el("table", { class: "events" }, el("thead", {}, el("tr", {}, el("th", {}, "+ms"), el("th", {}, "event"), el("th", {}, "service"), el("th", {}, "detail"))));
  const t0 = saga.events.length ? new Date(saga.events[0].occurred_at).getTime() : 0;
  const body = el("tbody");
  for (const e of saga.events) {
    const detail = Object.entries(e.payload).filter(([k]) => ["reason", "total", "amount", "product_ids"].includes(k))
      .map(([k, v]) => `${k}: ${v}`).join(", ");
    body.append(el("tr", { class: e.compensating ? "REJECTED" : "" },
      el("td", {}, String(new Date(e.occurred_at).getTime() - t0)), el("td", {}, e.event_type),
      el("td", {}, e.producer), el("td", {}, detail)));
  }
  table.append(body);
  box.append(table);
}

function swimlanes(events) {
  const W = 860, H = 250, left = 110, right = 70, top = 40, laneGap = 70;
  const root = svg("svg", { class: "lanes", id: "swimlanes", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "xMinYMin meet" });
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "6", markerHeight: "6", orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#8c959f" }));
  defs.append(marker);
  root.append(defs);
  LANES.forEach((lane, i) => {
    const y = top + i * laneGap;
    root.append(svg("line", { class: "lane-line", x1: left, x2: W - right, y1: y, y2: y }));
    root.append(svg("text", { class: "lane-label", x: 8, y: y + 4 }, lane));
  });
  if (!events.length) return root;
  const times = events.map((e) => new Date(e.occurred_at).getTime());
  const t0 = Math.min(...times), span = Math.max(1, Math.max(...times) - t0);
  const x = (t) => left + ((t - t0) / span) * (W - left - right);
  const pos = {};
  events.forEach((e, i) => {
    const lane = Math.max(0, LANES.indexOf(e.producer));
    pos[e.event_id] = { x: x(times[i]), y: top + lane * laneGap };
  });
  for (const e of events) {
    const from = pos[e.causation_id], to = pos[e.event_id];
    if (!from || !to) continue;
    const mid = (from.x + to.x) / 2;
    root.append(svg("path", { class: "cause", d: `M ${from.x} ${from.y} C ${mid} ${from.y}, ${mid} ${to.y}, ${to.x - 6} ${to.y}` }));
  }
  events.forEach((e, i) => {
    const p = pos[e.event_id];
    const g = svg("g", { class: `event${e.compensating ? " compensating" : ""}`, "data-type": e.event_type });
    if (e.compensating) g.append(svg("circle", { class: "ring", cx: p.x, cy: p.y, r: 10 }));
    g.append(svg("circle", { cx: p.x, cy: p.y, r: 6 }));
    const above = i % 2 === 0;
    g.append(svg("text", { x: p.x, y: p.y + (above ? -12 : 20), "text-anchor": "middle" }, e.event_type));
    g.append(svg("title", {}, `${e.event_type} · ${e.producer} · +${times[i] - t0} ms`));
    root.append(g);
  });
  for (let k = 0; k <= 4; k++) {
    const t = (span * k) / 4;
    root.append(svg("text", { class: "tick", x: x(t0 + t), y: H - 8, "text-anchor": "middle" }, `${t.toFixed(0)} ms`));
  }
  return root;
}

async function refresh() {
  await Promise.all([loadCounts(), loadOrders(), loadStock(), loadSaga()]).catch((err) => console.error(err));
}

function scheduleRefresh() {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = null;
    refresh();
  }, 300);
}

function connect() {
  const live = $("live");
  const source = new EventSource("/saga-events/stream");
  source.onopen = () => { live.className = "live on"; live.textContent = "● live"; };
  source.onerror = () => { live.className = "live off"; live.textContent = "● reconnecting"; };
  source.addEventListener("saga-event", scheduleRefresh);
}

document.querySelectorAll("#filters button").forEach((button) =>
  button.addEventListener("click", () => {
    document.querySelectorAll("#filters button").forEach((b) => b.classList.toggle("on", b === button));
    state.status = button.dataset.status;
    loadOrders();
  }),
);

$("place").addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = $("place-result");
  try {
    const order = await getJSON("/orders", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": crypto.randomUUID() },
      body: JSON.stringify({
        customer_id: $("place-customer").value,
        items: [{ product_id: $("place-product").value, quantity: Number($("place-qty").value) }],
      }),
    });
    result.textContent = `placed ${order.order_id.slice(0, 8)}`;
    await select(order.order_id);
    await loadOrders();
  } catch (err) {
    result.textContent = `refused: ${err.message}`;
  }
});

refresh();
connect();
setInterval(refresh, 5000); // also catches changes that record no event (stock edits)
