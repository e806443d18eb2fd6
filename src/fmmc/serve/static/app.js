// fmmc web page: open a photo, click / drag / name an object, see its material; or map the whole image.
// Plain browser JS, no libraries, no network besides this server's /v1 API.
"use strict";

const MAX_SIDE = 1600; // photos are downscaled in the browser before upload (faster, and plenty for the models)
const $ = (id) => document.getElementById(id);
const state = {
  blob: null, name: "photo", w: 0, h: 0, tool: "point", colors: {}, token: sessionStorage.getItem("fmmc-token") || "",
  map: null, // {labels: Uint8Array-like, conf, legend, classes}
  busy: false, drag: null,
  avail: { segmenter: { available: true }, grounder: { available: true } }, // from /v1/model
  modeSet: false, // the map mode was set from the server's default once
};

// ---------- status + errors ----------
function setStatus(text, kind = "") {
  const el = $("status");
  el.textContent = text;
  el.className = kind;
}
// titles for the API's error codes ({"error": {"code", "message"}}); the message itself is always shown
const ERROR_TITLES = {
  bad_image: "Cannot read the image", bad_request: "Bad request", bad_prompt: "Check the selection",
  invalid_request: "Invalid request", not_found: "Not found", component_unavailable: "Component not available here",
  busy: "Server busy", timeout: "Timed out", unauthorized: "Access token needed", too_large: "Upload too large",
  image_too_large: "Image too large", unsupported_media_type: "Not an image", internal: "Server error",
  unreachable: "Cannot reach the server", no_photo: "No photo yet", needs_sam: "Drag a box instead",
  client: "Cannot do that",
};
function showError(message, code = "client") {
  setStatus("error", "error");
  $("result-title").textContent = ERROR_TITLES[code] || `Request failed (${code})`;
  $("result-body").innerHTML = "";
  const box = document.createElement("div");
  box.className = "error-box";
  box.textContent = message;
  $("result-body").appendChild(box);
}

// ---------- API ----------
async function api(path, form) {
  const headers = {};
  if (state.token) headers["Authorization"] = "Bearer " + state.token;
  let resp;
  try {
    resp = await fetch(path, form ? { method: "POST", body: form, headers } : { headers });
  } catch (e) {
    const err = new Error(`cannot reach the server (${e.message}); check that fmmc serve is still running`);
    err.code = "unreachable";
    throw err;
  }
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    if (resp.status === 401) $("token-box").hidden = false;
    const known = body && body.error && body.error.message;
    const http = ["HTTP", resp.status, resp.statusText].filter(Boolean).join(" ");
    const err = new Error(known ? body.error.message
      : `the server answered ${http} without an error message; check the server log`);
    err.status = resp.status;
    err.code = known ? body.error.code || "error" : (resp.status === 401 ? "unauthorized" : "error");
    throw err;
  }
  return body;
}

async function loadModelInfo() {
  try {
    const info = await api("/v1/model");
    $("model-name").textContent = info.name;
    for (const c of info.taxonomy.classes) state.colors[c.name] = c.color;
    applyAvailability(info);
    $("token-box").hidden = true;
  } catch (e) {
    if (e.status !== 401) showError(e.message, e.code);
  }
}

// ---------- what can run here (the server's /v1/model "availability") ----------
function markUnavailable(el, reason) {
  // a control that needs a component this server cannot load: disabled, with the reason as its tooltip
  if (!el.dataset.title0) el.dataset.title0 = el.getAttribute("title") || "";
  if (reason) {
    el.dataset.unavailable = reason;
    el.title = "unavailable: " + reason;
    el.setAttribute("aria-describedby", "avail-note");
  } else {
    delete el.dataset.unavailable;
    el.title = el.dataset.title0;
    el.removeAttribute("aria-describedby");
  }
}

