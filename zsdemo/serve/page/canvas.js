// The sketch canvas: strokes in, JSON value out (gr.HTML js_on_load; `element` and `props` come from Gradio).
// Each finished stroke is searched through this component's server function (`server.stroke_search`) and shown by
// the results view; setting `props.value` then makes Gradio fire .change (the page remembers the sketch). Settings:
// props.side (canvas pixels), props.brush (line width), props.max_points (the server's limit on points).
const canvas = element.querySelector('canvas');
const ctx = canvas.getContext('2d');
const hint = element.querySelector('.zs-pad-hint');
const BRUSH = props.brush;
const MAX_POINTS = props.max_points;
let strokes = [];
let current = null;
let points = 0;  // points in `strokes`, kept under MAX_POINTS so the server never refuses a drawing

function point(e) {
  const r = canvas.getBoundingClientRect();
  return [Math.round((e.clientX - r.left) * canvas.width / r.width),
          Math.round((e.clientY - r.top) * canvas.height / r.height)];
}

function paint() {
  ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = '#000'; ctx.fillStyle = '#000'; ctx.lineWidth = BRUSH; ctx.lineCap = 'round'; ctx.lineJoin = 'round';
  for (const s of strokes) {
    ctx.beginPath(); ctx.moveTo(s[0], s[1]);
    for (let i = 2; i < s.length; i += 2) ctx.lineTo(s[i], s[i + 1]);
    if (s.length === 2) ctx.arc(s[0], s[1], BRUSH / 2, 0, 2 * Math.PI);
    ctx.stroke();
  }
}

function recount() {
  points = strokes.reduce((n, s) => n + s.length / 2, 0);
  const full = points >= MAX_POINTS;
  hint.classList.toggle('zs-full', full);
  hint.textContent = full ? 'The drawing is full: Undo or Clear to draw more.' : 'Draw with mouse, pen or finger.';
}

// The search settings as the page shows them (their components' inputs); the server checks every value.
function setting(id, selector) {
  const el = document.querySelector(`#${id} ${selector}`);
  return el ? el.value : null;
}

function settings() {
  const mode = document.querySelector('#zs-mode input[type=radio]:checked');
  return {k: setting('zs-k', 'input[type=number]'), text: setting('zs-text', 'textarea, input'),
          text_weight: setting('zs-weight', 'input[type=number]'), mode: mode ? mode.value : null,
          mode_label: mode ? (mode.closest('label') || mode.parentElement).textContent.trim() : null};
}

// Newest stroke wins: one search at a time from this page; strokes made meanwhile collapse into one search of the
// latest drawing, sent when the running one is answered. The answer goes straight to the results view (one POST to
// this component's server function, no Gradio event); then the value is set, so the page remembers the sketch (for
// re-runs with new settings and "why this photo") without searching it again.
let running = false;
let latest = null;

// Setting the value makes Gradio re-render this component and fire .change (a request of its own): main-thread work
// that would delay the frame showing the results, and compete with its painting. So the sketch is remembered when
// the browser is idle (the newest one, once), or at once when the person reaches for another control (a result, a
// setting), so that what they ask for next sees this sketch.
const whenIdle = window.requestIdleCallback ? (f) => requestIdleCallback(f, {timeout: 500})
  : (f) => requestAnimationFrame(() => setTimeout(f, 0));
let unremembered = null;
function rememberNow() {
  if (unremembered === null) return;
  props.value = unremembered;
  unremembered = null;
}
function remember(sketch) {
  if (unremembered === null) whenIdle(rememberNow);
  unremembered = sketch;
}
for (const type of ['pointerdown', 'keydown']) {
  document.addEventListener(type, (e) => { if (!canvas.contains(e.target)) rememberNow(); }, true);
}
async function search(value) {
  latest = value;
  if (running) return;
  running = true;
  try {
    while (latest !== null) {
      const sketch = latest;
      latest = null;
      let view;
      try {
        view = await server.stroke_search({sketch: sketch, ...settings()});
      } catch (e) {
        view = {status: '⚠️ The search did not answer; draw again in a moment.', preview: null, items: []};
      }
      if (window.__zsView) window.__zsView.show(view);
      remember(sketch);
    }
  } finally {
    running = false;
  }
}

function send() {
  search(JSON.stringify({width: canvas.width, height: canvas.height, brush: BRUSH, strokes: strokes}));
}

paint();
canvas.addEventListener('pointerdown', (e) => {
  e.preventDefault(); canvas.setPointerCapture(e.pointerId);
  if (points >= MAX_POINTS) return;
  current = point(e); strokes.push(current); points += 1; paint();
});
canvas.addEventListener('pointermove', (e) => {
  if (!current) return;
  const events = (e.getCoalescedEvents ? e.getCoalescedEvents() : [e]).slice(0, Math.max(0, MAX_POINTS - points));
  for (const ev of events) { const p = point(ev); current.push(p[0], p[1]); }
  points += events.length;
  const n = current.length;
  ctx.beginPath(); ctx.moveTo(current[Math.max(0, n - 2 * events.length - 2)], current[Math.max(1, n - 2 * events.length - 1)]);
  for (let i = Math.max(0, n - 2 * events.length); i < n; i += 2) ctx.lineTo(current[i], current[i + 1]);
  ctx.stroke();
});
function finish() { if (!current) return; current = null; paint(); recount(); send(); }
canvas.addEventListener('pointerup', finish);
canvas.addEventListener('pointercancel', finish);
element.querySelector('[data-act=undo]').addEventListener('click', () => { strokes.pop(); paint(); recount(); send(); });
element.querySelector('[data-act=clear]').addEventListener('click', () => { strokes = []; paint(); recount(); send(); });
canvas.dataset.ready = 'true';  // strokes are heard from here on (tests and benchmarks wait for it)
