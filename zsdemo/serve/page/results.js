// The results view (gr.HTML js_on_load): renders a view {status, preview, items: [{src, caption, name, mode, score}]}
// that comes either as this component's value (Gradio events: re-runs, uploads) or straight from the canvas's
// search (window.__zsView.show, no Gradio event in between). A click on a result triggers `select` with its name.
const grid = element.querySelector('.zs-grid');
const status = element.querySelector('.zs-status');
const preview = element.querySelector('.zs-preview img');

function item(it, i) {
  const button = document.createElement('button');
  button.type = 'button'; button.className = 'thumbnail-item'; button.dataset.index = String(i);
  const img = document.createElement('img');
  img.src = it.src; img.alt = it.caption;
  const caption = document.createElement('span');
  caption.className = 'caption-label'; caption.textContent = it.caption;
  button.append(img, caption);
  button.addEventListener('click', () => trigger('select', {index: i, value: {name: it.name, mode: it.mode, score: it.score}}));
  return button;
}

function show(view) {
  if (!view || typeof view !== 'object') return;
  status.textContent = view.status || '';
  if (view.preview) { preview.src = view.preview; preview.hidden = false; } else { preview.hidden = true; preview.removeAttribute('src'); }
  grid.replaceChildren(...(view.items || []).map(item));
}

function fromValue() {
  try { show(JSON.parse(props.value)); } catch (e) { /* not a view */ }
}

fromValue();
watch('value', fromValue);
window.__zsView = {show};