function refreshControls() {
  // busy: every button waits; unavailable controls stay off either way
  document.querySelectorAll("#toolbar button, #toolbar input, #toolbar option").forEach((el) => {
    if (el.id === "file") return;
    el.disabled = Boolean(el.dataset.unavailable) || (state.busy && el.tagName === "BUTTON");
  });
  $("refine-label").classList.toggle("unavailable", Boolean($("refine").dataset.unavailable));
}

function applyAvailability(info) {
  const av = info.availability || {};
  const seg = av.segmenter || { available: true };
  const grd = av.grounder || { available: true };
  state.avail = { segmenter: seg, grounder: grd };
  const gridOk = info.segment_modes.includes("grid");
  const why = (c, name) => (c.available ? "" : `${name} (${c.spec}) cannot load here: ${c.reason}`);
  const segWhy = why(seg, "SAM");
  const objWhy = segWhy || why(grd, "Grounding DINO");
  markUnavailable(document.querySelector('.tool[data-tool="point"]'), segWhy);
  markUnavailable($("refine"), segWhy);
  markUnavailable($("refine-label"), segWhy);
  markUnavailable($("object"), objWhy);
  markUnavailable($("find"), objWhy);
  const samOpt = $("map-mode").querySelector('[value="sam"]');
  markUnavailable(samOpt, segWhy);
  markUnavailable($("map-mode").querySelector('[value="grid"]'), gridOk ? "" : "this model's language stream needs a describer per region; use SAM regions");
  markUnavailable($("whole"), segWhy && !gridOk ? segWhy : "");
  if (segWhy) {
    // start on what works: the box tool (the box itself is the region) and the fast grid map
    setTool("box");
    $("refine").checked = false;
    if (gridOk) $("map-mode").value = "grid";
  } else if (!state.modeSet) {
    $("map-mode").value = gridOk ? info.limits.segment_mode || "sam" : "sam";
  }
  state.modeSet = true;
  refreshControls();

  const note = $("avail-note");
  const parts = [];
  if (segWhy) {
    parts.push(`SAM is not available, so Point, SAM in box, object names and SAM regions are off: ${seg.reason}.`);
    parts.push(gridOk ? "Drag a box to classify it, or map the whole image with the fast grid."
      : "Drag a box to classify it.");
  } else if (objWhy) {
    parts.push(`Grounding DINO is not available, so object names are off: ${grd.reason}.`);
  }
  note.textContent = parts.join(" ").replace(/\.\./g, ".");
  note.hidden = parts.length === 0;
}

// ---------- loading a photo ----------
async function openFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) { showError(`${file.name} is not an image (${file.type}); open a JPEG, PNG or WebP photo`, "unsupported_media_type"); return; }
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.src = url;
  try { await img.decode(); } catch (e) { URL.revokeObjectURL(url); showError(`cannot read ${file.name} as an image; is the file complete? Try another photo`, "bad_image"); return; }
  let w = img.naturalWidth, h = img.naturalHeight;
  const scale = Math.min(1, MAX_SIDE / Math.max(w, h));
  w = Math.max(1, Math.round(w * scale)); h = Math.max(1, Math.round(h * scale));
  const photo = $("photo");
  photo.width = w; photo.height = h;
  photo.getContext("2d").drawImage(img, 0, 0, w, h);
  URL.revokeObjectURL(url);
  const keep = scale === 1 && (file.type === "image/jpeg" || file.type === "image/png");
  state.blob = keep ? file : await new Promise((ok) => photo.toBlob(ok, "image/jpeg", 0.92));
  state.name = file.name || "photo";
  state.w = w; state.h = h; state.map = null;
  for (const id of ["overlay", "draw"]) { const c = $(id); c.width = w; c.height = h; }
  $("canvas-wrap").hidden = false;
  $("drop-hint").hidden = true;
  $("stage").classList.add("loaded");
  fitPhoto();
  $("legend").innerHTML = "";
  $("result-title").textContent = "Materials";
  $("result-body").innerHTML = '<p class="muted">Click a surface, drag a box, name an object, or map the whole image.</p>';
  setStatus(`${w}×${h}`);
}

