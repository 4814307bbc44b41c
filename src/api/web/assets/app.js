// imgbatch web page: plain JavaScript, no build step, nothing from another site.
// Everything shown about requests comes from the JSON API (/api/...). When the service has API
// keys, the key lives in sessionStorage (this tab only) and goes out as `Authorization: Bearer`,
// never in a URL. Elements are built with textContent and attributes, never from HTML strings
// (the page's content policy requires Trusted Types, so an HTML sink would throw).
'use strict';

const KEY = 'imgbatch.apiKey';
const FINAL = new Set(['completed', 'completed_with_errors', 'failed', 'cancelled']);
const LABELS = {
  pending: 'Pending',
  processing: 'Processing',
  completed: 'Completed',
  completed_with_errors: 'Completed with errors',
  failed: 'Failed',
  cancelled: 'Cancelled',
};
// A request page lists this many products; report.csv has every one.
const MAX_PRODUCTS = 500;
// Above this many images the page reloads products only when the request ends, not on each
// change: a large status body is megabytes.
const LIVE_DETAIL_MAX_IMAGES = 2000;

const $ = (sel) => document.querySelector(sel);

function storedKey() {
  try {
    return sessionStorage.getItem(KEY) || '';
  } catch {
    return '';
  }
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

class ApiError extends Error {
  constructor(status, message, errors = []) {
    super(message);
    this.status = status;
    this.errors = errors;
  }
}

// Calls the API with the stored key. A 401 asks for a key; any other error is thrown with the
// API's own message (and a CSV's line-numbered errors).
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = storedKey();
  if (key) headers.set('Authorization', 'Bearer ' + key);
  let resp;
  try {
    resp = await fetch(path, { ...options, headers, cache: 'no-store' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'The service cannot be reached (' + e.message + ').');
  }
  if (resp.ok) return resp;
  const err = await errorOf(resp);
  if (resp.status === 401) askForKey(err.message);
  throw err;
}

async function errorOf(resp) {
  let message = `${resp.status} ${resp.statusText}`.trim();
  let errors = [];
  try {
    const body = await resp.json();
    if (typeof body.message === 'string') message = body.message;
    if (Array.isArray(body.errors)) errors = body.errors;
  } catch {
    // Not JSON (a proxy's page): the status line says enough.
  }
  return new ApiError(resp.status, message, errors);
}

// --- The API key ---

function askForKey(message) {
  try {
    sessionStorage.removeItem(KEY);
  } catch {
    // Storage refused (private mode): the key cannot be kept.
  }
  $('#content').hidden = true;
  $('#forget-key').hidden = true;
  $('#key-panel').hidden = false;
  $('#key-error').textContent = message || '';
  $('#key-input').focus();
}

function initKey() {
  $('#key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const key = $('#key-input').value.trim();
    if (!key) return;
    try {
      sessionStorage.setItem(KEY, key);
    } catch {
      $('#key-error').textContent = 'This browser refuses to keep the key (session storage is off).';
      return;
    }
    location.reload();
  });
  $('#forget-key').addEventListener('click', () => {
    sessionStorage.removeItem(KEY);
    location.reload();
  });
  if (document.body.dataset.auth !== 'true') return true;
  if (!storedKey()) {
    askForKey('');
    return false;
  }
  $('#forget-key').hidden = false;
  return true;
}

// --- Formatting ---

function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let v = Math.abs(n);
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  const digits = i === 0 ? 0 : v < 10 ? 2 : v < 100 ? 1 : 0;
  return (n < 0 ? '−' : '') + v.toFixed(digits) + ' ' + units[i];
}

