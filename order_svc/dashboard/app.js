// The saga dashboard: plain JavaScript, no build step. Data comes from the order
// service's own API (orders, sagas, the live event stream, cancellation) and, for stock,
// balances and every service's readiness, from its /dashboard/api proxy to the others.
"use strict";

const LANES = ["order_svc", "inventory_svc", "payment_svc"];
const PAGE = 60;
const ORDER_ID_PREFIX = /^[0-9a-fA-F-]{8,36}$/;
const CUSTOMER_ID = /^[A-Za-z0-9._:-]{1,64}$/;
const state = {
  status: "",
  search: null, // {field: "order_id_prefix" | "customer_id", value}
  offset: 0,
  selected: null,
  envelope: null, // the event_id whose envelope is shown
  cancelResult: null, // {order_id, text} of the last cancel button press
  refreshTimer: null,
  // Loads overlap (a live refresh, a click): only the latest request of each may render.
  loads: { orders: 0, saga: 0 },
};

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
// A cell too narrow for its text: cut with an ellipsis (CSS), the full text on hover.
const cell = (text, cls = "") => el("td", { class: cls, title: text }, text);

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail ? JSON.stringify(body.detail) : response.statusText);
  return body;
}

// An Idempotency-Key for POST /orders. crypto.randomUUID exists only in secure contexts
// (https, localhost): on plain http from another host a UUID v4 is made from
// crypto.getRandomValues, which every context has.
function newIdempotencyKey() {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; // version 4
  b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// Times: absolute in UTC (as the logs and traces have them), relative to now.
function absolute(iso) {
  return new Date(iso).toISOString().replace("T", " ").replace("Z", " UTC");
}
function duration(ms) {
  const s = Math.abs(ms) / 1000;
  return s < 60 ? `${s.toFixed(0)}s` : s < 3600 ? `${(s / 60).toFixed(0)}m` : `${(s / 3600).toFixed(1)}h`;
}
function relative(iso) {
  const ms = new Date(iso).getTime() - Date.now();
  return ms > 0 ? `in ${duration(ms)}` : `${duration(ms)} ago`;
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

function ordersQuery(search, offset) {
  const params = new URLSearchParams({ limit: String(PAGE), offset: String(offset) });
  if (state.status) params.set("status", state.status);
  if (search) params.set(search.field, search.value);
  return `/orders?${params}`;
}

async function loadOrders() {
  const load = ++state.loads.orders;
  let orders = await getJSON(ordersQuery(state.search, state.offset));
  // Eight hex digits can also be a customer's id: when no order id starts so, look for
  // a customer of that name.
  if (!orders.length && state.search?.field === "order_id_prefix" && CUSTOMER_ID.test(state.search.value)) {
    const asCustomer = { field: "customer_id", value: state.search.value };
    const found = await getJSON(ordersQuery(asCustomer, state.offset));
    if (found.length) {
      state.search = asCustomer;
      orders = found;
    }
  }
  if (load !== state.loads.orders) return;
  const body = $("orders");
  body.replaceChildren();
  for (const o of orders) {
    const row = el(
      "tr",
      { "data-order": o.order_id },
      cell(o.order_id.slice(0, 8), "mono"),
      cell(o.customer_id, "customer"),
      cell(o.status, `status ${o.status}`),
      cell(o.reason || ""),
      cell(o.total || ""),
      el("td", { class: "when", title: absolute(o.created_at) }, relative(o.created_at)),
    );
    row.cells[0].title = o.order_id;
    if (o.order_id === state.selected) row.classList.add("selected");
    row.addEventListener("click", () => select(o.order_id));
    body.append(row);
  }
  const what = !state.search ? "" : state.search.field === "customer_id"
    ? `orders of customer ${state.search.value}` : `orders whose id starts with ${state.search.value}`;
  $("search-note").textContent = what;
  $("page-note").textContent = orders.length
    ? `orders ${state.offset + 1} to ${state.offset + orders.length}` : state.offset ? "no more orders" : "no orders";
  $("page-newer").disabled = state.offset === 0;
  $("page-older").disabled = orders.length < PAGE;
}

async function loadStock() {
  const [stock, balances] = await Promise.all([
    getJSON("/dashboard/api/stock").catch(() => []),
    getJSON("/dashboard/api/balances").catch(() => []),
  ]);
  const s = $("stock");
  s.replaceChildren(
    ...stock.map((p) =>
      el("tr", { "data-product": p.product_id }, cell(p.product_id), cell(p.price),
        cell(String(p.available)), cell(String(p.reserved)), cell(String(p.sold))),
    ),
  );
  const b = $("balances");
  b.replaceChildren(
    ...balances.map((a) => el("tr", { "data-customer": a.customer_id }, cell(a.customer_id), cell(a.balance))),
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

async function loadHealth() {
  const health = await getJSON("/dashboard/api/health");
  $("health").replaceChildren(
    ...Object.entries(health).map(([service, h]) => {
      const notes = Object.entries(h.checks || {})
        .filter(([, c]) => !c.ok || c.degraded)
        .map(([name, c]) => `${name}: ${c.degraded || c.error}`);
      if (h.error) notes.push(h.error);
      const detail = notes.join("; ") || `${Object.keys(h.checks || {}).length} checks ok`;
      return el("tr", { "data-service": service }, cell(service), cell(h.status, `readiness ${h.status}`), cell(detail));
    }),
  );
}

async function select(orderId) {
  state.selected = orderId;
  state.envelope = null;
  for (const row of document.querySelectorAll("#orders tr")) {
    row.classList.toggle("selected", row.dataset.order === orderId);
  }
  await loadSaga();
}

async function cancelSelected() {
  const orderId = state.selected;
  try {
    const answer = await getJSON(`/orders/${orderId}/cancel`, { method: "POST" });
    state.cancelResult = { order_id: orderId, text: `cancel accepted: the order is ${answer.status}; inventory and payment compensate` };
  } catch (err) {
    state.cancelResult = { order_id: orderId, text: `cancel refused: ${err.message}` };
  }
  await Promise.all([loadSaga(), loadOrders()]);
}

async function loadSaga() {
  if (!state.selected) return;
  const load = ++state.loads.saga;
  const [saga, order] = await Promise.all([
    getJSON(`/orders/${state.selected}/saga`),
    getJSON(`/orders/${state.selected}`),
  ]);
  if (load !== state.loads.saga) return;
  const box = $("saga");
  box.classList.remove("empty");
  box.replaceChildren();
  const why = saga.explanation;
  box.append(
    el("h2", {}, "Saga ", el("span", { class: "mono" }, saga.order_id), " ",
      el("span", { id: "saga-status", class: `status ${saga.status}` }, saga.status)),
    el("div", { class: "verdict", id: "saga-verdict" }, why.verdict),
    el("div", { class: "times", id: "saga-times" },
      `customer ${order.customer_id} · placed ${absolute(order.created_at)} (${relative(order.created_at)})`
      + ` · last change ${absolute(order.updated_at)} (${relative(order.updated_at)})`),
  );
  if (saga.status === "PENDING") {
    const overdue = new Date(order.deadline_at).getTime() <= Date.now();
    box.append(el("div", { class: "deadline", id: "saga-deadline" },
      `deadline ${absolute(order.deadline_at)} (${relative(order.deadline_at)}): `
      + (overdue ? "passed; the deadline sweeper cancels the saga" : "unless it finishes first, the saga is cancelled then")));
  }
  if (saga.status === "PENDING" || saga.status === "APPROVED") {
    const button = el("button", { id: "saga-cancel", type: "button" }, "cancel this order");
    button.addEventListener("click", cancelSelected);
    box.append(el("div", { class: "actions" }, button));
  }
  if (state.cancelResult?.order_id === saga.order_id) {
    box.append(el("div", { id: "saga-cancel-result", class: "note" }, state.cancelResult.text));
  }
  for (const c of why.compensations) {
    box.append(el("div", { class: `comp ${c.done_by ? "done" : "owed"}` },
      `${c.done_by ? "✓" : "✗ still owed:"} ${c.action} (for ${c.because_of}${c.done_by ? ": " + c.done_by : ""})`));
  }
  const compensated = { true: "everything owed was compensated", false: "compensation still owed", null: "saga in flight" };
  box.append(el("div", { class: "legend", id: "saga-compensated" }, `${compensated[String(why.compensated)]} · trace ${saga.trace_id || "—"}`));
  box.append(swimlanes(saga.events));
  box.append(el("div", { class: "legend" }, "● step · ", el("span", { style: "color: var(--bad)" }, "● compensation"),
    " · in the order they happened, +ms since the saga started · arrows: which event caused which · click an event for its envelope"));
  const table = el("table", { class: "events" },
    el("colgroup", {}, el("col", { class: "c-ms" }), el("col", { class: "c-type" }), el("col", { class: "c-service" }), el("col")),
    el("thead", {}, el("tr", {}, el("th", {}, "+ms"), el("th", {}, "event"), el("th", {}, "service"), el("th", {}, "detail"))));
  const t0 = saga.events.length ? new Date(saga.events[0].occurred_at).getTime() : 0;
  const body = el("tbody");
  for (const e of saga.events) {
    const detail = Object.entries(e.payload).filter(([k]) => ["reason", "total", "amount", "product_ids"].includes(k))
      .map(([k, v]) => `${k}: ${v}`).join(", ");
    const row = el("tr", { class: e.compensating ? "REJECTED" : "", "data-event": e.event_id },
      el("td", { title: absolute(e.occurred_at) }, String(new Date(e.occurred_at).getTime() - t0)),
      cell(e.event_type), cell(e.producer), cell(detail));
    row.addEventListener("click", () => showEnvelope(e));
    body.append(row);
  }
  table.append(body);
  box.append(table);
  const shown = saga.events.find((e) => e.event_id === state.envelope);
  if (shown) showEnvelope(shown);
  else $("envelope").hidden = true;
}

// The event as the timeline recorded it: its envelope's ids, who produced it when, the
// trace it belongs to, and the payload.
function showEnvelope(e) {
  state.envelope = e.event_id;
  const envelope = {
    event_id: e.event_id,
    event_type: e.event_type,
    causation_id: e.causation_id,
    producer: e.producer,
    occurred_at: e.occurred_at,
    trace_id: e.trace_id,
    seq: e.seq,
    payload: e.payload,
  };
  const close = el("button", { type: "button", id: "envelope-close" }, "close");
  close.addEventListener("click", () => { state.envelope = null; $("envelope").hidden = true; });
  const box = $("envelope");
  box.replaceChildren(
    el("h2", {}, `${e.event_type} `, el("span", { class: "note" }, `${absolute(e.occurred_at)} (${relative(e.occurred_at)})`), " ", close),
    el("pre", { id: "envelope-json" }, JSON.stringify(envelope, null, 2)),
  );
  box.hidden = false;
  for (const row of document.querySelectorAll("#saga tr[data-event]")) {
    row.classList.toggle("selected", row.dataset.event === e.event_id);
  }
}

// Events are placed in the order they happened, evenly spaced, each label with its time
// since the saga started: on a time axis a long saga's labels pile up where events come
// close together. Labels alternate above and below their lane, so two labels on the same
// side of a lane are two steps apart, wider than the longest event name.
function swimlanes(events) {
  const left = 110, right = 90, top = 50, laneGap = 92, step = 110;
  const W = Math.max(860, left + right + Math.max(0, events.length - 1) * step);
  const H = top + (LANES.length - 1) * laneGap + 50;
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
  const t0 = Math.min(...times);
  const spacing = events.length > 1 ? Math.max(step, (W - left - right) / (events.length - 1)) : 0;
  const pos = {};
  events.forEach((e, i) => {
    const lane = Math.max(0, LANES.indexOf(e.producer));
    pos[e.event_id] = { x: left + i * spacing, y: top + lane * laneGap };
  });
  for (const e of events) {
    const from = pos[e.causation_id], to = pos[e.event_id];
    if (!from || !to) continue;
    const mid = (from.x + to.x) / 2;
    root.append(svg("path", { class: "cause", d: `M ${from.x} ${from.y} C ${mid} ${from.y}, ${mid} ${to.y}, ${to.x - 6} ${to.y}` }));
  }
  events.forEach((e, i) => {
    const p = pos[e.event_id];
    const g = svg("g", { class: `event${e.compensating ? " compensating" : ""}`, "data-type": e.event_type, "data-event": e.event_id });
    if (e.compensating) g.append(svg("circle", { class: "ring", cx: p.x, cy: p.y, r: 10 }));
    g.append(svg("circle", { cx: p.x, cy: p.y, r: 6 }));
    const above = i % 2 === 0;
    const label = svg("text", { class: "label", x: p.x, y: p.y + (above ? -28 : 22), "text-anchor": "middle" });
    label.append(svg("tspan", { x: p.x, dy: 0 }, e.event_type));
    label.append(svg("tspan", { x: p.x, dy: 13, class: "at" }, `+${times[i] - t0} ms`));
    g.append(label);
    g.append(svg("title", {}, `${e.event_type} · ${e.producer} · ${absolute(e.occurred_at)} · +${times[i] - t0} ms`));
    g.addEventListener("click", () => showEnvelope(e));
    root.append(g);
  });
  return root;
}

async function refresh() {
  await Promise.all([loadCounts(), loadOrders(), loadStock(), loadSaga(), loadHealth()]).catch((err) => console.error(err));
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
    state.offset = 0;
    loadOrders();
  }),
);

$("search").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("search-text").value.trim();
  state.offset = 0;
  if (!text) state.search = null;
  else if (ORDER_ID_PREFIX.test(text)) state.search = { field: "order_id_prefix", value: text };
  else if (CUSTOMER_ID.test(text)) state.search = { field: "customer_id", value: text };
  else {
    $("search-note").textContent = "an order id needs 8 or more hex digits; a customer id is letters, digits and ._:-";
    return;
  }
  loadOrders().catch((err) => { $("search-note").textContent = `search failed: ${err.message}`; });
});

$("page-older").addEventListener("click", () => { state.offset += PAGE; loadOrders(); });
$("page-newer").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadOrders(); });

$("place").addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = $("place-result");
  try {
    const order = await getJSON("/orders", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": newIdempotencyKey() },
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
setInterval(refresh, 5000); // also catches changes that record no event (stock edits, health)