// ---------- drawing ----------
function fitPhoto() {
  // show the photo as large as the stage allows (small photos are enlarged up to 4x)
  if (!state.w) return;
  const stage = $("stage");
  const room = Math.min(stage.clientWidth - 24, 4 * state.w) / state.w;
  const scale = Math.min(room, Math.max(240, window.innerHeight * 0.74) / state.h, 4);
  const photo = $("photo");
  photo.style.width = Math.floor(state.w * scale) + "px";
  photo.style.height = Math.floor(state.h * scale) + "px";
}

function clearCanvas(id) { const c = $(id); c.getContext("2d").clearRect(0, 0, c.width, c.height); }
function hexToRgb(hex) { const n = parseInt((hex || "#2457d6").slice(1), 16); return [(n >> 16) & 255, (n >> 8) & 255, n & 255]; }
function displayScale() { const r = $("draw").getBoundingClientRect(); return r.width ? state.w / r.width : 1; }

async function decodePng(b64) {
  const img = new Image();
  img.src = "data:image/png;base64," + b64;
  await img.decode();
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  return ctx.getImageData(0, 0, c.width, c.height);
}

async function drawMask(b64, colorHex) {
  const data = await decodePng(b64);
  const { width: w, height: h } = data;
  const inside = new Uint8Array(w * h);
  for (let i = 0; i < w * h; i++) inside[i] = data.data[i * 4] > 127 ? 1 : 0;
  const out = new ImageData(w, h);
  const [r, g, b] = hexToRgb(colorHex);
  const t = Math.max(1, Math.round(displayScale() * 1.5)); // outline ~1.5 screen pixels wide
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      if (!inside[i]) continue;
      let edge = false;
      for (let d = 1; d <= t && !edge; d++) {
        edge = x < d || y < d || x >= w - d || y >= h - d || !inside[i - d] || !inside[i + d] || !inside[i - d * w] || !inside[i + d * w];
      }
      const o = i * 4;
      if (edge) { out.data[o] = 255; out.data[o + 1] = 255; out.data[o + 2] = 255; out.data[o + 3] = 255; }
      else { out.data[o] = r; out.data[o + 1] = g; out.data[o + 2] = b; out.data[o + 3] = 90; }
    }
  }
  clearCanvas("overlay");
  $("overlay").getContext("2d").putImageData(out, 0, 0);
}

function drawMarker(prompt) {
  clearCanvas("draw");
  const ctx = $("draw").getContext("2d");
  const s = displayScale();
  ctx.lineWidth = 2 * s;
  if (prompt.point) {
    const [x, y] = prompt.point;
    ctx.beginPath(); ctx.arc(x, y, 6 * s, 0, Math.PI * 2);
    ctx.fillStyle = "#ffd400"; ctx.fill(); ctx.strokeStyle = "#1d2330"; ctx.stroke();
  }
  if (prompt.box) {
    const [x0, y0, x1, y1] = prompt.box;
    ctx.setLineDash([6 * s, 4 * s]); ctx.strokeStyle = "#ffd400";
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0); ctx.setLineDash([]);
  }
}

// ---------- results ----------
function renderTop(title, meta, top) {
  $("result-title").textContent = title;
  const body = $("result-body");
  body.innerHTML = "";
  const p = document.createElement("p");
  p.className = "meta"; p.textContent = meta;
  body.appendChild(p);
  const ul = document.createElement("ul");
  ul.className = "top-list";
  for (const t of top) {
    const li = document.createElement("li");
    li.className = "top-row";
    const name = document.createElement("span"); name.className = "name"; name.textContent = t.label; name.title = t.label;
    const bar = document.createElement("span"); bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = (100 * t.prob).toFixed(1) + "%";
    fill.style.background = state.colors[t.label] || "#2457d6";
    bar.appendChild(fill);
    const pct = document.createElement("span"); pct.className = "pct"; pct.textContent = (100 * t.prob).toFixed(1) + "%";
    li.append(name, bar, pct);
    ul.appendChild(li);
  }
  body.appendChild(ul);
}