function when(iso) {
  const d = new Date(iso);
  return isNaN(d) ? '' : d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

function badge(status) {
  return el('span', { class: 'badge s-' + status, text: LABELS[status] || status });
}

function setBadge(node, status) {
  node.className = 'badge s-' + status;
  node.textContent = LABELS[status] || status;
}

function doneOf(p) {
  return p.completedImages + p.failedImages + p.cancelledImages;
}

function countsText(p) {
  let s = `${p.completedImages} of ${p.totalImages} image${p.totalImages === 1 ? '' : 's'} done`;
  if (p.failedImages) s += `, ${p.failedImages} failed`;
  if (p.cancelledImages) s += `, ${p.cancelledImages} cancelled`;
  return s;
}

function savedText(s) {
  if (!s || !s.bytesIn) return '';
  return `Saved ${bytes(s.savedBytes)} (${s.savedPercent}%)`;
}

function isWebUrl(u) {
  return typeof u === 'string' && /^https?:\/\//i.test(u);
}

// --- Upload ---

function initUpload() {
  const form = $('#upload-form');
  if (!form) return;
  const input = $('#file');
  const drop = $('#drop');
  const out = $('#file-errors');
  const status = $('#upload-status');
  const button = $('#upload-button');

  const clear = () => {
    out.hidden = true;
    out.replaceChildren();
  };
  input.addEventListener('change', clear);
  for (const type of ['dragenter', 'dragover']) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add('over');
    });
  }
  for (const type of ['dragleave', 'drop']) {
    drop.addEventListener(type, () => drop.classList.remove('over'));
  }
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) {
      input.files = e.dataTransfer.files;
      clear();
    }
  });

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clear();
    const file = input.files[0];
    if (!file) {
      showProblem(out, 'Choose a CSV file first.');
      return;
    }
    const max = Number(form.dataset.maxBytes);
    if (max && file.size > max) {
      showProblem(out, `${file.name} is ${bytes(file.size)}, larger than this service's limit of ` +
        `${form.dataset.maxHuman} (IMGBATCH_MAX_UPLOAD_BYTES).`);
      return;
    }
    const data = new FormData();
    data.append('file', file, file.name);
    // Empty fields are left out: the service's defaults apply.
    for (const name of ['quality', 'maxWidth', 'maxHeight', 'format', 'webhookUrl']) {
      const v = form.elements[name].value.trim();
      if (v) data.append(name, v);
    }
    button.disabled = true;
    status.textContent = `Uploading ${file.name}…`;
    try {
      const resp = await api('/api/upload', { method: 'POST', body: data });
      const { requestId } = await resp.json();
      status.textContent = 'Accepted. Opening the request…';
      location.assign('/requests/' + encodeURIComponent(requestId));
    } catch (err) {
      status.textContent = '';
      if (err.status !== 401) showProblem(out, err.message, err.status, err.errors);
    } finally {
      button.disabled = false;
    }
  });
}

// The server's answer next to the file: its message and, for a refused CSV, every problem with
// its line and column.
function showProblem(box, message, status, errors = []) {
  const title = status ? `${message} (${status})` : message;
  box.replaceChildren(el('p', { class: 'title', text: title }));
  if (errors.length) {
    const list = el('ol', { class: 'csv-errors' });
    for (const e of errors) {
      list.append(el('li', {},
        el('span', { class: 'line', text: `Line ${e.line}` }),
        e.column ? el('span', { class: 'col', text: e.column }) : el('span', { class: 'col' }),
        el('span', { class: 'msg', text: e.message })));
    }
    box.append(list);
  }
  box.hidden = false;
  box.focus();
}

// --- Request list ---

function requestItem(r) {
  const p = r.progress;
  const id = r.requestId;
  return el('li', { class: 'request-item', 'data-id': id, 'data-status': r.status },
    el('div', {},
      el('a', { href: '/requests/' + encodeURIComponent(id), text: when(r.createdAt) || id }),
      el('div', { class: 'id', text: id })),
    badge(r.status),
    el('progress', { max: Math.max(p.totalImages, 1), value: doneOf(p), 'aria-label': 'Images done' }),
    el('div', { class: 'counts' },
      el('span', { class: 'hint', text: countsText(p) }),
      el('span', { class: 'hint', text: savedText(r.savings) })));
}

