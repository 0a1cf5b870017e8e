// Demo page: one SSEClient, feed and unread counter per stream, plus the publish form.
import { SSEClient } from './sse-client.js';

const $ = (selector, root = document) => root.querySelector(selector);
const readJSON = (id, fallback) => { try { return JSON.parse(document.getElementById(id).textContent); } catch (_) { return fallback; } };
const el = (tag, className, text = '') => Object.assign(document.createElement(tag), { className, textContent: text });
const storage = (key, value) => { // remembers the last id per stream so a reload replays what was missed
  try { return value === undefined ? sessionStorage.getItem(key) : sessionStorage.setItem(key, value); } catch (_) { return null; }
};

const app = $('#demo');
const streams = readJSON('demo-streams', []);
const debug = readJSON('demo-debug', false);
const sseBase = app.dataset.sseUrl || '/sse/';
const publishUrl = app.dataset.publishUrl || '/demo/publish/';
const EVENT_NAMES = ['notification', 'chat', 'message'];
const MAX_ITEMS = 200;
const [badge, stateDetail, lastId, toggle] = ['#state', '#state-detail', '#last-id', '#toggle-connection'].map((s) => $(s));
const tabs = [...document.querySelectorAll('[role="tab"][data-tab]')];
const views = {};
let active = streams[0];

function render() { // header shows the state of the stream whose tab is selected
  const view = views[active];
  if (!view) return;
  const { state, detail } = view;
  badge.textContent = badge.dataset.state = state;
  stateDetail.textContent = state === 'closed' ? detail.reason || ''
    : state !== 'reconnecting' ? '' : detail.seconds == null ? 'retrying…' : `retry in ${detail.seconds}s`;
  lastId.textContent = view.client?.lastEventId || '—'; // client is unset during its first "connecting"
  toggle.textContent = view.state === 'closed' ? 'Connect' : 'Disconnect';
}

function addEvent(stream, name, data, id) {
  const view = views[stream];
  const now = new Date();
  const item = el('li', name === 'reset' ? 'event event-reset' : 'event');
  Object.assign(item.dataset, { eventId: id || '', eventName: name });
  const meta = el('div', 'event-meta');
  const time = el('time', 'event-time', now.toLocaleTimeString());
  time.dateTime = now.toISOString();
  meta.append(el('span', 'event-name', name), el('code', 'event-id', id || 'no id'), time);
  item.append(meta);
  if (name === 'reset') item.append(el('p', 'event-note', 'Some events were missed: the last event id is no longer in the replay window. Showing new events from here on.'));
  item.append(el('pre', 'event-data', typeof data === 'string' ? data : JSON.stringify(data, null, 2)));
  view.feed.prepend(item);
  while (view.feed.children.length > MAX_ITEMS) view.feed.lastElementChild.remove();
  if (id) storage(`sse-demo:last-id:${stream}`, id);
  if (stream === active) render(); else setUnread(stream, view.unread + 1);
}

function setUnread(stream, count) {
  const view = views[stream];
  view.unread = count;
  view.unreadBadge.hidden = count === 0;
  $('.unread-count', view.unreadBadge).textContent = count > 99 ? '99+' : String(count);
}

function select(stream, focus = false) {
  active = stream;
  tabs.forEach((tab) => {
    const selected = tab.dataset.tab === stream;
    tab.setAttribute('aria-selected', String(selected));
    tab.tabIndex = selected ? 0 : -1;
    document.getElementById(tab.getAttribute('aria-controls')).hidden = !selected;
    if (selected && focus) tab.focus();
  });
  setUnread(stream, 0);
  render();
}

streams.forEach((stream) => {
  const tab = tabs.find((t) => t.dataset.tab === stream);
  const view = (views[stream] = {
    state: 'connecting', detail: {}, unread: 0, feed: $(`.feed[data-stream="${stream}"]`), dot: $('.dot', tab), unreadBadge: $('.unread', tab),
  });
  view.client = new SSEClient(`${sseBase}${encodeURIComponent(stream)}/`, {
    eventNames: EVENT_NAMES,
    // The page came with the newest events up to data-last-id: go live from there.
    lastEventId: view.feed.dataset.lastId || storage(`sse-demo:last-id:${stream}`),
    onEvent: (name, data, id) => addEvent(stream, name, data, id),
    onStateChange(state, detail) {
      if (debug && state !== view.state) console.debug(`[sse:${stream}]`, state, detail);
      Object.assign(view, { state, detail });
      view.dot.dataset.state = state;
      view.dot.parentElement.title = `${stream}: ${state}`;
      if (stream === active) render();
    },
  });
});

tabs.forEach((tab, index) => {
  tab.addEventListener('click', () => select(tab.dataset.tab));
  tab.addEventListener('keydown', (event) => {
    const moves = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 };
    if (!(event.key in moves)) return;
    event.preventDefault();
    select(tabs[(moves[event.key] + tabs.length) % tabs.length].dataset.tab, true);
  });
});

toggle.addEventListener('click', () => {
  const view = views[active];
  if (view?.state === 'closed') view.client.connect();
  else view?.client.close('Disconnected from this page');
});

const form = $('#publish-form');
if (form) {
  const result = $('#publish-result');
  const show = (text, ok) => { result.textContent = text; result.dataset.status = ok ? 'ok' : 'error'; };
  const csrfToken = () => form.elements.csrfmiddlewaretoken?.value
    || (document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/) || [])[1] || '';
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const stream = form.elements.stream.value;
    const name = form.elements.event.value.trim() || 'message';
    let data;
    try { data = JSON.parse(form.elements.data.value); } catch (error) { return show(`Invalid JSON: ${error.message}`, false); }
    if (views[stream]) views[stream].client.listen(name); // EventSource only delivers names it listens for
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    show('Sending…', true);
    try {
      const response = await fetch(publishUrl, { method: 'POST', credentials: 'same-origin', body: JSON.stringify({ stream, event: name, data }),
        headers: { 'Content-Type': 'application/json', Accept: 'application/json', 'X-CSRFToken': csrfToken() } });
      const body = await response.json().catch(() => ({}));
      if (response.ok) show(`Published “${name}” to ${stream} with id ${body.id}`, true);
      else show(`Error ${response.status}: ${body.error || response.statusText}`, false);
    } catch (error) { show(`Network error: ${error.message}`, false); } finally { button.disabled = false; }
  });
}

if (active) select(active);
