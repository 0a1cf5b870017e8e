/**
 * SSEClient: a small wrapper around EventSource that tells you why it stopped.
 *
 *   import { SSEClient } from './sse-client.js';
 *   const client = new SSEClient('/sse/notifications/', {
 *     eventNames: ['notification'],           // named events to listen for ("message" and "reset" are always on)
 *     lastEventId: null,                      // resume after this id on the first connection (?last_event_id=)
 *     onEvent(name, data, id, event) {},      // data is JSON.parse(event.data), or the raw string if that fails
 *     onStateChange(state, detail) {},
 *   });
 *
 * Several streams on one connection: pass their names, and the URL of the endpoint without a stream:
 *   new SSEClient('/sse/', { streams: ['notifications', 'user.42'],
 *     onEvent(name, data, id, event, stream) {} });  // stream: the one the event came from
 * Ids are then composite ("a:<id>,b:<id>", the event's own stream first); streamOf(id) reads the stream.
 *
 *   client.listen('chat');                    // add another event name later
 *   client.close();                           // stop for good (client.connect() starts again)
 *
 * States passed to onStateChange:
 *   "connecting"   {attempt}                   the first one fires inside the constructor
 *   "open"         {}
 *   "reconnecting" {seconds, attempt, status}  seconds: countdown, null while the browser retries by itself
 *   "closed"       {status, reason}            status: HTTP status, or null when closed by the page
 *
 * When the browser gives up (readyState CLOSED, e.g. the server answered 502), the client probes the URL
 * with fetch() to learn the status: 400/401/403/404/204 close for good, 5xx/408/429/network errors
 * retry with exponential backoff and jitter (1 s doubling, at most 30 s), 200 reconnects at once.
 * A reconnect with a new EventSource sends the last seen id as ?last_event_id=; the browser's own
 * reconnects send the Last-Event-ID header. A "reset" event means the id was outside the replay window.
 * Options baseDelay, maxDelay (ms), withCredentials and autoConnect (default true) are optional.
 */
/** The stream a multi-stream event came from: the first position of its composite id. */
export function streamOf(id) {
  return id ? id.split(',')[0].split(':')[0] : null;
}

const FATAL = { 204: 'The server asked the client to stop', 400: 'Bad request (malformed last event id?)',
  401: 'Not signed in', 403: 'Not allowed to read this stream', 404: 'Stream not found' };

export class SSEClient {
  constructor(url, options = {}) {
    Object.assign(this, { url, options, lastEventId: options.lastEventId || null, state: null });
    this._names = new Set(['message', 'reset', ...(options.eventNames || [])]);
    this._handler = (event) => this._dispatch(event);
    this._onOnline = () => { if (this._timer) this.connect(); };
    this._attempt = 0;
    if (options.autoConnect !== false) this.connect();
  }

  /** Listen for another event name, on the current and all future connections. */
  listen(name) {
    if (this._names.has(name)) return;
    this._names.add(name);
    if (this._es) this._es.addEventListener(name, this._handler);
  }

  /** Open a new EventSource (also used for every reconnect the client makes itself). */
  connect() {
    this._stop();
    this._closed = false;
    window.addEventListener('online', this._onOnline);
    this._setState('connecting', { attempt: this._attempt });
    const es = (this._es = new EventSource(this._currentUrl(), { withCredentials: !!this.options.withCredentials }));
    this._names.forEach((name) => es.addEventListener(name, this._handler));
    es.onopen = () => { this._attempt = 0; this._retriedNow = false; this._setState('open', {}); };
    es.onerror = () => {
      if (es !== this._es || this._closed) return;
      if (es.readyState === EventSource.CONNECTING) this._setState('reconnecting', { seconds: null, attempt: this._attempt, status: null });
      else { es.close(); this._es = null; this._probe(); }
    };
  }

  /** Close the stream for good. */
  close(reason = 'Closed by the page', status = null) {
    if (this._closed) return; // keep the first reason
    this._closed = true;
    this._stop();
    window.removeEventListener('online', this._onOnline);
    this._setState('closed', { status, reason });
  }

  _stop() {
    clearTimeout(this._timer);
    clearInterval(this._tick);
    this._probeCtl?.abort();
    this._es?.close();
    this._timer = this._tick = this._probeCtl = this._es = null;
  }

  _currentUrl() {
    const url = new URL(this.url, window.location.href);
    if (this.options.streams) {
      url.searchParams.delete('stream');
      this.options.streams.forEach((name) => url.searchParams.append('stream', name));
    }
    if (this.lastEventId) url.searchParams.set('last_event_id', this.lastEventId);
    return url.href;
  }

  _setState(state, detail) {
    this.state = state;
    this.options.onStateChange?.(state, detail);
  }

  _dispatch(event) {
    if (event.lastEventId) this.lastEventId = event.lastEventId;
    else if (event.type === 'reset') this.lastEventId = null; // do not ask for the same lost id again
    let data = event.data;
    try { data = JSON.parse(event.data); } catch (_) { /* not JSON: keep the raw string */ }
    const stream = this.options.streams ? streamOf(event.lastEventId) : null;
    this.options.onEvent?.(event.type, data, event.lastEventId || null, event, stream);
  }

  async _probe() {
    const ctl = (this._probeCtl = new AbortController());
    const timeout = setTimeout(() => ctl.abort(), 10000);
    let status = 0; // stays 0 on network error, timeout or abort
    try {
      const response = await fetch(this._currentUrl(), { headers: { Accept: 'text/event-stream' }, cache: 'no-store',
        credentials: this.options.withCredentials ? 'include' : 'same-origin', signal: ctl.signal });
      status = response.status;
    } catch (_) { /* network error */ } finally { clearTimeout(timeout); ctl.abort(); } // only the status was wanted, not the stream
    if (this._closed || ctl !== this._probeCtl) return;
    this._probeCtl = null;
    if (FATAL[status]) return this.close(`${FATAL[status]} (HTTP ${status})`, status);
    if (status >= 400 && status < 500 && status !== 408 && status !== 429) return this.close(`HTTP ${status}`, status);
    if (status === 200 && !this._retriedNow) { this._retriedNow = true; return this.connect(); } // once, until the next open
    this._backoff(status);
  }

  _backoff(status) {
    const { baseDelay = 1000, maxDelay = 30000 } = this.options;
    const cap = Math.min(maxDelay, baseDelay * 2 ** this._attempt);
    const delay = cap / 2 + Math.random() * (cap / 2); // "equal jitter": between half and the full delay
    const due = Date.now() + delay;
    this._attempt += 1;
    const tick = () => this._setState('reconnecting',
      { seconds: Math.max(0, Math.ceil((due - Date.now()) / 1000)), attempt: this._attempt, status: status || null });
    tick();
    this._tick = setInterval(tick, 1000);
    this._timer = setTimeout(() => this.connect(), delay);
  }
}