function initList() {
  const list = $('#request-list');
  if (!list) return;
  const limit = Number(list.dataset.limit) || 20;
  const trim = list.dataset.trim === 'true';
  const filter = $('#status-filter');
  const more = $('#more');
  const status = $('#list-status');
  const items = new Map();
  let cursor = null;
  let first = true;

  const page = async (after) => {
    const q = new URLSearchParams({ limit: String(limit) });
    if (filter && filter.value) q.set('status', filter.value);
    if (after) q.set('cursor', after);
    return (await api('/api/requests?' + q)).json();
  };
  const put = (r, where) => {
    const node = requestItem(r);
    const old = items.get(r.requestId);
    if (old) old.replaceWith(node);
    else if (where === 'top') list.prepend(node);
    else list.append(node);
    items.set(r.requestId, node);
  };
  const empty = () => {
    if (items.size === 0) {
      const what = filter && filter.value ? 'No requests with this status.' : 'No requests yet.';
      list.replaceChildren(el('li', { class: 'empty', text: what + ' Upload a CSV to start one.' }));
    } else {
      const e = list.querySelector('.empty');
      if (e) e.remove();
    }
  };

  // The newest page again: new requests go on top, listed ones change in place. Older pages
  // keep their cursor (keyset paging never shifts under new uploads).
  const refresh = async () => {
    const data = await page(null);
    const fresh = data.requests.filter((r) => !items.has(r.requestId));
    for (const r of data.requests) if (items.has(r.requestId)) put(r);
    for (const r of fresh.reverse()) put(r, 'top');
    if (first) {
      cursor = data.nextCursor;
      first = false;
    }
    if (trim) {
      while (items.size > limit) {
        const last = list.lastElementChild;
        items.delete(last.dataset.id);
        last.remove();
      }
    }
    if (more) more.hidden = !cursor;
    empty();
  };

  let timer = null;
  const loop = async () => {
    clearTimeout(timer);
    try {
      await refresh();
      status.textContent = '';
    } catch (err) {
      if (err.status === 401) return;
      status.textContent = err.message;
    }
    if (document.visibilityState === 'visible') timer = setTimeout(loop, 2000);
  };
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') loop();
  });
  if (filter) {
    filter.addEventListener('change', () => {
      items.clear();
      list.replaceChildren();
      cursor = null;
      first = true;
      loop();
    });
  }
  if (more) {
    more.addEventListener('click', async () => {
      more.disabled = true;
      try {
        const data = await page(cursor);
        for (const r of data.requests) put(r, 'bottom');
        cursor = data.nextCursor;
        more.hidden = !cursor;
      } catch (err) {
        status.textContent = err.message;
      } finally {
        more.disabled = false;
      }
    });
  }
  loop();
}

// --- One request ---

// Reads a Server-Sent Events stream through fetch (EventSource cannot send the API key) and
// calls `on(name, data)` for each event. Returns when the stream ends.
async function readEvents(path, on, signal) {
  const resp = await api(path, { signal, headers: { Accept: 'text/event-stream' } });
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let name = 'message';
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let nl;
    while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
      const line = buf.slice(0, nl);
      // A lone \r at the end of a chunk may be half of \r\n: wait for the next chunk.
      if (buf[nl] === '\r' && nl === buf.length - 1) break;
      buf = buf.slice(nl + (buf.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') {
        if (data.length) on(name, data.join('\n'));
        name = 'message';
        data = [];
      } else if (line.startsWith(':')) {
        // A keep-alive comment.
      } else {
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? '' : line.slice(colon + 1);
        if (val.startsWith(' ')) val = val.slice(1);
        if (field === 'event') name = val;
        else if (field === 'data') data.push(val);
      }
    }
  }
}