function renderLegend(legend) {
  const el = $("legend");
  el.innerHTML = "<h3>Legend</h3>";
  for (const e of legend) {
    const row = document.createElement("div");
    row.className = "legend-row";
    const sw = document.createElement("span"); sw.className = "sw"; sw.style.background = e.color;
    const name = document.createElement("span"); name.textContent = e.label;
    const frac = document.createElement("span"); frac.className = "frac"; frac.textContent = (100 * e.fraction).toFixed(1) + "%";
    row.append(sw, name, frac);
    el.appendChild(row);
  }
}

// ---------- actions ----------
async function run(label, fn) {
  if (!state.blob) { showError("open a photo first (Open photo… or drop one on the stage)", "no_photo"); return; }
  if (state.busy) return;
  state.busy = true;
  setStatus(label, "busy");
  refreshControls();
  let failed = null;
  try { await fn(); }
  catch (e) { failed = e; showError(e.message, e.code); }
  finally {
    state.busy = false;
    refreshControls();
  }
  // a component that just failed to load: ask the server again, so the page offers only what works
  if (failed && failed.code === "component_unavailable") await loadModelInfo();
}

function classify(prompt) {
  return run("classifying…", async () => {
    state.map = null;
    $("hover").hidden = true;
    $("legend").innerHTML = "";
    clearCanvas("overlay"); // a stale mask or map must not look like this prompt's answer
    drawMarker(prompt);
    const form = new FormData();
    form.append("image", state.blob, state.name);
    form.append("top_k", "5");
    form.append("mask_format", "png");
    if (prompt.point) form.append("point", prompt.point.map((v) => v.toFixed(1)).join(","));
    if (prompt.box) { form.append("box", prompt.box.map((v) => v.toFixed(1)).join(",")); form.append("refine", $("refine").checked ? "true" : "false"); }
    if (prompt.object) form.append("object", prompt.object);
    const res = await api("/v1/classify", form);
    if (res.mask && res.mask.png_base64) await drawMask(res.mask.png_base64, state.colors[res.label]);
    if (res.region && res.region.detection) drawMarker({ box: res.region.detection.box });
    const where = res.mask ? `${res.mask.area.toLocaleString()} px region (${res.region.source})` : "whole image";
    renderTop(res.label, `${where} · ${Math.round(res.timing_ms)} ms`, res.top);
    setStatus(`${res.label} ${(100 * res.confidence).toFixed(0)}%`);
  });
}

function segmentWhole() {
  return run("mapping materials…", async () => {
    clearCanvas("draw");
    clearCanvas("overlay");
    state.map = null;
    const form = new FormData();
    form.append("image", state.blob, state.name);
    form.append("mode", $("map-mode").value);
    form.append("legend", "false");
    form.append("alpha", "0.55");
    const res = await api("/v1/segment", form);
    const ov = new Image();
    ov.src = "data:image/png;base64," + res.overlay_png_base64;
    await ov.decode();
    clearCanvas("overlay");
    $("overlay").getContext("2d").drawImage(ov, 0, 0, state.w, state.h);
    const [labels, conf] = await Promise.all([decodePng(res.label_map_png_base64), decodePng(res.confidence_png_base64)]);
    state.map = { labels, conf, classes: res.classes, unlabelled: res.unlabelled_value };
    const legend = res.legend.filter((e) => e.label !== "unlabelled");
    renderTop("Whole image", `${res.mode} map · ${res.regions.length} regions · ${Math.round(res.timing_ms)} ms`,
      legend.slice(0, 8).map((e) => ({ label: e.label, prob: e.fraction })));
    $("result-body").querySelector(".meta").insertAdjacentText("beforeend", " · bars show share of the image");
    renderLegend(res.legend);
    setStatus("hover the photo for details");
  });
}

