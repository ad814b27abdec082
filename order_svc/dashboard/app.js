// The saga dashboard: plain JavaScript, no build step. Data comes from the order
// service's own API (orders, sagas, the live event stream, cancellation, sagas per minute)
// and, for stock, balances, every service's readiness and dead letters, from its
// /dashboard/api proxy to the others. Every request goes through getJSON.
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
  letter: null, // {service, id} of the dead letter shown
  letterResult: null, // {service, id, text} of the last replay or discard
  refreshTimer: null,
  // Loads overlap (a live refresh, a click): only the latest request of each may render.
  loads: { orders: 0, saga: 0, letters: 0, letter: 0 },
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

// The operator's bearer token: given once in the URL's fragment (#token=…, which no server
// ever receives), kept for this tab only (sessionStorage) and sent on every request.
const TOKEN = (() => {
  const given = new URLSearchParams(location.hash.slice(1)).get("token");
  if (given) {
    sessionStorage.setItem("saga-token", given);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("saga-token");
})();
// A new link with a token opened in this tab changes only the fragment (no reload): take
// the token and start over with it.
window.addEventListener("hashchange", () => {
  if (new URLSearchParams(location.hash.slice(1)).get("token")) location.reload();
});
function authorized(options = {}) {
  const headers = { ...(options.headers || {}) };
  if (TOKEN) headers.Authorization = `Bearer ${TOKEN}`;
  return { ...options, headers };
}

// The one way the page asks for anything. A refusal becomes an Error whose message is the
// answer's own sentence (its `detail`), with the status and `reason` beside it; a 401
// (no token, or an expired one) also says how to open the page with one.
async function getJSON(url, options) {
  const response = await fetch(url, authorized(options));
  $("auth-note").hidden = response.status !== 401;
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const said = typeof body.detail === "string" ? body.detail : body.detail ? JSON.stringify(body.detail) : "";
    const err = new Error(said || `${response.status} ${response.statusText}`);
    err.status = response.status;
    err.reason = body.reason;
    throw err;
  }
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
  for (const c of why.owed) {
    box.append(el("div", { class: `comp ${c.done_by ? "done" : "owed"}` },
      `${c.done_by ? "✓" : "✗ still owed:"} ${c.owed_by}: ${c.action} (for ${c.because_of}${c.done_by ? ": " + c.done_by : ""})`));
  }
  const settled = { true: "everything owed was done", false: "something is still owed", null: "saga in flight" };
  box.append(el("div", { class: "legend", id: "saga-settled" }, `${settled[String(why.settled)]} · trace ${saga.trace_id || "—"}`));
  box.append(swimlanes(saga.events));
  box.append(el("div", { class: "legend" }, "● step · ", el("span", { class: "comp-mark" }, "● compensation"),
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

// Sagas started per minute, stacked by what became of them, oldest minute on the left.
const OUTCOMES = [["APPROVED", "approved"], ["REJECTED", "rejected"], ["CANCELLED", "cancelled"], ["PENDING", "in_flight"]];
const OUTCOME_LABEL = { APPROVED: "approved", REJECTED: "rejected", CANCELLED: "cancelled", PENDING: "in flight" };

async function loadThroughput() {
  const minutes = await getJSON("/dashboard/api/throughput?minutes=60");
  $("throughput").replaceChildren(throughputChart(minutes));
  const totals = Object.fromEntries(OUTCOMES.map(([status, key]) => [status, minutes.reduce((n, m) => n + m[key], 0)]));
  $("throughput-legend").replaceChildren(...OUTCOMES.map(([status]) =>
    el("span", { id: `throughput-${status}`, "data-total": String(totals[status]) },
      el("span", { class: `swatch ${status}` }), `${totals[status]} ${OUTCOME_LABEL[status]}`)));
}

function throughputChart(minutes) {
  const W = 600, H = 96, left = 28, bottom = 14, top = 6;
  const most = Math.max(1, ...minutes.map((m) => OUTCOMES.reduce((n, [, key]) => n + m[key], 0)));
  const slot = (W - left) / Math.max(1, minutes.length);
  const scale = (H - top - bottom) / most;
  const root = svg("svg", { class: "chart", id: "throughput-chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "xMinYMin meet" });
  const base = H - bottom;
  root.append(svg("line", { class: "grid", x1: left, x2: W, y1: base, y2: base }));
  root.append(svg("line", { class: "grid", x1: left, x2: W, y1: top, y2: top }));
  root.append(svg("text", { class: "axis", x: left - 4, y: top + 8, "text-anchor": "end" }, String(most)));
  root.append(svg("text", { class: "axis", x: left - 4, y: base, "text-anchor": "end" }, "0"));
  minutes.forEach((m, i) => {
    const x = left + i * slot;
    const g = svg("g", { class: "minute", "data-minute": m.minute });
    let y = base;
    for (const [status, key] of OUTCOMES) {
      g.setAttribute(`data-${key.replace("_", "-")}`, String(m[key]));
      if (!m[key]) continue;
      const h = m[key] * scale;
      y -= h;
      g.append(svg("rect", { class: status, x: x + 0.5, y, width: Math.max(1, slot - 1), height: h }));
    }
    // the whole column answers to the mouse, an empty minute too
    g.append(svg("rect", { x, y: top, width: slot, height: base - top, fill: "transparent" }));
    const counts = OUTCOMES.map(([status, key]) => `${m[key]} ${OUTCOME_LABEL[status]}`).join(", ");
    g.append(svg("title", {}, `${absolute(m.minute).slice(11, 16)} UTC: ${counts}`));
    root.append(g);
  });
  if (minutes.length) {
    root.append(svg("text", { class: "axis", x: left, y: H - 2 }, `${absolute(minutes[0].minute).slice(11, 16)} UTC`));
    root.append(svg("text", { class: "axis", x: W, y: H - 2, "text-anchor": "end" }, "now"));
  }
  return root;
}

// Dead letters of every service, through the order service's proxy to each. A service
// that cannot list its letters says why in its own row; the others are still shown.
const DL_SERVICES = ["order_svc", "inventory_svc", "payment_svc"];
const letterUrl = (service, id) => `/dashboard/api/dead-letters/${service}/${id}`;

async function loadDeadLetters() {
  const load = ++state.loads.letters;
  const status = $("dl-status").value;
  const answers = await Promise.all(DL_SERVICES.map((service) =>
    getJSON(`/dashboard/api/dead-letters/${service}?status=${status}&limit=50`)
      .then((letters) => ({ service, letters }), (err) => ({ service, error: err.message }))));
  if (load !== state.loads.letters) return;
  const rows = [];
  for (const { service, letters, error } of answers) {
    if (error) {
      rows.push(el("tr", { class: "dl-error", "data-service": service }, cell(service), el("td", { colspan: "6" }, `cannot list: ${error}`)));
      continue;
    }
    for (const d of letters) {
      const row = el("tr", { "data-service": service, "data-letter": String(d.id) },
        cell(service), cell(String(d.id)), cell(d.status, `status ${d.status}`), cell(d.event_type || "—"),
        cell(d.order_id ? d.order_id.slice(0, 8) : "—", "mono"), cell(d.reason, "reason"),
        el("td", { class: "when", title: absolute(d.created_at) }, relative(d.created_at)));
      if (d.order_id) row.cells[4].title = d.unverified ? `${d.order_id} ${UNVERIFIED}` : d.order_id;
      if (d.unverified) for (const i of [3, 4]) if (row.cells[i].textContent !== "—") row.cells[i].append(" (claimed)");
      if (state.letter?.service === service && state.letter.id === d.id) row.classList.add("selected");
      row.addEventListener("click", () => showLetter(service, d.id));
      rows.push(row);
    }
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "7", class: "note" }, "no dead letters")));
  $("dead-letters").replaceChildren(...rows);
}

// A record the Kafka client could not read (the letter's unread): its key and body are
// not known, not absent ("no body (a tombstone)" beside "cannot read this record" said
// what it held: a trial).
const NOT_READ = "not read: the Kafka client could not read the record (see reason)";

// A letter's event type or order id when nothing vouched for its record (the letter's
// unverified: no signature verified, or a command's token never checked): what its body
// claims, which its writer chose, not a saga it is known to belong to. As sagactl says it
// ("the signature did not verify" was wrong for a command, which carries a token).
const UNVERIFIED = "(unverified claim)";
function claimed(d, value) {
  if (!value) return "—";
  return d.unverified ? `${value} ${UNVERIFIED}` : value;
}

// A body as the service shows it: its text (indented when it is JSON as the services
// write it, compact, which indenting shows as it is: {"id": "a", "id": "b"} was shown as
// {"id": "b"}, and 12345678901234567890.10 rounded, by an attack trial), or, for bytes that
// are not UTF-8, base64. What is not the text itself — no body, bytes in base64, text the
// service escaped something in, a preview — is said beside it, in the page's words, which
// no body can write (a body "(none)" looked like none, one "base64: …" like bytes: a
// re-check trial).
function shownBody(view, unread) {
  const note = (text) => el("div", { class: "note dl-value-note" }, text);
  if (unread) return [note(NOT_READ)];
  if (!view) return [note("no body (a tombstone)")];
  const part = view.truncated ? ` (the first of its ${view.size} bytes)` : "";
  if (view.text === null) return [note(`not UTF-8: its bytes in base64${part}`), el("pre", { id: "dl-value" }, view.base64)];
  const notes = view.base64 === null ? [] : [note(`escaped to be shown; the bytes in base64: ${view.base64}`)];
  if (part) notes.push(note(`the start of it${part}`));
  let text = view.text;
  if (!view.truncated && view.base64 === null) {
    try {
      const body = JSON.parse(view.text);
      if (JSON.stringify(body) === view.text) text = JSON.stringify(body, null, 2);
    } catch { /* not JSON: as it is */ }
  }
  return [...notes, el("pre", { id: "dl-value" }, text)];
}

// What follows text the service escaped something in: its exact bytes (base64), if any.
const escapedNote = (exact) => (exact === null || exact === undefined ? "" : ` (escaped; the bytes in base64: ${exact})`);

// A key, a header's name or value, in a line of others: text in quotes (JSON's), so that
// what a writer sent cannot read as the page's words (a header "a: b" = "c" looked like
// "a" = "b: c", the text "(none)" like no key: an attack trial).
function quotedBytes(view, none) {
  if (!view) return none;
  if (view.text === null) return `base64: ${view.base64}${view.truncated ? " …" : ""} (${view.size} bytes)`;
  return JSON.stringify(view.text) + (view.truncated ? ` … (${view.size} bytes)` : "") + escapedNote(view.base64);
}

// A header's name, as quotedBytes shows text; the start of a longer one says so (an
// ellipsis alone may end a name).
const shownName = (h) => JSON.stringify(h.key) + (h.key_truncated ? " (the start of a longer name)" : "") + escapedNote(h.key_base64);

async function showLetter(service, id) {
  state.letter = { service, id };
  const load = ++state.loads.letter;
  for (const row of document.querySelectorAll("#dead-letters tr")) {
    row.classList.toggle("selected", row.dataset.service === service && row.dataset.letter === String(id));
  }
  const box = $("dead-letter");
  let d;
  try {
    d = await getJSON(letterUrl(service, id));
  } catch (err) {
    if (load !== state.loads.letter) return;
    box.replaceChildren(el("div", { id: "dl-result", class: "note" }, `cannot show dead letter ${id} of ${service}: ${err.message}`));
    box.hidden = false;
    return;
  }
  if (load !== state.loads.letter) return;
  const close = el("button", { type: "button", id: "dl-close" }, "close");
  close.addEventListener("click", () => { state.letter = null; box.hidden = true; loadDeadLetters(); });
  const facts = [
    ["status", `${d.status}${d.resolved_at ? ` (${absolute(d.resolved_at)})` : ""}`],
    ["reason", d.reason],
    ["event", claimed(d, d.event_type)],
    ["order", claimed(d, d.order_id)],
    ["from", `${d.source_topic} partition ${d.source_partition} offset ${d.source_offset}`],
    ["when", `${absolute(d.created_at)} (${relative(d.created_at)})`],
    ["replays tried", String(d.replay_attempts)],
    ["key", d.unread ? NOT_READ : quotedBytes(d.key, "(none)")],
    ["headers", d.unread ? NOT_READ : d.headers.map((h) => `${shownName(h)}: ${quotedBytes(h.value, "null")}`).join("\n") || "(none)"],
  ];
  const list = el("dl", { id: "dl-facts" });
  for (const [name, value] of facts) list.append(el("dt", {}, name), el("dd", { "data-fact": name }, value));
  box.replaceChildren(
    el("h2", {}, `${service} dead letter ${d.id} `, el("span", { id: "dl-status-shown", class: `status ${d.status}` }, d.status), " ", close),
    list,
  );
  if (d.status === "PENDING") {
    box.append(el("div", { class: "actions", id: "dl-actions" }));
    letterButtons(service, d.id);
  }
  if (state.letterResult?.service === service && state.letterResult.id === d.id) {
    box.append(el("div", { id: "dl-result", class: "note" }, state.letterResult.text));
  }
  box.append(...shownBody(d.value, d.unread));
  box.hidden = false;
}

// Replay and discard change a service's state: each asks first, in the page.
function letterButtons(service, id) {
  $("dl-actions").replaceChildren(...["replay", "discard"].map((action) => {
    const button = el("button", { type: "button", id: `dl-${action}` }, action);
    button.addEventListener("click", () => confirmLetterAction(service, id, action));
    return button;
  }));
}

function confirmLetterAction(service, id, action) {
  const question = action === "replay"
    ? `Replay dead letter ${id}: ${service}'s consumer processes the original record again?`
    : `Discard dead letter ${id} of ${service}: it is never processed?`;
  const yes = el("button", { type: "button", id: "dl-confirm" }, `yes, ${action}`);
  const no = el("button", { type: "button", id: "dl-keep" }, "no");
  const box = el("div", { class: "confirm", id: "dl-confirmation" }, question, yes, no);
  yes.addEventListener("click", () => letterAction(service, id, action));
  no.addEventListener("click", () => letterButtons(service, id));
  $("dl-actions").replaceChildren(box);
}

async function letterAction(service, id, action) {
  let text;
  try {
    const answer = await getJSON(`${letterUrl(service, id)}/${action}`, { method: "POST" });
    text = action === "replay"
      ? `replayed: ${service} processed it again (${answer.outcome}); the letter is ${answer.status}`
      : `discarded: the letter is ${answer.status}`;
  } catch (err) {
    // a 504: the service took it and did not answer; it may have been carried out (the
    // detail says so), which "refused" would deny
    text = `${action} ${err.status === 504 ? "not answered" : "refused"}: ${err.message}`;
  }
  state.letterResult = { service, id, text };
  await Promise.all([showLetter(service, id), loadDeadLetters()]);
}

async function refresh() {
  await Promise.all([
    loadCounts(), loadOrders(), loadStock(), loadSaga(), loadHealth(), loadThroughput(), loadDeadLetters(),
  ]).catch((err) => console.error(err));
}

function scheduleRefresh() {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = null;
    refresh();
  }, 300);
}

// The live stream (server-sent events) through fetch-event-source: EventSource cannot send
// the token. It reconnects by itself (resuming from the last event id) after an error, and
// after the service ended the stream.
function connect() {
  const live = $("live");
  const off = (text) => { live.className = "live off"; live.textContent = text; };
  FetchEventSource.fetchEventSource("/saga-events/stream", authorized({
    openWhenHidden: true,
    async onopen(response) {
      if (!response.ok) {
        $("auth-note").hidden = response.status !== 401;
        throw new Error(`the stream answered ${response.status}`);
      }
      live.className = "live on";
      live.textContent = "● live";
      live.dataset.opened = String(Number(live.dataset.opened || 0) + 1); // streams opened so far
    },
    onmessage(message) {
      if (message.event === "saga-event") scheduleRefresh();
    },
    onclose() {
      // the service ended the stream (this page fell behind, or the service is stopping):
      // an error makes fetch-event-source connect again, resuming from the last event id
      throw new Error("the stream ended");
    },
    onerror() {
      off("● reconnecting");
      return 2000; // ms until the next attempt
    },
  }));
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

$("dl-status").addEventListener("change", () => loadDeadLetters());

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