function initRequest() {
  const root = $('#request');
  if (!root) return;
  const id = root.dataset.id;
  const base = '/api/requests/' + encodeURIComponent(id);
  const actionStatus = $('#action-status');
  const retryButton = $('#retry');
  const cancelButton = $('#cancel');
  const products = $('#products');
  const rendered = new Map();
  let summary = null;
  let following = false;
  let detailTimer = null;
  let lastDetail = 0;

  const showSummary = (s) => {
    summary = s;
    const p = s.progress;
    setBadge($('#req-status'), s.status);
    $('#summary').dataset.status = s.status;
    $('#req-times').textContent = `Uploaded ${when(s.createdAt)} · updated ${when(s.updatedAt)}`;
    const bar = $('#req-progress');
    bar.max = Math.max(p.totalImages, 1);
    bar.value = doneOf(p);
    $('#req-counts').textContent = `${countsText(p)} · ${p.totalProducts} product${p.totalProducts === 1 ? '' : 's'}`;
    const sv = s.savings;
    $('#sv-in').textContent = sv.bytesIn ? bytes(sv.bytesIn) : '—';
    $('#sv-out').textContent = sv.bytesIn ? bytes(sv.bytesOut) : '—';
    $('#sv-saved').textContent = sv.bytesIn ? `${bytes(sv.savedBytes)} (${sv.savedPercent}%)` : '—';
    const final = FINAL.has(s.status);
    cancelButton.disabled = final;
    retryButton.disabled = !(final && (p.failedImages > 0 || (s.status === 'cancelled' && p.cancelledImages > 0)));
    document.title = `${LABELS[s.status] || s.status} · request ${id.slice(0, 8)} · imgbatch`;
  };

  const showOptions = (o) => {
    const node = $('#req-options');
    if (!o) {
      node.hidden = true;
      return;
    }
    const box = o.maxWidth || o.maxHeight
      ? `fit in ${o.maxWidth || 'any'} × ${o.maxHeight || 'any'} px`
      : 'original size';
    node.textContent = `Options: quality ${o.quality}, ${box}, format ${o.format}`;
    node.hidden = false;
  };

  const showWebhook = (w) => {
    const node = $('#req-webhook');
    if (!w) {
      node.hidden = true;
      return;
    }
    let text = `Webhook to ${w.url}: ${w.state}, ${w.attempts} attempt${w.attempts === 1 ? '' : 's'}`;
    if (w.lastError) text += ` (last error: ${w.lastError})`;
    node.textContent = text;
    node.hidden = false;
  };

  const imageItem = (p, img, n) => {
    const thumb = el('div', { class: 'thumb' });
    if (isWebUrl(img.outputImageUrl)) {
      // Outputs come from our own storage; inputs are never loaded by the page.
      const pic = el('img', {
        src: img.outputImageUrl,
        alt: `${p.productName}, image ${n}`,
        loading: 'lazy',
        decoding: 'async',
        width: img.width,
        height: img.height,
      });
      thumb.append(el('a', { href: img.outputImageUrl, target: '_blank', rel: 'noopener' }, pic));
    } else {
      thumb.textContent = LABELS[img.status] || img.status;
    }
    const meta = el('div', { class: 'meta' });
    if (isWebUrl(img.inputImageUrl)) {
      meta.append(el('a', {
        class: 'input',
        href: img.inputImageUrl,
        title: img.inputImageUrl,
        rel: 'noopener noreferrer',
        target: '_blank',
        text: img.inputImageUrl.replace(/^https?:\/\//i, ''),
      }));
    } else {
      meta.append(el('p', { class: 'input', text: img.inputImageUrl }));
    }
    if (img.bytesIn !== null && img.bytesIn !== undefined && img.bytesOut !== null && img.bytesOut !== undefined) {
      const saved = img.bytesIn > 0 ? Math.round((1 - img.bytesOut / img.bytesIn) * 1000) / 10 : 0;
      meta.append(el('p', { class: 'sizes' }, `${bytes(img.bytesIn)} → ${bytes(img.bytesOut)} `,
        el('span', { class: 'saved', text: `−${saved}%` })));
    }
    const facts = [];
    if (img.width && img.height) facts.push(`${img.width}×${img.height}`);
    if (img.format) facts.push(img.format);
    if (img.codec) facts.push(img.codec);
    if (facts.length) meta.append(el('p', { class: 'hint', text: facts.join(' · ') }));
    if (img.error || img.errorCode) {
      const reason = img.error || img.reason || '';
      meta.append(el('p', { class: 'fail' },
        img.errorCode ? el('code', { text: img.errorCode }) : null,
        img.errorCode && reason ? ': ' : '', reason));
    }
    if (img.note) meta.append(el('p', { class: 'hint', text: img.note }));
    return el('li', { class: 'image', 'data-status': img.status }, thumb, meta);
  };

  const productItem = (p) => {
    const list = el('ol', { class: 'images' });
    (p.images || []).forEach((img, i) => list.append(imageItem(p, img, i + 1)));
    return el('li', { class: 'product', 'data-serial': p.serialNumber },
      el('header', {},
        el('h3', {}, el('span', { class: 'serial', text: '#' + p.serialNumber }), p.productName),
        badge(p.status)),
      list);
  };

  // Only products whose data changed are built again, so loaded thumbnails stay put.
  const showProducts = (list) => {
    const shown = list.slice(0, MAX_PRODUCTS);
    const note = $('#products-note');
    note.hidden = list.length <= MAX_PRODUCTS;
    note.textContent = `Showing the first ${MAX_PRODUCTS} of ${list.length} products; report.csv lists every image.`;
    const keep = new Set();
    let prev = null;
    for (const p of shown) {
      const key = String(p.serialNumber);
      keep.add(key);
      const json = JSON.stringify(p);
      let entry = rendered.get(key);
      if (!entry || entry.json !== json) {
        const node = productItem(p);
        if (entry) entry.node.replaceWith(node);
        entry = { json, node };
        rendered.set(key, entry);
      }
      if (entry.node.previousElementSibling !== prev || !entry.node.parentNode) {
        if (prev) prev.after(entry.node);
        else products.prepend(entry.node);
      }
      prev = entry.node;
    }
    for (const [key, entry] of rendered) {
      if (!keep.has(key)) {
        entry.node.remove();
        rendered.delete(key);
      }
    }
  };

  const loadDetail = async () => {
    lastDetail = Date.now();
    const s = await (await api('/api/status/' + encodeURIComponent(id))).json();
    showSummary(s);
    showOptions(s.options);
    showWebhook(s.webhook);
    showProducts(s.products || []);
    return s;
  };

  // Products again after a change, at most every 1.5 s.
  const detailSoon = () => {
    if (detailTimer) return;
    const wait = Math.max(0, 1500 - (Date.now() - lastDetail));
    detailTimer = setTimeout(async () => {
      detailTimer = null;
      try {
        await loadDetail();
      } catch (err) {
        actionStatus.textContent = err.message;
      }
    }, wait);
  };

  const follow = async () => {
    if (following) return;
    following = true;
    $('#req-live').textContent = '· following live';
    let delay = 1000;
    try {
      while (!FINAL.has(summary.status)) {
        try {
          await readEvents(base + '/events', (name, data) => {
            const s = JSON.parse(data);
            const changed = doneOf(s.progress) !== doneOf(summary.progress) || s.status !== summary.status;
            showSummary(s);
            if (name === 'status' || FINAL.has(s.status)) {
              clearTimeout(detailTimer);
              detailTimer = null;
              loadDetail().catch((err) => (actionStatus.textContent = err.message));
            } else if (changed && s.progress.totalImages <= LIVE_DETAIL_MAX_IMAGES) {
              detailSoon();
            }
          });
          delay = 1000;
        } catch (err) {
          if (err.status === 401 || err.status === 404 || err.status === 410) throw err;
          // The stream broke (the service restarted, the network blinked): try again.
          await new Promise((r) => setTimeout(r, delay));
          delay = Math.min(delay * 2, 15000);
        }
      }
    } catch (err) {
      if (err.status !== 401) actionStatus.textContent = err.message;
    } finally {
      following = false;
      $('#req-live').textContent = '';
    }
  };

  const act = async (button, path, doing) => {
    button.disabled = true;
    actionStatus.textContent = doing;
    try {
      const answer = await (await api(base + path, { method: 'POST' })).json();
      actionStatus.textContent = path === '/retry'
        ? `${answer.requeuedImages} image${answer.requeuedImages === 1 ? '' : 's'} queued again.`
        : 'Cancelled.';
      await loadDetail();
      follow();
    } catch (err) {
      if (err.status !== 401) actionStatus.textContent = err.message;
      if (summary) showSummary(summary);
    }
  };
  retryButton.addEventListener('click', () => act(retryButton, '/retry', 'Retrying failed images…'));
  cancelButton.addEventListener('click', () => act(cancelButton, '/cancel', 'Cancelling…'));

  // Downloads: with a key, the file is fetched with the header and saved from memory (a link
  // cannot carry the header, and the key must not go into a URL); without one the browser
  // follows the link itself, streaming to disk.
  for (const link of document.querySelectorAll('a[data-download]')) {
    link.addEventListener('click', async (e) => {
      if (!storedKey()) return;
      e.preventDefault();
      actionStatus.textContent = `Downloading ${link.getAttribute('download')}…`;
      try {
        const blob = await (await api(link.getAttribute('href'))).blob();
        const url = URL.createObjectURL(blob);
        const a = el('a', { href: url, download: link.getAttribute('download') });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 60000);
        actionStatus.textContent = `Downloaded ${link.getAttribute('download')} (${bytes(blob.size)}).`;
      } catch (err) {
        if (err.status !== 401) actionStatus.textContent = err.message;
      }
    });
  }

  loadDetail().then(follow, (err) => {
    if (err.status === 401) return;
    if (err.status === 404 || err.status === 410) {
      root.replaceChildren(el('section', { class: 'panel notice' },
        el('h2', { text: err.status === 404 ? 'Not found' : 'Request deleted' }),
        el('p', { text: err.message })));
      return;
    }
    actionStatus.textContent = err.message;
  });
}

document.addEventListener('DOMContentLoaded', () => {
  if (!initKey()) return;
  initUpload();
  initList();
  initRequest();
});
