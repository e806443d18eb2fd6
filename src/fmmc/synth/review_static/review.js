// fmmc label review page: one region at a time, one key per verdict. No dependencies, works offline.
"use strict";

const state = { items: [], pos: 0, overlay: true, queue: Promise.resolve() };
const $ = (id) => document.getElementById(id);

function pct(x) { return (100 * x).toFixed(1) + "%"; }

function statsText(s) {
  if (!s.reviewed) return "no verdicts yet";
  return `label accuracy ${pct(s.accuracy)} (95% CI ${pct(s.ci_low)}–${pct(s.ci_high)}) · ` +
    `${s.accepted} accepted · ${s.rejected} rejected`;
}

function showStats(s) {
  $("stats").textContent = statsText(s);
  $("progress").textContent = `${s.sample_reviewed} of ${s.sample_size} sampled regions reviewed` +
    (s.reviewed > s.sample_reviewed ? ` (${s.reviewed} in the database)` : "");
  const rows = Object.entries(s.per_label || {});
  if (rows.length < 2) { $("per-label").replaceChildren(); return; }
  const table = document.createElement("table");
  for (const [label, ls] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = label || "(no label)";
    const acc = tr.insertCell(); acc.className = "num"; acc.textContent = pct(ls.accuracy);
    const n = tr.insertCell(); n.className = "num"; n.textContent = `n=${ls.reviewed}`;
  }
  $("per-label").replaceChildren(table);
}

function showError(msg) {
  const el = $("error");
  el.textContent = msg;
  el.hidden = !msg;
}

function imageUrl(item) { return state.overlay ? item.image_url : item.plain_url; }

function show() {
  const n = state.items.length;
  const done = state.pos >= n;
  $("done").hidden = !done;
  $("image").hidden = done;
  if (done) {
    for (const id of ["label", "object", "submaterial", "prompt", "rid"]) $(id).textContent = "–";
    setVerdictBadge(null);
    return;
  }
  const item = state.items[state.pos];
  $("image").src = imageUrl(item);
  $("label").textContent = item.label || "(no label)";
  $("object").textContent = item.object || "–";
  $("submaterial").textContent = item.submaterial || "–";
  $("prompt").textContent = item.prompt || item.description || "–";
  $("rid").textContent = `${item.id}  (#${state.pos + 1} of ${n})`;
  setVerdictBadge(item.verdict);
  for (let k = 1; k <= 2 && state.pos + k < n; k++) new Image().src = imageUrl(state.items[state.pos + k]);
}

function setVerdictBadge(v) {
  const el = $("verdict");
  el.className = "verdict " + (v || "none");
  el.textContent = v === "accept" ? "accepted" : v === "reject" ? "rejected" : "no verdict";
}

function flash(kind) {
  document.body.classList.add("flash-" + kind);
  setTimeout(() => document.body.classList.remove("flash-" + kind), 180);
}

async function api(path, body) {
  const opts = body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(`${path}: ${r.status} ${detail}`);
  }
  return r.json();
}

// Verdicts move on at once; requests go out in order, so fast typing never loses or reorders one.
function enqueue(fn) {
  state.queue = state.queue.then(fn).catch((e) => showError(String(e.message || e)));
  return state.queue;
}

function verdict(v) {
  if (state.pos >= state.items.length) return;
  const item = state.items[state.pos];
  const previous = item.verdict;
  item.verdict = v;
  flash(v);
  state.pos += 1;
  show();
  enqueue(async () => {
    try {
      const r = await api("api/verdict", { id: item.id, verdict: v });
      showStats(r.stats);
      showError("");
    } catch (e) {
      item.verdict = previous;
      throw e;
    }
  });
}

function undo() {
  enqueue(async () => {
    const r = await api("api/undo", {});
    showStats(r.stats);
    if (r.id === null) { showError("nothing to undo"); setTimeout(() => showError(""), 1200); return; }
    if (r.index !== null && r.index !== undefined) {
      state.items[r.index].verdict = r.verdict;
      state.pos = r.index;
    }
    show();
  });
}

function move(delta) {
  state.pos = Math.max(0, Math.min(state.items.length, state.pos + delta));
  show();
}

function toggleOverlay() {
  state.overlay = !state.overlay;
  $("overlay").setAttribute("aria-pressed", String(state.overlay));
  show();
}

const KEYS = {
  a: () => verdict("accept"), r: () => verdict("reject"), s: () => move(1), ArrowRight: () => move(1),
  ArrowLeft: () => move(-1), u: undo, o: toggleOverlay,
};

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.repeat) return;
  if (ev.target instanceof HTMLInputElement || ev.target instanceof HTMLTextAreaElement) return;
  const fn = KEYS[ev.key.length === 1 ? ev.key.toLowerCase() : ev.key];
  if (fn) { ev.preventDefault(); fn(); }
});

$("image").addEventListener("error", () => {
  if (state.pos < state.items.length) showError(`cannot render ${state.items[state.pos].id}: image unreadable (reject or skip it)`);
});
$("image").addEventListener("load", () => showError(""));
$("accept").onclick = () => verdict("accept");
$("reject").onclick = () => verdict("reject");
$("skip").onclick = () => move(1);
$("back").onclick = () => move(-1);
$("undo").onclick = undo;
$("overlay").onclick = toggleOverlay;

async function init() {
  try {
    const [data, stats] = await Promise.all([api("api/items"), api("api/stats")]);
    state.items = data.items;
    $("dataset").textContent = `· ${data.dataset} · seed ${data.seed}`;
    const first = state.items.findIndex((it) => !it.verdict);
    state.pos = first === -1 ? state.items.length : first;
    showStats(stats);
    show();
    document.body.dataset.ready = "1";
  } catch (e) {
    showError(String(e.message || e));
  }
}

init();
