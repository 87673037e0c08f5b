// The sketch canvas: strokes in, JSON value out (gr.HTML js_on_load; `element` and `props` come from Gradio).
// Setting `props.value` makes Gradio fire .change once. The settings come from Python as props:
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

function send() {
  props.value = JSON.stringify({width: canvas.width, height: canvas.height, brush: BRUSH, strokes: strokes});
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