function hover(ev) {
  const tip = $("hover");
  if (!state.map) { tip.hidden = true; return; }
  const [x, y] = toImage(ev);
  const { labels, conf, classes, unlabelled } = state.map;
  if (x < 0 || y < 0 || x >= labels.width || y >= labels.height) { tip.hidden = true; return; }
  const i = (Math.floor(y) * labels.width + Math.floor(x)) * 4;
  const v = labels.data[i];
  const name = v === unlabelled ? "unlabelled" : classes[v];
  const prob = conf.data[i] / 255;
  tip.innerHTML = "";
  const sw = document.createElement("span"); sw.className = "sw"; sw.style.background = state.colors[name] || "#444";
  tip.append(sw, document.createTextNode(v === unlabelled ? "unlabelled" : `${name} · ${(100 * prob).toFixed(0)}%`));
  const stage = $("stage").getBoundingClientRect();
  tip.style.left = ev.clientX - stage.left + "px";
  tip.style.top = ev.clientY - stage.top + "px";
  tip.hidden = false;
}

// ---------- pointer: click = point, drag = box ----------
function toImage(ev) {
  const r = $("draw").getBoundingClientRect();
  const x = ((ev.clientX - r.left) * state.w) / r.width;
  const y = ((ev.clientY - r.top) * state.h) / r.height;
  return [Math.min(Math.max(x, 0), state.w - 0.5), Math.min(Math.max(y, 0), state.h - 0.5)];
}

function onDown(ev) {
  if (!state.blob || state.busy || ev.button !== 0) return;
  state.drag = { start: toImage(ev), moved: false };
  $("draw").setPointerCapture(ev.pointerId);
}
function onMove(ev) {
  hover(ev);
  if (!state.drag) return;
  const [x, y] = toImage(ev);
  const [x0, y0] = state.drag.start;
  if (Math.abs(x - x0) + Math.abs(y - y0) > 6 * displayScale()) state.drag.moved = true;
  if (state.drag.moved && state.tool === "box") drawMarker({ box: [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)] });
}
function onUp(ev) {
  if (!state.drag) return;
  const [x, y] = toImage(ev);
  const [x0, y0] = state.drag.start;
  const moved = state.drag.moved;
  state.drag = null;
  if (state.tool === "box" && moved) classify({ box: [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)] });
  else if (!state.avail.segmenter.available) showError("drag a box: classifying a clicked point needs SAM, which cannot load here (" + state.avail.segmenter.reason + ")", "needs_sam");
  else classify({ point: [x, y] });
}

// ---------- wiring ----------
function setTool(tool) {
  const button = document.querySelector(`.tool[data-tool="${tool}"]`);
  if (button && button.dataset.unavailable) return;
  state.tool = tool;
  document.querySelectorAll(".tool").forEach((b) => {
    const on = b.dataset.tool === tool;
    b.classList.toggle("active", on);
    b.setAttribute("aria-pressed", String(on));
  });
}

function init() {
  $("file").addEventListener("change", (e) => openFile(e.target.files[0]));
  const stage = $("stage");
  stage.addEventListener("dragover", (e) => { e.preventDefault(); stage.classList.add("dragover"); });
  stage.addEventListener("dragleave", () => stage.classList.remove("dragover"));
  stage.addEventListener("drop", (e) => {
    e.preventDefault();
    stage.classList.remove("dragover");
    if (e.dataTransfer.files.length) openFile(e.dataTransfer.files[0]);
  });
  const draw = $("draw");
  draw.addEventListener("pointerdown", onDown);
  draw.addEventListener("pointermove", onMove);
  draw.addEventListener("pointerup", onUp);
  draw.addEventListener("pointerleave", () => { $("hover").hidden = true; });
  document.querySelectorAll(".tool").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
  $("object-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("object").value.trim();
    if (name && !$("find").dataset.unavailable) classify({ object: name });
  });
  $("whole").addEventListener("click", segmentWhole);
  window.addEventListener("resize", fitPhoto);
  $("token-box").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("fmmc-token", state.token);
    loadModelInfo();
  });
  loadModelInfo();
}

init();
