// The htmx page's connection badge, for htmx 2 and htmx 4, and one fix for htmx 2.
// Everything that swaps HTML is in the page's hx-* attributes; this only reports state.
const badge = document.getElementById('state');

function show(state) {
  badge.dataset.state = state;
  badge.textContent = state;
}

// htmx 2 (EventSource).
document.addEventListener('htmx:sseOpen', () => show('open'));
document.addEventListener('htmx:sseError', () => show('reconnecting'));
// htmx 4 (fetch): a clean end of the stream (a server restart) is no error, but it reconnects.
document.addEventListener('htmx:after:sse:connection', () => show('open'));
document.addEventListener('htmx:sse:error', () => show('reconnecting'));
document.addEventListener('htmx:before:sse:connection', (event) => {
  if (event.detail.connection.attempt > 0) show('reconnecting');
});
document.addEventListener('htmx:sse:close', () => show('closed'));

// htmx 2's extension replaces an EventSource that gave up (a 502 or 503 from a proxy while
// the servers restart) with a new one for the same URL, without Last-Event-ID: the page's
// ?last_event_id= would replay rows the page already has. Resume from the last id seen.
let lastEventId = '';
document.addEventListener('htmx:sseMessage', (event) => {
  if (event.detail && event.detail.lastEventId) lastEventId = event.detail.lastEventId;
});
if (window.htmx && htmx.version && htmx.version.startsWith('2')) {
  htmx.createEventSource = (url) => {
    if (lastEventId) {
      const resumed = new URL(url, window.location.href);
      resumed.searchParams.set('last_event_id', lastEventId);
      url = resumed.toString();
    }
    return new EventSource(url, { withCredentials: true });
  };
}

// A `reset` event: the page's last id is no longer in the stream's log (it was away longer
// than the replay window, or the log was lost), so some rows were missed for good. The table
// still has them: reload the page.
const reload = () => window.location.reload();
document.addEventListener('htmx:sseOpen', (event) => event.detail.source.addEventListener('reset', reload));
document.getElementById('orders').addEventListener('reset', reload); // htmx 4: a DOM event on the list
