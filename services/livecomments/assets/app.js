// livecomments demo page: history (GET /comments), live stream (SSE), posting and deleting.
// Plain script, no build step, no dependencies. Comment text is only ever set with textContent.
'use strict';

(() => {
  const POST_RE = /^[A-Za-z0-9_-]{1,64}$/;
  const PAGE_SIZE = 20;
  const $ = (id) => document.getElementById(id);

  const params = new URLSearchParams(location.search);
  const wanted = params.get('post') || 'welcome';
  const postId = POST_RE.test(wanted) ? wanted : 'welcome';

  const el = {
    postInput: $('post-id'), postTitle: $('post-title'), conn: $('conn'), notice: $('notice'),
    composer: $('composer'), user: $('user-name'), text: $('comment-text'), send: $('send'),
    list: $('comments'), more: $('more'), older: $('load-older'), end: $('end'),
  };

  const items = new Map(); // comment id -> <li>
  const deleted = new Set(); // ids deleted while this page was open (history may still return them briefly)
  let nextCursor; // undefined: first page not loaded yet; null: no older page
  let loading = false;
  let lastEventId = null; // the stream's resume token, from the last `id:` seen
  let sinceMark = null; // ms since the epoch, server clock: resume point before any `id:` was seen
  let session = null; // { user, token, expiresAt }: the demo identity of this tab

  el.postInput.value = postId;
  el.postTitle.textContent = postId;
  document.title = `${postId} · livecomments`;
  if (wanted !== postId) notify(`“${wanted}” is not a valid post id; showing “${postId}”.`, true);

  // ---- status lines ------------------------------------------------------------------------
  const STATES = {
    connecting: 'Connecting…',
    live: 'Live',
    reconnecting: 'Connection lost — reconnecting…',
    'caught-up': 'Reconnected — caught up, live',
    offline: 'Offline — retrying…',
  };
  function setState(state) {
    el.conn.dataset.state = state;
    el.conn.textContent = STATES[state];
  }
  function notify(message, isError = false) {
    el.notice.textContent = message;
    el.notice.classList.toggle('error', isError);
  }
  async function apiError(res) {
    let message = `${res.status} ${res.statusText}`;
    try {
      const body = await res.json();
      if (body && body.error) message = body.error.message || body.error.code;
    } catch { /* not JSON */ }
    if (res.status === 429) {
      const after = res.headers.get('Retry-After');
      message = `Rate limited${after ? ` — try again in ${after} s` : ''}: ${message}`;
    }
    return message;
  }

  // ---- rendering ---------------------------------------------------------------------------
  const order = (c) => `${c.timestamp}\u0000${c.id}`; // newest first: larger sorts first

  function render(c) {
    const li = document.createElement('li');
    li.className = 'comment';
    li.dataset.id = c.id;
    li.dataset.order = order(c);
    li.dataset.user = c.user_id;

    const meta = document.createElement('p');
    meta.className = 'meta';
    const who = document.createElement('span');
    who.className = 'author';
    who.textContent = c.user_id;
    const when = document.createElement('time');
    when.dateTime = c.timestamp;
    const d = new Date(c.timestamp);
    when.textContent = isNaN(d) ? c.timestamp : d.toLocaleString();
    meta.append(who, ' · ', when);
    if (c.region) {
      const region = document.createElement('span');
      region.className = 'region';
      region.title = `Posted in region ${c.region}`;
      region.textContent = c.region;
      // Read aloud as "region us", not as the word "us".
      const said = document.createElement('span');
      said.className = 'visually-hidden';
      said.textContent = 'region ';
      meta.append(' · ', said, region);
    }

    const text = document.createElement('p');
    text.className = 'text';
    text.textContent = c.text; // never innerHTML

    li.append(meta, text);
    if (session && session.user === c.user_id) li.append(deleteButton(c));
    return li;
  }

  function deleteButton(c) {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'delete';
    b.textContent = 'Delete';
    b.setAttribute('aria-label', `Delete your comment: ${c.text.slice(0, 40)}`);
    b.addEventListener('click', () => removeComment(c, b));
    return b;
  }

  function add(c) {
    if (!c || typeof c.id !== 'string' || items.has(c.id) || deleted.has(c.id)) return false;
    const li = render(c);
    const key = li.dataset.order;
    let before = null; // first existing item that is older than this one
    for (const other of el.list.children) {
      if (other.dataset.order < key) { before = other; break; }
    }
    el.list.insertBefore(li, before);
    items.set(c.id, li);
    updateEnd();
    return true;
  }

  function drop(id) {
    deleted.add(id);
    const li = items.get(id);
    if (!li) return;
    items.delete(id);
    if (li.contains(document.activeElement)) el.text.focus();
    li.remove();
    updateEnd();
  }

  // Under the list: the load-older button (also the retry after a failed load), or the end.
  function updateEnd() {
    const done = nextCursor === null;
    el.older.hidden = done || (nextCursor === undefined && !historyFailed);
    el.older.textContent = historyFailed ? 'Try loading again' : 'Load older comments';
    el.end.hidden = !done;
    el.end.textContent = items.size ? 'No older comments.' : 'No comments yet.';
  }

  function refreshOwnership() {
    for (const li of items.values()) {
      const own = session && session.user === li.dataset.user;
      const btn = li.querySelector('button.delete');
      if (own && !btn) {
        li.append(deleteButton({ id: li.dataset.id, text: li.querySelector('.text').textContent }));
      } else if (!own && btn) {
        btn.remove();
      }
    }
  }

  // ---- history (newest first, older pages on scroll) ---------------------------------------
  let generation = 0; // bumped by resync(): answers to older requests are dropped
  let historyFailed = false;

  async function loadOlder() {
    if (loading || nextCursor === null) return;
    loading = true;
    el.older.disabled = true;
    const gen = generation;
    try {
      const q = new URLSearchParams({ post_id: postId, page_size: String(PAGE_SIZE) });
      if (nextCursor) q.set('before', nextCursor);
      const res = await fetch(`/comments?${q}`, { headers: { Accept: 'application/json' } });
      if (!res.ok) throw new Error(await apiError(res));
      if (!q.has('before')) {
        // The newest page. The stream was open before this request: resuming it from a little
        // before the server's time of this answer misses nothing (what both carry is shown once).
        const served = Date.parse(res.headers.get('Date'));
        sinceMark = (Number.isNaN(served) ? Date.now() - 60_000 : served) - 5_000;
      }
      const page = await res.json();
      if (gen !== generation) return;
      for (const c of page.comments || []) add(c);
      nextCursor = page.next_cursor || null;
      historyFailed = false;
    } catch (e) {
      if (gen !== generation) return;
      historyFailed = true;
      notify(`Could not load comments: ${e.message}`, true);
    } finally {
      if (gen === generation) {
        loading = false;
        el.older.disabled = false;
        updateEnd();
        // The observer only reports changes: re-arm it so a still-visible sentinel loads the next page.
        if (observer && typeof nextCursor === 'string') { observer.unobserve(el.more); observer.observe(el.more); }
      }
    }
  }

  // Starts over from the newest page: when the server could not replay everything we missed.
  function resync() {
    generation += 1;
    items.clear();
    el.list.replaceChildren();
    nextCursor = undefined;
    loading = false;
    updateEnd();
    loadOlder();
  }

  const observer = 'IntersectionObserver' in window
    ? new IntersectionObserver((entries) => {
      if (nextCursor !== undefined && entries.some((e) => e.isIntersecting)) loadOlder();
    }, { rootMargin: '200px' })
    : null;
  el.older.addEventListener('click', loadOlder);

  // A deletion is sent only to the streams open at that moment, and a resume replays comments,
  // not deletions: after a reconnect, drop what the server's newest page no longer holds.
  const CHECK_SIZE = 100;
  async function dropDeletedWhileAway() {
    const shown = [...items.keys()];
    if (shown.length === 0) return;
    try {
      const q = new URLSearchParams({ post_id: postId, page_size: String(CHECK_SIZE) });
      const res = await fetch(`/comments?${q}`, { headers: { Accept: 'application/json' } });
      if (!res.ok) return;
      const page = await res.json();
      if (page.partial) return; // a region did not answer: its comments' absence proves nothing
      const present = new Set((page.comments || []).map((c) => c.id));
      const whole = !page.next_cursor; // the page holds every comment of the post
      let oldest = null;
      for (const id of present) if (oldest === null || id < oldest) oldest = id;
      for (const id of shown) {
        // Shown before the request, so a comment still stored is on the page if it is at least
        // as new as the page's oldest (ids order by time, across regions).
        if (!present.has(id) && (whole || (oldest !== null && id >= oldest))) drop(id);
      }
    } catch { /* the next reconnect checks again */ }
  }

  let historyStarted = false;
  function startHistory() {
    if (historyStarted) return;
    historyStarted = true;
    loadOlder().then(() => observer && observer.observe(el.more));
  }

  // ---- live stream -------------------------------------------------------------------------
  let source = null;
  let everOpen = false;
  let retryTimer = null;
  let failedOpens = 0; // consecutive streams closed for good without opening

  function connect() {
    const q = new URLSearchParams({ post_id: postId });
    // A fresh EventSource (after the browser gave up) resumes with our own last id;
    // the browser's automatic reconnects send Last-Event-ID themselves.
    if (lastEventId) q.set('last_event_id', lastEventId);
    else if (sinceMark !== null) q.set('since', String(sinceMark)); // no event seen yet
    source = new EventSource(`/comments/stream?${q}`);
    setState(everOpen ? 'reconnecting' : 'connecting');

    source.addEventListener('open', () => {
      clearTimeout(retryTimer);
      failedOpens = 0;
      // The server replays what we missed right after the headers, then goes live.
      setState(everOpen ? 'caught-up' : 'live');
      if (everOpen) dropDeletedWhileAway();
      everOpen = true;
      startHistory(); // subscribed first, so nothing falls between history and stream
      if (historyFailed && nextCursor === undefined) loadOlder(); // the server is back
    });
    source.addEventListener('error', () => {
      if (source.readyState !== EventSource.CLOSED && (lastEventId || sinceMark === null)) {
        setState('reconnecting'); // the browser reconnects with Last-Event-ID
        return;
      }
      if (source.readyState !== EventSource.CLOSED) {
        // No event seen yet, so the browser has no Last-Event-ID to resume with: reconnect
        // ourselves, from the time the history was loaded.
        setState('reconnecting');
        source.close();
        retryTimer = setTimeout(connect, 1000 + Math.random() * 2000);
        return;
      }
      // The browser will not retry (the server answered an error status): we do, with our
      // last id. Twice refused with it (e.g. a position the server no longer knows): start over.
      setState('offline');
      source.close();
      failedOpens += 1;
      if (failedOpens >= 2 && lastEventId) { lastEventId = null; resync(); }
      retryTimer = setTimeout(connect, Math.min(30_000, 1500 * failedOpens));
    });
    source.addEventListener('comment', (ev) => {
      if (ev.lastEventId) lastEventId = ev.lastEventId;
      try { add(JSON.parse(ev.data)); } catch { /* ignore a malformed event */ }
    });
    source.addEventListener('delete', (ev) => {
      try { drop(JSON.parse(ev.data).id); } catch { /* ignore */ }
    });
    // More was missed than one replay carries: reload the history from the newest page.
    source.addEventListener('truncated', resync);
    // The server is about to close this stream (shutdown, rebalancing); the browser resumes.
    source.addEventListener('reconnect', () => setState('reconnecting'));
  }

  // ---- identity (demo tokens from /dev/token, kept for this tab only) -------------------------
  const STORE_KEY = 'livecomments.session';
  try { session = JSON.parse(sessionStorage.getItem(STORE_KEY)); } catch { session = null; }
  if (session && session.user) el.user.value = session.user;

  async function tokenFor(user, force = false) {
    const fresh = session && session.user === user && session.token
      && (!session.expiresAt || Date.parse(session.expiresAt) - Date.now() > 30_000);
    if (fresh && !force) return session.token;
    const res = await fetch(`/dev/token?${new URLSearchParams({ user_id: user })}`);
    if (res.status === 404) throw new Error('this server does not hand out demo tokens (a JWT key is configured)');
    if (!res.ok) throw new Error(await apiError(res));
    const body = await res.json();
    session = { user: body.user_id || user, token: body.token, expiresAt: body.expires_at || null };
    try { sessionStorage.setItem(STORE_KEY, JSON.stringify(session)); } catch { /* private mode */ }
    refreshOwnership();
    return session.token;
  }

  // Sends with the current token; on 401 (expired, or the server restarted with a new dev
  // secret) fetches a new token once and retries.
  async function authed(url, init) {
    const user = session ? session.user : el.user.value.trim();
    let token = await tokenFor(user);
    let res = await fetch(url, { ...init, headers: { ...init.headers, Authorization: `Bearer ${token}` } });
    if (res.status === 401) {
      token = await tokenFor(user, true);
      res = await fetch(url, { ...init, headers: { ...init.headers, Authorization: `Bearer ${token}` } });
    }
    return res;
  }

  function randomKey() {
    if (crypto.randomUUID) return crypto.randomUUID();
    return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
  }

  el.composer.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const user = el.user.value.trim();
    const text = el.text.value.trim();
    if (!user) { notify('Enter your name first.', true); el.user.focus(); return; }
    if (!text) { notify('Write a comment first.', true); el.text.focus(); return; }
    el.send.disabled = true;
    notify('Posting…');
    try {
      if (!session || session.user !== user) await tokenFor(user);
      const res = await authed(`/comment?${new URLSearchParams({ post_id: postId })}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Idempotency-Key': randomKey() },
        body: JSON.stringify({ text }),
      });
      if (!res.ok) throw new Error(await apiError(res));
      add(await res.json()); // the stream delivers it too; ids de-duplicate
      el.text.value = '';
      notify('Posted.');
    } catch (e) {
      notify(`Not posted: ${e.message}`, true);
    } finally {
      el.send.disabled = false;
      el.text.focus();
    }
  });

  async function removeComment(c, button) {
    button.disabled = true;
    notify('Deleting…');
    try {
      const res = await authed(`/comment/${encodeURIComponent(c.id)}?${new URLSearchParams({ post_id: postId })}`,
        { method: 'DELETE', headers: {} });
      if (res.status !== 204 && res.status !== 404) throw new Error(await apiError(res));
      drop(c.id);
      notify('Deleted.');
    } catch (e) {
      notify(`Not deleted: ${e.message}`, true);
      button.disabled = false;
    }
  }

  // ---- start -------------------------------------------------------------------------------
  connect();
  // If the stream cannot open at all, still show the history.
  setTimeout(startHistory, 3000);
})();
