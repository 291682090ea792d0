// livecomments demo page: history (GET /comments), live stream (SSE), posting and deleting,
// the viewer count, reactions (buttons, totals, floating emoji) and the rate-sampling note.
// An ES module, no build step. The API, the stream's reconnect/resume/de-duplication and the
// deletions are the JavaScript client's (clients/js, served as /client.js); this file renders.
// Comment text is only ever set with textContent.
import { connect, LivecommentsError } from '/client.js';

(() => {
  const POST_RE = /^[A-Za-z0-9_-]{1,64}$/;
  const PAGE_SIZE = 20;
  const $ = (id) => document.getElementById(id);

  const params = new URLSearchParams(location.search);
  // ?moderator=1: the moderator view (demo tokens carry the moderator claim; dev tokens only).
  const moderatorView = params.get('moderator') === '1';
  // ?rate=R (1..=1000): ask the server to sample this page's stream down to R comments a second
  // (CONTRACT §11). Any other value is ignored.
  const rateParam = params.get('rate');
  const rate = /^[0-9]{1,4}$/.test(rateParam || '') && Number(rateParam) >= 1 && Number(rateParam) <= 1000
    ? Number(rateParam) : undefined;
  const wanted = params.get('post') || 'welcome';
  const postId = POST_RE.test(wanted) ? wanted : 'welcome';

  const el = {
    postInput: $('post-id'), postTitle: $('post-title'), conn: $('conn'), notice: $('notice'),
    composer: $('composer'), user: $('user-name'), text: $('comment-text'), send: $('send'),
    list: $('comments'), more: $('more'), older: $('load-older'), end: $('end'),
    postState: $('post-state'), pinned: $('pinned'), pinnedAuthor: $('pinned-author'),
    pinnedText: $('pinned-text'), modTools: $('mod-tools'), slow: $('slow-mode'),
    applySlow: $('apply-slow'), toggleClosed: $('toggle-closed'),
    viewers: $('viewers'), viewerCount: $('viewer-count'), sampling: $('sampling'),
    reactionButtons: $('reaction-buttons'), burst: $('reaction-burst'), reactNotice: $('react-notice'),
    floats: $('floats'),
  };
  let settings = { slow_mode_secs: 0, closed: false, pinned_comment_id: null };

  const items = new Map(); // comment id -> <li>
  const deleted = new Set(); // ids deleted while this page was open (history may still return them briefly)
  let nextCursor; // undefined: first page not loaded yet; null: no older page
  let loading = false;
  let conn = null; // the client's connection (stream + API), made at the end
  let session = null; // { user, token, expiresAt }: the demo identity of this tab

  el.postInput.value = postId;
  if (rate) {
    // Opening another post keeps the sampling rate.
    const keep = document.createElement('input');
    keep.type = 'hidden';
    keep.name = 'rate';
    keep.value = String(rate);
    el.postInput.form.append(keep);
  }
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
  // The status line's wording of an API error (a LivecommentsError from the client).
  function errorText(e) {
    if (!(e instanceof LivecommentsError)) return e.message;
    // Moderation refusals (CONTRACT §8, §9) in words; the server's message names a ban's expiry.
    if (e.code === 'banned') return `you are banned from commenting here (${e.message})`;
    if (e.code === 'post_closed') return 'comments are closed on this post';
    if (e.code === 'slow_mode') return `slow mode is on: wait ${e.retryAfter ?? settings.slow_mode_secs} s between comments`;
    if (e.status === 429) return `Rate limited${e.retryAfter != null ? ` — try again in ${e.retryAfter} s` : ''}: ${e.message}`;
    // After the client's one retry with a fresh token.
    if (e.status === 401) return `the server did not accept your sign-in (${e.message})`;
    if (e.status === 403) return `not allowed (${e.message})`;
    return e.message;
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
    if (moderatorView) li.append(modButtons(c));
    else if (session && session.user === c.user_id) li.append(deleteButton(c));
    return li;
  }

  // ---- moderation (the moderator view, and what every viewer sees of it) --------------------
  async function modFetch(path, init = {}) {
    const token = await getToken({ force: false });
    const res = await fetch(path, {
      ...init,
      headers: { 'Content-Type': 'application/json', ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    });
    if (!res.ok) throw new Error(await apiError(res));
    return res.status === 204 ? null : res.json();
  }

  function modButtons(c) {
    const box = document.createElement('span');
    box.className = 'mod-actions';
    const action = (label, aria, run) => {
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = label;
      b.setAttribute('aria-label', `${aria} ${c.user_id}: ${c.text.slice(0, 40)}`);
      b.addEventListener('click', async () => {
        b.disabled = true;
        try { await run(); } catch (e) { notify(`Not done: ${errorText(e)}`, true); } finally { b.disabled = false; }
      });
      box.append(b);
    };
    action('Delete', 'Delete the comment of', () => removeComment(c, box.firstChild));
    action('Ban 60 s', 'Ban for 60 seconds', async () => {
      await modFetch('/moderation/bans', { method: 'POST', body: JSON.stringify({ user_id: c.user_id, post_id: postId, duration_secs: 60 }) });
      notify(`${c.user_id} is banned from this post for 60 s.`);
    });
    action('Ban', 'Ban for good', async () => {
      await modFetch('/moderation/bans', { method: 'POST', body: JSON.stringify({ user_id: c.user_id }) });
      notify(`${c.user_id} is banned everywhere.`);
    });
    action('Pin', 'Pin the comment of', async () => {
      await putSettings({ pinned_comment_id: c.id });
      notify('Pinned.');
    });
    return box;
  }

  async function putSettings(change) {
    showSettings(await modFetch(`/posts/${postId}/settings`, { method: 'PUT', body: JSON.stringify(change) }));
  }

  function showSettings(s) {
    if (!s) return;
    settings = s;
    const parts = [];
    if (s.closed) parts.push('Comments are closed');
    if (s.slow_mode_secs > 0) parts.push(`Slow mode: ${s.slow_mode_secs} s`);
    el.postState.textContent = parts.join(' · ');
    el.postState.hidden = parts.length === 0;
    el.send.disabled = s.closed; // closed holds for moderators too (docs/MODERATION.md)
    el.toggleClosed.textContent = s.closed ? 'Open comments' : 'Close comments';
    if (document.activeElement !== el.slow) el.slow.value = String(s.slow_mode_secs);
  }

  async function loadSettings() {
    try {
      const res = await fetch(`/posts/${postId}/settings`);
      if (res.ok) showSettings(await res.json());
    } catch { /* shown again at the next look */ }
  }

  function showPin(c) {
    el.pinned.hidden = !c;
    el.pinnedAuthor.textContent = c ? c.user_id : '';
    el.pinnedText.textContent = c ? c.text : ''; // never innerHTML
  }

  if (moderatorView) {
    el.modTools.hidden = false;
    el.applySlow.addEventListener('click', () => putSettings({ slow_mode_secs: Number(el.slow.value) || 0 })
      .then(() => notify('Slow mode set.'), (e) => notify(`Not set: ${errorText(e)}`, true)));
    el.toggleClosed.addEventListener('click', () => putSettings({ closed: !settings.closed })
      .catch((e) => notify(`Not changed: ${errorText(e)}`, true)));
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
      // The client counts these ids as delivered: the stream's replay does not show them twice.
      const page = await conn.history({ before: nextCursor || undefined, limit: PAGE_SIZE });
      if (gen !== generation) return;
      for (const c of page.comments) add(c);
      nextCursor = page.nextCursor;
      historyFailed = false;
    } catch (e) {
      if (gen !== generation) return;
      historyFailed = true;
      notify(`Could not load comments: ${errorText(e)}`, true);
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

  let historyStarted = false;
  function startHistory() {
    if (historyStarted) return;
    historyStarted = true;
    loadOlder().then(() => observer && observer.observe(el.more));
  }

  // ---- identity (demo tokens from /dev/token, kept for this tab only) -------------------------
  const STORE_KEY = 'livecomments.session';
  try { session = JSON.parse(sessionStorage.getItem(STORE_KEY)); } catch { session = null; }
  if (session && session.user) el.user.value = session.user;

  let pendingToken = null; // { user, promise }: one /dev/token request at a time (reactions come in bursts)
  function tokenFor(user, force = false) {
    const fresh = session && session.user === user && session.token
      && (!session.expiresAt || Date.parse(session.expiresAt) - Date.now() > 30_000);
    if (fresh && !force) return Promise.resolve(session.token);
    if (pendingToken && pendingToken.user === user) return pendingToken.promise;
    const promise = fetchToken(user).finally(() => { if (pendingToken && pendingToken.promise === promise) pendingToken = null; });
    pendingToken = { user, promise };
    return promise;
  }

  async function fetchToken(user) {
    const q = { user_id: user, ...(moderatorView ? { role: 'moderator' } : {}) };
    const res = await fetch(`/dev/token?${new URLSearchParams(q)}`);
    if (res.status === 404) throw new Error('this server does not hand out demo tokens (a JWT key is configured)');
    if (!res.ok) throw new Error(await apiError(res));
    const body = await res.json();
    session = { user: body.user_id || user, token: body.token, expiresAt: body.expires_at || null };
    try { sessionStorage.setItem(STORE_KEY, JSON.stringify(session)); } catch { /* private mode */ }
    refreshOwnership();
    return session.token;
  }

  // The client's getToken: the signed-in name's token; on a 401 (expired, or the server restarted
  // with a new dev secret) the client asks again with force and retries once. No name yet: no
  // token (reading is public).
  async function getToken({ force }) {
    const user = session ? session.user : el.user.value.trim();
    if (!user) return null;
    return tokenFor(user, force);
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
      if (!session || session.user !== user) conn.setToken(await tokenFor(user));
      await conn.post(text); // shown through onComment; the stream's copy is de-duplicated
      el.text.value = '';
      notify('Posted.');
    } catch (e) {
      notify(`Not posted: ${errorText(e)}`, true);
    } finally {
      el.send.disabled = false;
      el.text.focus();
    }
  });

  async function removeComment(c, button) {
    button.disabled = true;
    notify('Deleting…');
    try {
      try {
        await conn.delete(c.id); // onDelete removes it
      } catch (e) {
        if (!(e instanceof LivecommentsError && e.status === 404)) throw e;
        drop(c.id); // already gone
      }
      notify('Deleted.');
    } catch (e) {
      notify(`Not deleted: ${errorText(e)}`, true);
      button.disabled = false;
    }
  }
  // ---- huge streams: viewers, reactions, sampling (CONTRACT §11) ----------------------------
  function showViewers(n) {
    el.viewers.hidden = false;
    el.viewers.dataset.count = String(n);
    el.viewerCount.textContent = `${n} watching`;
  }

  // "Showing n of m comments per second" while the server samples this stream; gone once no
  // sampling event came for 3 s (the post calmed down).
  let samplingTimer = null;
  function showSampling({ shown, total }) {
    el.sampling.textContent = `Showing ${shown} of ${total} comments per second`;
    el.sampling.title = `This page asked for at most ${rate} comments a second (?rate=${rate}).`;
    el.sampling.hidden = false;
    clearTimeout(samplingTimer);
    samplingTimer = setTimeout(() => { el.sampling.hidden = true; }, 3000);
  }

  const REACTIONS = [
    { kind: 'like', emoji: '👍', label: 'Like' },
    { kind: 'love', emoji: '❤️', label: 'Love' },
    { kind: 'haha', emoji: '😆', label: 'Haha' },
    { kind: 'wow', emoji: '😮', label: 'Wow' },
    { kind: 'sad', emoji: '😢', label: 'Sad' },
    { kind: 'angry', emoji: '😡', label: 'Angry' },
  ];
  const FLOATS_PER_EVENT = 20; // one event a second at most: a busy post shows a sample
  const FLOATS_ON_SCREEN = 60;
  const reducedMotion = window.matchMedia('(prefers-reduced-motion: reduce)');
  const totals = Object.fromEntries(REACTIONS.map((r) => [r.kind, 0]));
  const totalEls = {};

  for (const r of REACTIONS) {
    const wrap = document.createElement('span');
    wrap.className = 'reaction';
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'react';
    b.id = `react-${r.kind}`;
    b.dataset.kind = r.kind;
    b.setAttribute('aria-label', r.label);
    b.setAttribute('aria-describedby', `total-${r.kind}`);
    const face = document.createElement('span');
    face.setAttribute('aria-hidden', 'true');
    face.textContent = r.emoji;
    b.append(face);
    b.addEventListener('click', () => react(r.kind, b));
    const total = document.createElement('span');
    total.className = 'total';
    total.id = `total-${r.kind}`;
    totalEls[r.kind] = total;
    wrap.append(b, total);
    el.reactionButtons.append(wrap);
  }
  renderTotals();

  function renderTotals() {
    for (const r of REACTIONS) {
      const n = totals[r.kind];
      totalEls[r.kind].dataset.count = String(n);
      totalEls[r.kind].textContent = n.toLocaleString('en');
      totalEls[r.kind].title = `${n} × ${r.label}`;
    }
  }

  // The totals: GET /posts/<id>/reactions at start and every 10 s (the server's are the truth,
  // over every region); each `event: reactions` adds its counts in between. An answer during
  // which an event arrived is ambiguous (it may or may not count that event): it is not used,
  // and asked again shortly.
  let reactionEvents = 0; // events received so far
  async function loadTotals() {
    const seen = reactionEvents;
    try {
      const t = await conn.reactions();
      if (reactionEvents !== seen) { setTimeout(loadTotals, 1500); return; }
      for (const r of REACTIONS) totals[r.kind] = t[r.kind] ?? 0;
      renderTotals();
      el.reactionButtons.dataset.loaded = 'true';
    } catch { /* shown again at the next look */ }
  }

  function reactNotify(message, isError = false) {
    el.reactNotice.textContent = message;
    el.reactNotice.classList.toggle('error', isError);
  }

  // Reactions are signed like comments (the name's demo token), sent without waiting for one
  // another (people tap fast). The reaction comes back in the next `event: reactions`, to this
  // page as to every other, so nothing is counted here.
  let reactErrorUntil = 0; // an error stays readable this long, even if later taps succeed
  async function react(kind, button) {
    const user = el.user.value.trim();
    if (!user) {
      reactNotify('Enter your name first: reactions are signed in, like comments.', true);
      el.user.focus();
      return;
    }
    button.classList.remove('sent');
    void button.offsetWidth; // restart the press animation
    button.classList.add('sent');
    try {
      if (!session || session.user !== user) conn.setToken(await tokenFor(user));
      await conn.react(kind);
      if (Date.now() >= reactErrorUntil) reactNotify('');
    } catch (e) {
      reactErrorUntil = Date.now() + Math.max(3, (e && e.retryAfter) || 0) * 1000;
      reactNotify(`Reaction not sent: ${errorText(e)}`, true);
    }
  }

  function onReactions(counts) {
    reactionEvents += 1;
    let any = false;
    for (const r of REACTIONS) {
      const n = counts[r.kind] || 0;
      if (n > 0) { totals[r.kind] += n; any = true; }
    }
    if (!any) return;
    renderTotals();
    if (reducedMotion.matches) showBurst(counts);
    else floatUp(counts);
  }

  // Up to FLOATS_PER_EVENT emoji, drawn in proportion to the counts, never more than
  // FLOATS_ON_SCREEN at once; each floats up over the list and is removed when done.
  function floatUp(counts) {
    const kinds = REACTIONS.filter((r) => counts[r.kind] > 0).map((r) => ({ ...r, left: counts[r.kind] }));
    let left = kinds.reduce((n, k) => n + k.left, 0);
    const n = Math.max(0, Math.min(left, FLOATS_PER_EVENT, FLOATS_ON_SCREEN - el.floats.childElementCount));
    for (let i = 0; i < n; i += 1) {
      let x = Math.random() * left;
      const k = kinds.find((c) => (x -= c.left) < 0) || kinds[kinds.length - 1];
      k.left -= 1;
      left -= 1;
      const f = document.createElement('span');
      f.className = 'float';
      f.dataset.kind = k.kind;
      f.textContent = k.emoji;
      f.style.left = `${Math.round(Math.random() * 85)}%`;
      // Spread over the second until the next event, as the reactions were.
      f.style.animationDelay = `${Math.round((i / n) * 900)}ms`;
      f.style.setProperty('--drift', `${Math.round((Math.random() - 0.5) * 80)}px`);
      const done = () => f.remove();
      f.addEventListener('animationend', done, { once: true });
      setTimeout(done, 5000); // also when animations do not run
      el.floats.append(f);
    }
    el.floats.dataset.shown = String(Number(el.floats.dataset.shown || 0) + n);
  }

  // With reduced motion: the counts of the last event in words, instead of floating emoji.
  let burstTimer = null;
  function showBurst(counts) {
    el.burst.textContent = `Just now: ${REACTIONS.filter((r) => counts[r.kind] > 0)
      .map((r) => `${r.emoji} ${counts[r.kind]}`).join(' · ')}`;
    el.burst.hidden = false;
    clearTimeout(burstTimer);
    burstTimer = setTimeout(() => { el.burst.hidden = true; }, 3000);
  }

  // ---- live stream and start ----------------------------------------------------------------
  // The client's states, in the words of the status line.
  const SHOWN_STATE = { connecting: 'connecting', open: 'live', reconnecting: 'reconnecting', resumed: 'caught-up', closed: 'offline' };
  conn = connect({
    url: location.origin,
    postId,
    getToken,
    // A demo page cut off for long should come back soon after the server does.
    maxDelay: 5_000,
    viewers: true,
    rate,
    onViewers: showViewers,
    onReactions,
    onSampling: showSampling,
    onStateChange: (state) => setState(SHOWN_STATE[state] || 'connecting'),
    onOpen: () => {
      startHistory(); // subscribed first, so nothing falls between history and stream
      if (historyFailed && nextCursor === undefined) loadOlder(); // the server is back
    },
    onComment: add,
    onDelete: ({ id }) => drop(id),
    // `pin` (the pinned comment) opens the stream and comes live; `unpin` clears it (§9).
    onEvent: ({ type, data }) => {
      if (type === 'pin') showPin(data);
      else if (type === 'unpin') showPin(null);
    },
    // More was missed than one replay carries: reload the history from the newest page.
    onReset: resync,
  });
  // If the stream cannot open at all, still show the history.
  setTimeout(startHistory, 3000);
  // Slow mode and closed are settings, not stream events: read them now and every 10 s.
  loadSettings();
  loadTotals();
  setInterval(() => { loadSettings(); loadTotals(); }, 10_000);
})();
