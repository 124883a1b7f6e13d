/* Flotilla console: operator views over the gateway's /system and /async-* routes.
 *
 * Everything the API returns is treated as untrusted text: the DOM is built with
 * createElement/textContent only, and API values never become href or src targets. */
(function () {
  'use strict';

  // ------------------------------------------------------------------ helpers

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const FINAL_STATES = new Set(['succeeded', 'failed', 'dead', 'cancelled']);
  const REQUEST_TIMEOUT_MS = 30000;
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });

  /** Sets attributes on a node. Only plain attributes, dataset entries, textContent and event
   *  listeners (functions) are accepted: nothing here can ever parse HTML. */
  function setAttrs(node, attrs) {
    if (!attrs) return;
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'text') node.textContent = String(value);
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key.startsWith('on') && typeof value === 'function') {
        node.addEventListener(key.slice(2).toLowerCase(), value);
      } else if (key === 'style' || key.startsWith('on') || /html/i.test(key)) {
        throw new Error('el: refusing attribute ' + key);
      } else node.setAttribute(key, value === true ? '' : String(value));
    }
  }

  function appendChildren(node, children) {
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      if (Array.isArray(child)) appendChildren(node, child);
      else if (child instanceof Node) node.appendChild(child);
      else node.appendChild(document.createTextNode(String(child)));
    }
  }

  /** el('td', {'data-field': 'x'}, 'text', otherNode): strings become text nodes. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    appendChildren(node, children);
    return node;
  }

  function svgEl(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    appendChildren(node, children);
    return node;
  }

  /** Writes text only when it changed, so polling does not churn the DOM. */
  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  /** Shows text in a message area; kind 'error' or 'ok' colours it. */
  function say(id, text, kind) {
    const node = $(id);
    setText(node, text || '');
    if (kind) node.dataset.kind = kind;
    else delete node.dataset.kind;
  }

  const show = (v) => (v === null || v === undefined || v === '' ? '—' : String(v));
  const fmtNum = (v) => (typeof v === 'number' && Number.isFinite(v) ? String(v) : '—');
  const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many || one + 's'}`;
  const clip = (s, max) => (s.length > max ? s.slice(0, max) + '…' : s);
  const clock = (ms) => new Date(ms).toLocaleTimeString();

  /** 42 -> "42 s", 185 -> "3 min 5 s", 7380 -> "2 h 3 min". */
  function formatAge(seconds) {
    if (typeof seconds !== 'number' || !Number.isFinite(seconds)) return '—';
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${s % 60} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  /** RFC 3339 with nanoseconds is trimmed to milliseconds so every browser parses it. */
  function parseTime(iso) {
    return Date.parse(String(iso).replace(/(\.\d{3})\d+/, '$1'));
  }

  function relative(iso) {
    const t = parseTime(iso);
    if (Number.isNaN(t)) return '';
    const diff = (t - Date.now()) / 1000;
    const abs = Math.abs(diff);
    if (abs < 1) return '(now)';
    const span = abs >= 172800 ? plural(Math.floor(abs / 86400), 'day') : formatAge(abs);
    return diff > 0 ? `(in ${span})` : `(${span} ago)`;
  }

  function hexBytes(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(' ');
  }

  function parseJson(text, headers) {
    const type = headers.get('Content-Type') || '';
    const t = text.trim();
    if (!type.includes('json') && !t.startsWith('{') && !t.startsWith('[')) return null;
    try {
      return JSON.parse(t);
    } catch {
      return null;
    }
  }

  /** One request to this gateway. Never throws: a network failure comes back as status 0. */
  async function api(method, path, body) {
    const headers = { Accept: 'application/json, text/plain;q=0.9, */*;q=0.5' };
    const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const abort = new AbortController();
    init.signal = abort.signal;
    const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
    try {
      // location.origin never carries credentials, which fetch() would refuse.
      const res = await fetch(location.origin + path, init);
      const bytes = new Uint8Array(await res.arrayBuffer());
      const text = new TextDecoder().decode(bytes);
      return {
        status: res.status, ok: res.ok, statusText: res.statusText, headers: res.headers,
        bytes, text, json: parseJson(text, res.headers),
      };
    } catch (err) {
      const why = abort.signal.aborted
        ? `the gateway did not answer within ${REQUEST_TIMEOUT_MS / 1000} s`
        : 'could not reach the gateway' + (err && err.message ? ` (${err.message})` : '');
      return {
        status: 0, ok: false, statusText: '', headers: new Headers(),
        bytes: new Uint8Array(0), text: '', json: null, network: why,
      };
    } finally {
      clearTimeout(timer);
    }
  }

  /** The server's reason for a refusal: short text, or a JSON error/state. */
  function reasonOf(r) {
    const j = r.json;
    let reason = '';
    if (j && typeof j === 'object' && !Array.isArray(j)) {
      // A call's status (409 answers carry one) is described by its state, not its reason.
      if (typeof j.error === 'string' && j.error) reason = j.error;
      else if (typeof j.message === 'string' && j.message) reason = j.message;
      else if (typeof j.state === 'string') reason = `its state is ${j.state}`;
      else if (typeof j.reason === 'string' && j.reason) reason = j.reason;
    }
    return clip(reason || r.text.trim() || 'no reason given', 400);
  }

  function errorText(r) {
    if (r.status === 0) return `Network error: ${r.network}.`;
    return `${r.status}${r.statusText ? ' ' + r.statusText : ''}: ${reasonOf(r)}`;
  }

  /** Wraps an async handler so an unexpected exception still ends up in a message area. */
  function guard(messageId, fn) {
    return (...args) => Promise.resolve()
      .then(() => fn(...args))
      .catch((err) => say(messageId, `Unexpected error: ${err && err.message ? err.message : err}`, 'error'));
  }

  /** Runs a promise from a route or timer; an unexpected exception becomes a message. */
  function safely(messageId, promise) {
    return promise.catch((err) => say(messageId, `Unexpected error: ${err && err.message ? err.message : err}`, 'error'));
  }

  /** Asks in the shared dialog; resolves true only when the operator presses OK. */
  function confirm(text, okLabel, danger) {
    const dialog = $('confirm');
    if (typeof dialog.showModal !== 'function') return Promise.resolve(window.confirm(text));
    if (dialog.open) return Promise.resolve(false);
    const ok = $('confirm-ok');
    $('confirm-text').textContent = text;
    ok.textContent = okLabel;
    ok.classList.toggle('danger', !!danger);
    dialog.returnValue = '';
    const back = document.activeElement;
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => {
        $('confirm-text').textContent = ''; // an open dialog is one with text
        resolve(dialog.returnValue === 'ok');
        if (back && back.isConnected && typeof back.focus === 'function') back.focus();
      }, { once: true });
      dialog.showModal();
      $('confirm-cancel').focus(); // the harmless choice has the focus
    });
  }

  /** Sets the hash; when that changes nothing (same hash again), runs `same` directly. */
  function navigate(hash, same) {
    const before = location.hash;
    location.hash = hash;
    if (location.hash === before) same();
  }

  // ------------------------------------------------------------------ routing

  const VIEWS = ['queues', 'dead-letters', 'batches', 'calls'];
  const TITLES = { queues: 'Queues', 'dead-letters': 'Dead letters', batches: 'Batches', calls: 'Calls' };

  function decode(s) {
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  }

  /** "#/calls/abc" -> {view: 'calls', id: 'abc'}; "#/dead-letters?function=x" -> params. */
  function parseHash() {
    const raw = location.hash.replace(/^#\/?/, '');
    const q = raw.indexOf('?');
    const path = q < 0 ? raw : raw.slice(0, q);
    const query = q < 0 ? '' : raw.slice(q + 1);
    const slash = path.indexOf('/');
    const view = slash < 0 ? path : path.slice(0, slash);
    const id = slash < 0 ? '' : decode(path.slice(slash + 1));
    const params = {};
    for (const pair of query.split('&')) {
      if (!pair) continue;
      const eq = pair.indexOf('=');
      params[decode(eq < 0 ? pair : pair.slice(0, eq))] = eq < 0 ? '' : decode(pair.slice(eq + 1));
    }
    return { view: VIEWS.includes(view) ? view : 'queues', id, params };
  }

  function route() {
    const r = parseHash();
    for (const v of VIEWS) $('view-' + v).hidden = v !== r.view;
    for (const a of document.querySelectorAll('nav a[data-view]')) {
      if (a.dataset.view === r.view) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    document.title = `${TITLES[r.view]} · Flotilla console`;
    // Timers belong to their view: leaving it stops them.
    if (r.view !== 'queues') stopQueues();
    if (r.view !== 'batches') stopBatch();
    if (r.view === 'queues') startQueues();
    else if (r.view === 'dead-letters') enterDeadLetters(r.params.function || '');
    else if (r.view === 'batches') enterBatches(r.id);
    else enterCalls(r.id);
  }

  // ------------------------------------------------------------------ queues

  const QUEUE_POLL_MS = 5000;
  const SPARK_SAMPLES = 60;
  const SPARK_W = 120;
  const SPARK_H = 24;
  const QUEUE_CELLS = ['function', 'shard', 'pending', 'in_flight', 'retrying', 'dead',
    'oldest_pending_age_seconds', 'concurrency_limit', 'rate', 'trend'];

  const Q = {
    entries: new Map(), // "function\0shard" -> row entry (its <tr>, cells, samples, rate)
    sortKey: 'pending',
    sortDir: -1, // 1 ascending, -1 descending
    filter: '',
    timer: null,
    busy: false,
    active: false,
    loaded: false,
    lastText: null, // raw body of the last sampled answer
    lastSampleAt: 0,
    datalistKey: null,
  };

  function startQueues() {
    Q.active = true;
    refreshQueues();
  }

  function stopQueues() {
    Q.active = false;
    clearTimeout(Q.timer);
    Q.timer = null;
  }

  async function refreshQueues() {
    clearTimeout(Q.timer);
    Q.timer = null;
    if (Q.busy) return; // the request under way schedules the next one
    Q.busy = true;
    let r;
    try {
      r = await api('GET', '/system/queues');
      const now = Date.now();
      if (r.ok && Array.isArray(r.json)) {
        applyQueues(r.json, r.text, now);
        fillDatalist(r.json);
        say('queues-updated', `Updated at ${clock(now)}: ${plural(r.json.length, 'queue')}.`);
      } else {
        let why = r.ok ? 'the answer is not a list of queues' : errorText(r);
        if (!/[.!?)]$/.test(why)) why += '.';
        const stale = Q.loaded ? ` Showing data from ${clock(Q.lastSampleAt)}.` : '';
        say('queues-updated', `Update failed at ${clock(now)}: ${why}${stale}`, 'error');
      }
    } catch (err) {
      say('queues-updated', `Update failed: ${err && err.message ? err.message : err}`, 'error');
    } finally {
      Q.busy = false;
      if (Q.active) Q.timer = setTimeout(refreshQueues, QUEUE_POLL_MS);
    }
  }

  function applyQueues(rows, text, now) {
    // The server caches its snapshot for 5 s, so a poll can return the very same snapshot: such a
    // repeat adds no trend sample and does not start a new interval for the rate.
    const repeat = text === Q.lastText && now - Q.lastSampleAt < 7000;
    if (!repeat) {
      Q.lastText = text;
      Q.lastSampleAt = now;
    }
    const seen = new Set();
    for (const row of rows) {
      if (!row || typeof row.function !== 'string') continue;
      const key = row.function + '\u0000' + row.shard;
      seen.add(key);
      let entry = Q.entries.get(key);
      if (!entry) {
        entry = createQueueEntry(row, key);
        Q.entries.set(key, entry);
      }
      entry.row = row;
      if (!repeat) sampleQueue(entry, row, now);
      renderQueueEntry(entry);
    }
    for (const [key, entry] of Q.entries) {
      if (!seen.has(key)) {
        entry.tr.remove();
        Q.entries.delete(key);
      }
    }
    Q.loaded = true;
    arrangeQueues();
  }

  function createQueueEntry(row, key) {
    const tr = el('tr');
    tr.dataset.function = row.function;
    const cells = {};
    for (const field of QUEUE_CELLS) {
      cells[field] = el('td', { 'data-field': field });
      tr.appendChild(cells[field]);
    }
    cells.function.textContent = row.function;
    const title = svgEl('title');
    const line = svgEl('polyline', { fill: 'none' });
    const spark = svgEl('svg', {
      class: 'spark', width: SPARK_W, height: SPARK_H, viewBox: `0 0 ${SPARK_W} ${SPARK_H}`,
      role: 'img', focusable: 'false', 'aria-label': 'Pending trend',
    }, title, line);
    cells.trend.appendChild(spark);
    // The link target is fixed text plus the percent-encoded name: it cannot leave this page.
    const link = el('a', { href: '#/dead-letters?function=' + enc(row.function) });
    return {
      key, tr, cells, spark, title, line, link, row,
      name: row.function, lower: row.function.toLowerCase(),
      samples: [], base: null, rate: null, sparkDirty: false,
    };
  }

  /** Records one poll: a trend sample, and the completion rate between the last two readings. */
  function sampleQueue(entry, row, now) {
    entry.samples.push(num(row.pending));
    if (entry.samples.length > SPARK_SAMPLES) entry.samples.shift();
    entry.sparkDirty = true;
    const completed = row.completed;
    if (typeof completed !== 'number') {
      entry.rate = null; // no replica reports it now; keep the last reading as the base
      return;
    }
    const base = entry.base;
    entry.rate = base && completed >= base.completed && now > base.at
      ? (completed - base.completed) / ((now - base.at) / 1000)
      : null; // first reading, or the counter dropped (a replica restarted)
    entry.base = { completed, at: now };
  }

  function formatLimit(row) {
    if (typeof row.concurrency_limit !== 'number') return '—';
    if (row.adaptive === true) return `${row.concurrency_limit} adaptive`;
    if (row.adaptive === false) return `${row.concurrency_limit} fixed`;
    return String(row.concurrency_limit);
  }

  function renderQueueEntry(entry) {
    const { row, cells } = entry;
    setText(cells.shard, fmtNum(row.shard));
    setText(cells.pending, fmtNum(row.pending));
    setText(cells.in_flight, fmtNum(row.in_flight));
    setText(cells.retrying, fmtNum(row.retrying));
    renderDeadCell(entry);
    setText(cells.oldest_pending_age_seconds, formatAge(row.oldest_pending_age_seconds));
    setText(cells.concurrency_limit, formatLimit(row));
    const refusals = typeof row.refusals === 'number' ? `${plural(row.refusals, 'refusal')} since the replicas started` : '';
    if (cells.concurrency_limit.title !== refusals) cells.concurrency_limit.title = refusals;
    setText(cells.rate, entry.rate === null ? '—' : entry.rate.toFixed(1));
    if (entry.sparkDirty) drawSpark(entry);
  }

  /** A dead count above zero links to that function's dead letters; the text stays the number. */
  function renderDeadCell(entry) {
    const dead = entry.row.dead;
    const td = entry.cells.dead;
    if (typeof dead === 'number' && dead > 0) {
      setText(entry.link, String(dead));
      if (entry.link.parentNode !== td) td.replaceChildren(entry.link);
    } else {
      if (entry.link.parentNode === td) entry.link.remove();
      setText(td, fmtNum(dead));
    }
  }

  /** Newest sample at the right edge; 60 samples fill the width. */
  function drawSpark(entry) {
    entry.sparkDirty = false;
    const s = entry.samples;
    if (!s.length) return;
    const min = Math.min(...s);
    const max = Math.max(...s);
    const step = (SPARK_W - 2) / (SPARK_SAMPLES - 1);
    const y = (v) => (max === min ? SPARK_H / 2 : 2 + (1 - (v - min) / (max - min)) * (SPARK_H - 4));
    const points = s.map((v, i) => `${(SPARK_W - 1 - (s.length - 1 - i) * step).toFixed(1)},${y(v).toFixed(1)}`);
    if (s.length === 1) points.unshift(`${(SPARK_W - 1 - step).toFixed(1)},${y(s[0]).toFixed(1)}`);
    entry.line.setAttribute('points', points.join(' '));
    const label = `Pending ${min}–${max} over the last ${plural(s.length, 'poll')}`;
    entry.title.textContent = label;
    entry.spark.setAttribute('aria-label', label);
  }

  function sortValue(entry, key) {
    if (key === 'function') return entry.name;
    if (key === 'rate') return entry.rate;
    const v = entry.row[key];
    return typeof v === 'number' && Number.isFinite(v) ? v : null;
  }

  /** Unknown values sort last in either direction; ties fall back to name, then shard. */
  function compareEntries(a, b) {
    const va = sortValue(a, Q.sortKey);
    const vb = sortValue(b, Q.sortKey);
    if (va === null && vb !== null) return 1;
    if (vb === null && va !== null) return -1;
    if (va !== null && va !== vb) {
      const c = typeof va === 'string' ? collator.compare(va, vb) : va - vb;
      if (c) return c * Q.sortDir;
    }
    return collator.compare(a.name, b.name) || num(a.row.shard) - num(b.row.shard);
  }

  /** Sorts, then moves rows only when their order actually changed. */
  function arrangeQueues() {
    const sorted = Array.from(Q.entries.values()).sort(compareEntries);
    const tbody = $('queues').tBodies[0];
    let same = tbody.childElementCount === sorted.length;
    let node = tbody.firstElementChild;
    for (let i = 0; same && i < sorted.length; i++) {
      if (node !== sorted[i].tr) same = false;
      node = node && node.nextElementSibling;
    }
    if (!same) {
      const frag = document.createDocumentFragment();
      for (const entry of sorted) frag.appendChild(entry.tr);
      tbody.appendChild(frag);
    }
    updateSortHeaders();
    applyQueueFilter();
  }

  function applyQueueFilter() {
    const f = Q.filter.trim().toLowerCase();
    let shown = 0;
    for (const entry of Q.entries.values()) {
      const visible = !f || entry.lower.includes(f);
      if (entry.tr.hidden === visible) entry.tr.hidden = !visible;
      if (visible) shown++;
    }
    const none = Q.loaded && Q.entries.size === 0;
    $('queues-empty').hidden = !none;
    $('queues-wrap').hidden = none;
    const nomatch = $('queues-nomatch');
    nomatch.hidden = !(Q.entries.size > 0 && shown === 0);
    if (!nomatch.hidden) setText(nomatch, `No function matches “${Q.filter.trim()}”.`);
  }

  function updateSortHeaders() {
    for (const btn of document.querySelectorAll('#queues button[data-sort]')) {
      const th = btn.closest('th');
      if (btn.dataset.sort === Q.sortKey) th.setAttribute('aria-sort', Q.sortDir > 0 ? 'ascending' : 'descending');
      else th.removeAttribute('aria-sort');
    }
  }

  function onSortClick(event) {
    const btn = event.target.closest('button[data-sort]');
    if (!btn) return;
    const key = btn.dataset.sort;
    if (Q.sortKey === key) Q.sortDir = -Q.sortDir;
    else {
      Q.sortKey = key;
      Q.sortDir = key === 'function' ? 1 : -1; // names A–Z first, numbers largest first
    }
    arrangeQueues();
  }

  /** Functions with dead letters, offered as suggestions in the dead-letter filter. */
  function fillDatalist(rows) {
    const names = Array.from(new Set(rows
      .filter((r) => r && typeof r.function === 'string' && num(r.dead) > 0)
      .map((r) => r.function))).sort(collator.compare);
    const key = names.join('\u0000');
    if (key === Q.datalistKey) return;
    Q.datalistKey = key;
    $('dl-functions').replaceChildren(...names.map((name) => el('option', { value: name })));
  }

  // ------------------------------------------------------------------ dead letters

  const PAGE_SIZE = 100;
  const D = {
    filter: '', // function of the list shown ('' = all)
    next: null,
    total: 0,
    gen: 0, // bumps on every list load; stale answers are dropped
    letters: new Map(), // sequence -> list item
    current: null, // sequence in the detail panel
    detail: null,
    busy: false,
  };

  const LETTER_FIELDS = [
    ['letter-sequence', 'sequence'], ['letter-function', 'function'], ['letter-call-id', 'call_id'],
    ['letter-kind', 'kind'], ['letter-reason', 'reason'], ['letter-attempts', 'attempts'],
    ['letter-last-status', 'last_status'], ['letter-time', 'time'], ['letter-method', 'method'],
    ['letter-path', 'path'], ['letter-query', 'query'], ['letter-origin-stream', 'origin_stream'],
    ['letter-origin-sequence', 'origin_sequence'], ['letter-origin-subject', 'origin_subject'],
    ['letter-body-bytes', 'body_bytes'],
  ];

  function enterDeadLetters(fn) {
    D.filter = fn;
    $('dl-function').value = fn;
    closeLetter(false);
    say('dl-message', '');
    updateReplayFunctionButton();
    safely('dl-message', loadLetters(false));
    // Suggestions for the filter; a failure here only means no suggestions.
    api('GET', '/system/queues').then((r) => {
      if (r.ok && Array.isArray(r.json)) fillDatalist(r.json);
    });
  }

  function updateReplayFunctionButton() {
    const btn = $('dl-replay-function');
    btn.disabled = !D.filter || D.busy;
    setText(btn, D.filter ? `Replay all of ${D.filter}` : 'Replay all of a function');
  }

  async function loadLetters(append) {
    const gen = ++D.gen;
    const params = new URLSearchParams();
    if (D.filter) params.set('function', D.filter);
    if (append && D.next !== null) params.set('after', String(D.next));
    params.set('limit', String(PAGE_SIZE));
    const more = $('dl-more');
    more.disabled = true;
    if (!append) setText($('dl-summary'), 'Loading…');
    const r = await api('GET', '/system/dead-letters?' + params.toString());
    if (gen !== D.gen) return;
    more.disabled = false;
    const list = r.ok && r.json && Array.isArray(r.json.dead_letters) ? r.json.dead_letters : null;
    if (!list) {
      if (!append) setText($('dl-summary'), '');
      say('dl-message', r.ok ? 'The answer has no dead_letters list.' : errorText(r), 'error');
      return;
    }
    const tbody = $('dead-letters').tBodies[0];
    // A reload after an action replaces the rows: keep keyboard focus near where it was.
    let focusRow = -1;
    let focusClass = 'inspect';
    if (!append && tbody.contains(document.activeElement)) {
      focusRow = Array.prototype.indexOf.call(tbody.rows, document.activeElement.closest('tr'));
      const m = /\b(inspect|replay|delete)\b/.exec(document.activeElement.className);
      if (m) focusClass = m[1];
    }
    if (!append) {
      tbody.replaceChildren();
      D.letters.clear();
    }
    const rows = list.filter((l) => l && typeof l === 'object').map((l) => {
      D.letters.set(Number(l.sequence), l);
      return letterRow(l);
    });
    tbody.append(...rows);
    D.next = typeof r.json.next === 'number' ? r.json.next : null;
    D.total = num(r.json.total);
    setText($('dl-summary'), plural(D.total, 'dead letter'));
    $('dl-empty').hidden = tbody.childElementCount > 0;
    const moreWasFocused = document.activeElement === more;
    more.hidden = D.next === null;
    // The More button vanishes on the last page: keep keyboard focus in the table.
    if (moreWasFocused && more.hidden && rows.length) rows[0].querySelector('button').focus();
    if (focusRow >= 0) {
      const tr = tbody.rows[Math.min(focusRow, tbody.rows.length - 1)];
      const target = tr && tr.querySelector('button.' + focusClass);
      (target || $('dl-title')).focus();
    }
  }

  function letterRow(l) {
    const seq = Number(l.sequence);
    const cell = (field, v) => el('td', { 'data-field': field }, show(v));
    const seqId = 'dl-seq-' + seq;
    const tr = el('tr');
    tr.dataset.sequence = String(seq);
    tr.append(
      el('td', { 'data-field': 'sequence', id: seqId }, show(l.sequence)),
      cell('function', l.function), cell('call_id', l.call_id), cell('kind', l.kind),
      cell('reason', l.reason), cell('attempts', l.attempts), cell('time', l.time),
      el('td', { class: 'actions' }, el('div', { class: 'row-actions' },
        el('button', { type: 'button', class: 'inspect', 'aria-describedby': seqId }, 'Inspect'),
        el('button', { type: 'button', class: 'replay', 'aria-describedby': seqId }, 'Replay'),
        el('button', { type: 'button', class: 'delete danger', 'aria-describedby': seqId }, 'Delete'))));
    return tr;
  }

  function onLetterTableClick(event) {
    const btn = event.target.closest('button');
    const tr = btn && btn.closest('tr[data-sequence]');
    if (!tr) return;
    const seq = Number(tr.dataset.sequence);
    if (btn.classList.contains('inspect')) return inspectLetter(seq);
    if (btn.classList.contains('replay')) return replayLetter(seq);
    if (btn.classList.contains('delete')) return deleteLetter(seq);
    return undefined;
  }

  function describeLetter(seq) {
    const l = D.letters.get(seq) || (D.detail && Number(D.detail.sequence) === seq ? D.detail : null);
    return l && l.function ? `dead letter ${seq} of function “${l.function}”` : `dead letter ${seq}`;
  }

  const emptySum = () => ({ replayed: 0, skipped: [], failed: [] });

  function addReplay(sum, report) {
    sum.replayed += num(report.replayed);
    if (Array.isArray(report.skipped)) sum.skipped.push(...report.skipped);
    if (Array.isArray(report.failed)) sum.failed.push(...report.failed);
    return sum;
  }

  function listReasons(items) {
    const shown = items.slice(0, 10).map((i) => `${show(i && i.sequence)} (${show(i && i.reason)})`);
    if (items.length > 10) shown.push(`and ${items.length - 10} more`);
    return shown.join('; ');
  }

  function replayText(sum) {
    let text = `Replayed ${sum.replayed}, skipped ${sum.skipped.length}, failed ${sum.failed.length}.`;
    if (sum.skipped.length) text += ` Skipped: ${listReasons(sum.skipped)}.`;
    if (sum.failed.length) text += ` Failed: ${listReasons(sum.failed)}.`;
    return text;
  }

  async function replayLetter(seq) {
    const what = describeLetter(seq);
    if (!await confirm(`Replay ${what}? Its call is queued again.`, 'Replay')) return;
    say('dl-message', `Replaying letter ${seq}…`);
    const r = await api('POST', '/system/dead-letters/replay', { sequences: [seq] });
    if (!r.ok || !r.json || typeof r.json !== 'object') {
      say('dl-message', r.ok ? 'The answer is not a replay report.' : errorText(r), 'error');
      return;
    }
    const sum = addReplay(emptySum(), r.json);
    say('dl-message', replayText(sum), sum.failed.length || sum.skipped.length ? 'error' : 'ok');
    if (D.current === seq && sum.replayed > 0) closeLetter(false);
    await loadLetters(false);
  }

  /** Replays every letter of the filtered function, following `next` until the server is done. */
  async function replayFunction() {
    const fn = D.filter;
    if (!fn || D.busy) return;
    const text = `Replay all ${plural(D.total, 'dead letter')} of function “${fn}”? Their calls are queued again.`;
    if (!await confirm(text, 'Replay all')) return;
    D.busy = true;
    updateReplayFunctionButton();
    const sum = emptySum();
    let after = null;
    let error = '';
    try {
      for (let round = 0; round < 100000; round++) {
        say('dl-message', `Replaying the dead letters of ${fn}… ${sum.replayed} so far.`);
        const body = after === null ? { function: fn } : { function: fn, after };
        const r = await api('POST', '/system/dead-letters/replay', body);
        if (!r.ok || !r.json || typeof r.json !== 'object') {
          error = r.ok ? 'The answer is not a replay report.' : errorText(r);
          break;
        }
        addReplay(sum, r.json);
        const next = r.json.next;
        // Stop when done, or if the server would not move forward (never loop in place).
        if (typeof next !== 'number' || (after !== null && next <= after)) break;
        after = next;
      }
    } finally {
      D.busy = false;
      updateReplayFunctionButton();
    }
    const text2 = replayText(sum) + (error ? ` Stopped: ${error}` : '');
    say('dl-message', text2, error || sum.failed.length || sum.skipped.length ? 'error' : 'ok');
    if (D.current !== null) closeLetter(false);
    await loadLetters(false);
  }

  async function deleteLetter(seq) {
    const what = describeLetter(seq);
    if (!await confirm(`Delete ${what}? It cannot be replayed afterwards.`, 'Delete', true)) return;
    say('dl-message', `Deleting letter ${seq}…`);
    const r = await api('DELETE', '/system/dead-letters/' + enc(String(seq)));
    if (r.ok) {
      say('dl-message', `Deleted letter ${seq}.`, 'ok');
      if (D.current === seq) closeLetter(false);
    } else if (r.status === 404) {
      say('dl-message', `Letter ${seq} is already gone (${errorText(r)}).`, 'error');
      if (D.current === seq) closeLetter(false);
    } else {
      say('dl-message', errorText(r), 'error');
      return;
    }
    await loadLetters(false);
  }

  async function inspectLetter(seq) {
    D.current = seq;
    D.detail = null;
    const panel = $('letter');
    panel.hidden = false;
    setText($('letter-title'), `Letter ${seq}`);
    for (const [id] of LETTER_FIELDS) setText($(id), '');
    setText($('letter-callback'), '');
    $('letter-headers').tBodies[0].replaceChildren();
    setText($('letter-body-info'), 'Loading…');
    $('letter-body').textContent = '';
    $('letter-title').focus();
    const r = await api('GET', '/system/dead-letters/' + enc(String(seq)));
    if (D.current !== seq) return;
    if (!r.ok || !r.json || typeof r.json !== 'object') {
      if (r.status === 404) {
        say('dl-message', `Letter ${seq} is gone: replayed, deleted or expired (${errorText(r)}).`, 'error');
        closeLetter(false);
        await loadLetters(false);
      } else {
        setText($('letter-body-info'), '');
        say('dl-message', r.ok ? 'The answer is not a dead letter.' : errorText(r), 'error');
      }
      return;
    }
    renderLetter(r.json);
  }

  function renderLetter(l) {
    D.detail = l;
    for (const [id, key] of LETTER_FIELDS) setText($(id), show(l[key]));
    setText($('letter-callback'), l.callback_url ? String(l.callback_url) : 'none');
    const headers = Array.isArray(l.headers) ? l.headers : [];
    $('letter-headers').tBodies[0].replaceChildren(...(headers.length
      ? headers.map((h) => el('tr', null, el('td', null, show(h && h.name)), el('td', null, h ? String(h.value ?? '') : '')))
      : [el('tr', null, el('td', { colspan: 2, class: 'empty' }, 'No headers.'))]));
    const body = l.body;
    if (!body || typeof body !== 'object') {
      setText($('letter-body-info'), 'No body stored.');
      $('letter-body').textContent = '';
      return;
    }
    const encoding = show(body.encoding);
    setText($('letter-body-info'), body.truncated
      ? `${encoding}, first ${fmtNum(body.preview_bytes)} of ${fmtNum(body.bytes)} bytes`
      : `${plural(num(body.bytes), 'byte')}, ${encoding}`);
    $('letter-body').textContent = typeof body.preview === 'string' ? body.preview : '';
  }

  function closeLetter(restoreFocus) {
    const seq = D.current;
    const panel = $('letter');
    const hadFocus = panel.contains(document.activeElement);
    D.current = null;
    D.detail = null;
    panel.hidden = true;
    if (!restoreFocus) {
      if (hadFocus) $('dl-title').focus(); // the focused button just disappeared
      return;
    }
    const tr = document.querySelector(`#dead-letters tr[data-sequence="${seq}"]`);
    const target = tr ? tr.querySelector('button.inspect') : $('dl-function');
    target.focus();
  }

  // ------------------------------------------------------------------ batches

  const BATCH_POLL_MS = 2000;
  const BAR_STATES = ['succeeded', 'failed', 'dead', 'cancelled', 'running', 'retrying', 'queued'];
  const COUNT_STATES = ['queued', 'running', 'retrying', 'succeeded', 'failed', 'dead', 'cancelled', 'refused', 'total'];
  const B = { gen: 0, timer: null, id: null };

  function stopBatch() {
    B.gen++; // answers of earlier polls are dropped
    clearTimeout(B.timer);
    B.timer = null;
  }

  function enterBatches(id) {
    stopBatch();
    if (!id) {
      B.id = null;
      $('batch').hidden = true;
      say('batch-message', '');
      return;
    }
    if (id !== B.id) $('batch').hidden = true;
    B.id = id;
    $('batch-id').value = id;
    say('batch-message', 'Loading…');
    safely('batch-message', pollBatch(id, B.gen));
  }

  async function pollBatch(id, gen) {
    const r = await api('GET', '/async-batch/' + enc(id));
    if (gen !== B.gen) return; // left the view or asked for another batch
    let again = false;
    if (r.ok && r.json && typeof r.json === 'object') {
      renderBatch(r.json);
      say('batch-message', '');
      again = !r.json.done;
    } else if (r.status === 404) {
      $('batch').hidden = true;
      say('batch-message', `No batch with this id (${errorText(r)}).`, 'error');
    } else {
      // Keep the last numbers; a network or server failure may pass, so keep asking.
      again = r.status === 0 || r.status >= 500;
      say('batch-message', (r.ok ? 'The answer is not a batch.' : errorText(r)) + (again ? ' Trying again…' : ''), 'error');
    }
    if (again) B.timer = setTimeout(() => safely('batch-message', pollBatch(id, gen)), BATCH_POLL_MS);
  }

  function renderBatch(b) {
    $('batch').hidden = false;
    setText($('batch-title-id'), show(b.batch_id));
    const state = $('batch-state');
    setText(state, b.done ? 'done' : 'in progress');
    state.dataset.done = String(!!b.done);
    setText($('batch-function'), show(b.function));
    setText($('batch-total'), fmtNum(b.total));
    setText($('batch-callback'), b.callback_url ? String(b.callback_url) : 'none');
    for (const s of COUNT_STATES) setText(document.querySelector(`#batch td[data-count="${s}"]`), fmtNum(b[s]));
    renderBar(b);
    setText($('batch-updated'), `Updated at ${clock(Date.now())}${b.done ? '' : '; refreshing every 2 s'}.`);
  }

  function renderBar(b) {
    const parts = BAR_STATES.map((s) => [s, num(b[s])]).filter(([, n]) => n > 0);
    const sum = parts.reduce((acc, [, n]) => acc + n, 0);
    const whole = Math.max(sum, num(b.total) - num(b.refused));
    const spans = parts.map(([s, n]) => {
      const span = el('span', { 'data-state': s, title: `${s}: ${n}` });
      span.style.width = `${((n / whole) * 100).toFixed(3)}%`;
      return span;
    });
    const bar = $('batch-bar');
    bar.replaceChildren(...spans);
    bar.setAttribute('aria-label', sum
      ? `Batch progress: ${parts.map(([s, n]) => `${s} ${n}`).join(', ')} of ${whole}`
      : 'Batch progress: no calls');
  }

  // ------------------------------------------------------------------ calls

  const RESULT_HEX_LIMIT = 4096;
  const RESULT_TEXT_LIMIT = 1000000;
  const CALL_FIELDS = ['call_id', 'function', 'attempts', 'status', 'reason', 'accepted_at',
    'updated_at', 'not_before', 'next_attempt_at', 'batch_id'];
  const TIME_FIELDS = new Set(['accepted_at', 'updated_at', 'not_before', 'next_attempt_at']);
  // Control characters other than tab, newline and carriage return mark a body as binary.
  const CONTROL_CHARS = /[\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]/;
  const C = { gen: 0, id: null, call: null };

  function enterCalls(id) {
    if (!id) {
      C.gen++;
      C.id = null;
      C.call = null;
      $('call').hidden = true;
      say('call-message', '');
      return;
    }
    safely('call-message', lookupCall(id, false));
  }

  /** Reads the call; keepMessage leaves an action's result in the message area. */
  async function lookupCall(id, keepMessage) {
    const gen = ++C.gen;
    if (id !== C.id) {
      $('call').hidden = true;
      C.call = null;
    }
    C.id = id;
    $('call-id').value = id;
    if (!keepMessage) say('call-message', 'Looking up…');
    const r = await api('GET', '/async-call/' + enc(id));
    if (gen !== C.gen) return;
    if (r.ok && r.json && typeof r.json === 'object') {
      C.call = r.json;
      renderCall(r.json);
      if (!keepMessage) say('call-message', '');
      if (FINAL_STATES.has(r.json.state)) await loadResult(id, gen);
      else {
        $('call-result-box').hidden = true;
        setText($('call-result-info'), '');
        $('call-result').textContent = '';
      }
      return;
    }
    const prefix = keepMessage ? $('call-message').textContent + ' ' : '';
    if (r.status === 404) {
      $('call').hidden = true;
      say('call-message', `${prefix}No call with this id (or older than the status retention). (${errorText(r)})`, 'error');
    } else {
      say('call-message', prefix + (r.ok ? 'The answer is not a call status.' : errorText(r)), 'error');
    }
  }

  function renderCall(c) {
    $('call').hidden = false;
    setText($('call-title-id'), show(c.call_id));
    const state = $('call-state');
    setText(state, show(c.state));
    state.dataset.state = String(c.state);
    for (const field of CALL_FIELDS) {
      const dd = document.querySelector(`#call dd[data-field="${field}"]`);
      const v = c[field];
      if (TIME_FIELDS.has(field) && typeof v === 'string' && v) {
        dd.replaceChildren(el('time', { datetime: v }, v), el('span', { class: 'hint' }, ' ' + relative(v)));
      } else {
        dd.textContent = show(v);
      }
    }
    $('call-json').textContent = JSON.stringify(c, null, 2);
    $('call-cancel').hidden = FINAL_STATES.has(c.state);
    $('call-open-batch').hidden = !c.batch_id;
  }

  /** A body as text when it is clean UTF-8, else as hex of its first bytes. */
  function bodyAsText(bytes) {
    let text = null;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      text = null;
    }
    if (text !== null && !CONTROL_CHARS.test(text)) return { hex: false, text };
    return { hex: true, text: hexBytes(bytes.subarray(0, RESULT_HEX_LIMIT)) };
  }

  async function loadResult(id, gen) {
    const box = $('call-result-box');
    const info = $('call-result-info');
    const pre = $('call-result');
    box.hidden = false;
    setText(info, 'Loading the result…');
    pre.textContent = '';
    const r = await api('GET', `/async-call/${enc(id)}/result`);
    if (gen !== C.gen) return;
    if (r.ok) {
      const status = r.headers.get('X-Function-Status');
      const type = r.headers.get('Content-Type') || 'no content type';
      const n = r.bytes.length;
      const body = bodyAsText(r.bytes);
      let text = `Function answered ${status || '(status not given)'}, ${type}, ${plural(n, 'byte')}`;
      if (body.hex) text += n > RESULT_HEX_LIMIT ? `; binary, first ${RESULT_HEX_LIMIT} bytes shown as hex` : '; binary, shown as hex';
      else if (body.text.length > RESULT_TEXT_LIMIT) text += `; first ${RESULT_TEXT_LIMIT} characters shown`;
      setText(info, text + '.');
      pre.textContent = body.hex ? body.text : body.text.slice(0, RESULT_TEXT_LIMIT);
    } else if (r.status === 404) {
      setText(info, `No result: ${reasonOf(r)} (404).`);
    } else if (r.status === 409) {
      setText(info, 'The call has not finished yet, so there is no result (409).');
    } else {
      setText(info, `The result could not be read: ${errorText(r)}`);
    }
  }

  async function cancelCall() {
    const id = C.id;
    if (!id) return;
    const fn = C.call && C.call.function ? ` of function “${C.call.function}”` : '';
    if (!await confirm(`Cancel call ${id}${fn}? It will not run (or is stopped if running).`, 'Cancel call', true)) return;
    const btn = $('call-cancel');
    btn.disabled = true;
    say('call-message', 'Cancelling…');
    try {
      const r = await api('DELETE', '/async-call/' + enc(id));
      if (r.status === 202) say('call-message', 'Cancel requested.', 'ok');
      else if (r.status === 409) say('call-message', `Not cancelled (409): the call already finished; ${reasonOf(r)}.`, 'error');
      else {
        say('call-message', errorText(r), 'error');
        if (r.status !== 404) return;
      }
      if (C.id === id) await lookupCall(id, true);
    } finally {
      btn.disabled = false;
    }
  }

  // ------------------------------------------------------------------ wiring

  function wire() {
    // Queues
    $('queues').tHead.addEventListener('click', onSortClick);
    $('queues-refresh').addEventListener('click', () => refreshQueues());
    $('queue-filter').addEventListener('input', (e) => {
      Q.filter = e.target.value;
      applyQueueFilter();
    });

    // Dead letters
    $('dl-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const fn = $('dl-function').value.trim();
      navigate(fn ? '#/dead-letters?function=' + enc(fn) : '#/dead-letters', () => enterDeadLetters(fn));
    });
    $('dl-more').addEventListener('click', guard('dl-message', () => loadLetters(true)));
    $('dl-replay-function').addEventListener('click', guard('dl-message', replayFunction));
    $('dead-letters').tBodies[0].addEventListener('click', guard('dl-message', onLetterTableClick));
    $('letter-replay').addEventListener('click', guard('dl-message', () => D.current !== null && replayLetter(D.current)));
    $('letter-delete').addEventListener('click', guard('dl-message', () => D.current !== null && deleteLetter(D.current)));
    $('letter-close').addEventListener('click', () => closeLetter(true));

    // Batches
    $('batch-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const id = $('batch-id').value.trim();
      if (!id) {
        say('batch-message', 'Enter a batch id.', 'error');
        return;
      }
      navigate('#/batches/' + enc(id), () => enterBatches(id));
    });

    // Calls
    $('call-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const id = $('call-id').value.trim();
      if (!id) {
        say('call-message', 'Enter a call id.', 'error');
        return;
      }
      navigate('#/calls/' + enc(id), () => safely('call-message', lookupCall(id, false)));
    });
    $('call-refresh').addEventListener('click', guard('call-message', () => C.id && lookupCall(C.id, false)));
    $('call-cancel').addEventListener('click', guard('call-message', cancelCall));
    $('call-open-batch').addEventListener('click', () => {
      if (C.call && C.call.batch_id) location.hash = '#/batches/' + enc(String(C.call.batch_id));
    });

    // Confirmation dialog: Escape closes it with an empty returnValue, which means "no".
    $('confirm-ok').addEventListener('click', () => $('confirm').close('ok'));
    $('confirm-cancel').addEventListener('click', () => $('confirm').close('cancel'));

    window.addEventListener('hashchange', guard('queues-updated', route));
  }

  wire();
  route();
})();
