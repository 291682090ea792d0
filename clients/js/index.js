// @livecomments/client: a dependency-free client of the livecomments API (CONTRACT.md §2, §10).
//
// Why a fetch-based SSE reader instead of EventSource:
// - EventSource cannot send headers, so a token would have to travel in the URL
//   (`access_token=`), where proxies and access logs keep it; fetch sends `Authorization`.
// - EventSource decides by itself when to reconnect (fixed `retry:` delay, no jitter, gives up
//   for good on any non-200) and hides the status and error body; we need backoff with jitter,
//   a fresh token on 401, and the contract's error codes (e.g. `invalid_cursor`).
// - fetch with a streaming body exists in every current browser and in Node >= 20, so the same
//   code runs in both without the `eventsource` npm package.
// The cost: a cross-origin stream needs CORS for `Authorization`/`Last-Event-ID` (a preflight).

/** An error answer of the API (`{"error": {"code", "message"}}`), or a network failure (status 0). */
export class LivecommentsError extends Error {
  constructor({ status = 0, code = 'network_error', message = code, retryAfter = null, body = null, cause } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = 'LivecommentsError';
    this.status = status;
    this.code = code;
    /** Seconds, from `Retry-After` (429, 503), else null. */
    this.retryAfter = retryAfter;
    this.body = body;
  }

  /** Builds the error from a non-2xx fetch Response, reading the contract's error body. */
  static async fromResponse(res) {
    let body = null;
    try { body = await res.json(); } catch { /* not JSON (a proxy's page): keep the status */ }
    const err = body && typeof body === 'object' ? body.error : null;
    const after = Number.parseInt(res.headers.get('Retry-After') ?? '', 10);
    return new LivecommentsError({
      status: res.status,
      code: (err && typeof err.code === 'string' && err.code) || `http_${res.status}`,
      message: (err && typeof err.message === 'string' && err.message) || `${res.status} ${res.statusText}`,
      retryAfter: Number.isFinite(after) ? after : null,
      body,
    });
  }
}

/** The kinds of reaction, in the order apps usually show them (CONTRACT §11). */
export const REACTION_KINDS = Object.freeze(['like', 'love', 'haha', 'wow', 'sad', 'angry']);

const DEFAULTS = {
  minDelay: 500, // first reconnect delay, ms (the server's `retry:` replaces it)
  maxDelay: 30_000, // the backoff never waits longer
  idleTimeout: 45_000, // no byte (not even `: ping`, every 15 s) for this long: the stream is dead
  seenLimit: 10_000, // comment ids remembered for de-duplication
  refreshMargin: 30, // seconds before a token's `exp` when getToken() is asked for a new one
};

/**
 * Opens the live stream of one post and returns the connection (see index.d.ts for every option).
 * The stream reconnects by itself until `close()`.
 */
export function connect(options) {
  return new Connection(options);
}

export class Connection {
  constructor(options = {}) {
    const { url, postId } = options;
    if (!url) throw new TypeError('connect: `url` (the server base URL) is required');
    if (!postId) throw new TypeError('connect: `postId` is required');
    this.options = { ...DEFAULTS, ...options };
    this.base = String(url).replace(/\/+$/, '');
    this.postId = postId;
    this.fetch = options.fetch || globalThis.fetch.bind(globalThis);
    this.token = options.token || null;
    /** The resume token: the `id:` of the last event received. */
    this.lastEventId = options.lastEventId || null;
    this.since = options.since ?? null;
    this.state = 'idle';
    this.stats = { events: 0, duplicates: 0, reconnects: 0 };
    this._seen = new Set(); // insertion order doubles as the eviction order
    this._deleted = new Set();
    this._attempt = 0;
    this._everOpen = false;
    this._closed = false;
    this._abort = null;
    this._timer = null;
    this._minDelay = this.options.minDelay;
    if (options.autoStart !== false) this._run();
  }

  // ---- public API ------------------------------------------------------------------------

  /** Replaces the token (e.g. the user signed in as someone else); the next request sends it. */
  setToken(token) {
    this.token = token || null;
  }

  /** Stops the stream for good (no reconnect). */
  close() {
    this._closed = true;
    clearTimeout(this._timer);
    this._abort?.abort();
    this._setState('closed');
  }

  /**
   * Drops the current stream and opens a new one at once, optionally from another position
   * (`{lastEventId}` or `{since}`); comments already delivered are still not delivered again.
   */
  reconnect({ lastEventId, since } = {}) {
    if (this._closed) return;
    if (lastEventId !== undefined) this.lastEventId = lastEventId;
    if (since !== undefined) { this.since = since; if (lastEventId === undefined) this.lastEventId = null; }
    this._attempt = 0;
    this._restart(0);
  }

  /** POST /comment. Resolves to the stored comment; the stream's copy of it is not delivered twice. */
  async post(text, { idempotencyKey = randomKey(), metadata } = {}) {
    const body = { text };
    if (metadata) body.metadata = metadata;
    const res = await this._authed(`/comment?${this._q()}`, {
      method: 'POST',
      // The same key on a retry makes the server answer the same comment instead of a second one.
      headers: { 'Content-Type': 'application/json', 'Idempotency-Key': idempotencyKey },
      body: JSON.stringify(body),
    }, true);
    if (res.status !== 201) throw await LivecommentsError.fromResponse(res);
    const comment = await res.json();
    this._comment(comment, null);
    return comment;
  }

  /** DELETE /comment/<id>. Resolves once deleted; `onDelete` fires once for it. */
  async delete(id) {
    const res = await this._authed(`/comment/${encodeURIComponent(id)}?${this._q()}`, { method: 'DELETE' }, true);
    if (res.status !== 204) throw await LivecommentsError.fromResponse(res);
    this._deletion({ id, post_id: this.postId }, null);
  }

  /**
   * GET /comments, newest first: `{comments, nextCursor, partial}`. Pass `nextCursor` back as
   * `before` for the next older page; `nextCursor` null means there is none. The ids returned
   * count as delivered, so the stream does not deliver them again.
   */
  async history({ before, limit, since } = {}) {
    const q = this._q();
    if (limit != null) q.set('page_size', String(limit));
    if (before) q.set('before', before);
    if (since != null) q.set('since', String(since));
    const res = await this._authed(`/comments?${q}`, { headers: { Accept: 'application/json' } }, false);
    if (!res.ok) throw await LivecommentsError.fromResponse(res);
    const page = await res.json();
    const comments = (page.comments || []).filter((c) => !this._deleted.has(c.id));
    for (const c of comments) this._remember(c.id);
    return { comments, nextCursor: page.next_cursor ?? null, partial: Boolean(page.partial), date: res.headers.get('Date') };
  }

  /**
   * POST /reaction with `kind` (one of REACTION_KINDS). Resolves to the server's answer
   * (`{post_id, kind}`, 202) once counted; reactions are counted, not stored, and every stream
   * of the post gets them in its next `reactions` event (`onReactions`), this one's included.
   * Token, refresh on 401 and errors as `post()`: 429 `rate_limited` (20 a second per user) has
   * `retryAfter`.
   */
  async react(kind) {
    const res = await this._authed(`/reaction?${this._q()}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ kind }),
    }, true);
    if (res.status !== 202) throw await LivecommentsError.fromResponse(res);
    try { return await res.json(); } catch { return { post_id: this.postId, kind }; }
  }

  /** GET /posts/<id>/reactions: the post's totals per kind, every kind of REACTION_KINDS present. */
  async reactions() {
    const body = await this._getJson(`/posts/${encodeURIComponent(this.postId)}/reactions`);
    return reactionCounts(body && body.reactions);
  }

  /** GET /posts/<id>/viewers: how many streams of the post are open now, over every node and region. */
  async viewers() {
    const body = await this._getJson(`/posts/${encodeURIComponent(this.postId)}/viewers`);
    const n = Number(body && body.viewers);
    if (!Number.isFinite(n)) throw new LivecommentsError({ status: 200, code: 'invalid_response', message: 'no `viewers` number in the answer', body });
    return n;
  }

  async _getJson(path) {
    const res = await this._authed(path, { headers: { Accept: 'application/json' } }, false);
    if (!res.ok) throw await LivecommentsError.fromResponse(res);
    return res.json();
  }

  // ---- the stream --------------------------------------------------------------------------

  async _run() {
    if (this._closed) return;
    this._setState(this._everOpen ? 'reconnecting' : 'connecting');
    const abort = new AbortController();
    this._abort = abort;
    let idle = null;
    const touch = () => {
      clearTimeout(idle);
      idle = setTimeout(() => abort.abort(new Error('idle')), this.options.idleTimeout);
    };
    let delay = null; // set when the server told us how long to wait
    try {
      const q = this._q();
      if (this.options.viewers) q.set('viewers', '1');
      if (this.options.rate != null) q.set('rate', String(this.options.rate));
      const headers = { Accept: 'text/event-stream' };
      // The header, not ?last_event_id=: it is what the contract names first and wins on the server.
      if (this.lastEventId) headers['Last-Event-ID'] = this.lastEventId;
      else if (this.since != null) q.set('since', String(this.since));
      const token = await this._currentToken(false);
      if (token) headers.Authorization = `Bearer ${token}`;
      touch();
      let res = await this.fetch(`${this.base}/comments/stream?${q}`, { headers, signal: abort.signal, cache: 'no-store' });
      if (res.status === 401 && this.options.getToken) {
        // Expired or revoked (or the server restarted with a new dev secret): once with a new one.
        await res.body?.cancel().catch(() => {});
        headers.Authorization = `Bearer ${await this._currentToken(true)}`;
        res = await this.fetch(`${this.base}/comments/stream?${q}`, { headers, signal: abort.signal, cache: 'no-store' });
      }
      if (!res.ok) {
        const err = await LivecommentsError.fromResponse(res);
        if (err.code === 'invalid_cursor') {
          // The server does not know our position (another deployment, a wiped store): start
          // from now and let the app reload its history.
          this.lastEventId = null;
          this.since = null;
          this._emit('onReset', { reason: err.code });
        } else if (!(err.status === 429 || err.status >= 500 || (err.status === 401 && this.options.getToken))) {
          // 400/403/404, or a 401 with no getToken() to ask for another token: retrying cannot help.
          throw Object.assign(err, { fatal: true });
        }
        if (err.retryAfter != null) delay = err.retryAfter * 1000;
        throw err;
      }
      if (!this.lastEventId && this.since == null) {
        // No position yet: should this stream drop before its first `id:`, resume from a little
        // before the server's time of opening (de-duplication hides the overlap).
        const served = Date.parse(res.headers.get('Date') ?? '');
        this.since = (Number.isNaN(served) ? Date.now() : served) - 5_000;
      }
      const reopened = this._everOpen;
      this._everOpen = true;
      this._attempt = 0;
      this._setState(reopened ? 'resumed' : 'open');
      this._emit('onOpen', { resumed: reopened });
      // The server replays deletions on resume (CONTRACT §10); the comparison with the newest
      // page is for servers older than that, on request.
      if (reopened && this.options.checkDeletes === true) this._checkDeletedWhileAway();
      const reason = await this._read(res.body, touch);
      if (reason === 'reconnect') delay = jitter(Math.min(this._minDelay, 1000));
    } catch (e) {
      if (this._closed || this._abort !== abort) return; // closed or replaced on purpose: no error
      const err = e instanceof LivecommentsError ? e
        : new LivecommentsError({ code: abort.signal.aborted ? 'stream_idle' : 'network_error', message: String(e?.message || e), cause: e });
      this._emit('onError', err);
      if (err.fatal) { this._closed = true; this._setState('closed'); return; }
    } finally {
      clearTimeout(idle);
    }
    if (this._closed || this._abort !== abort) return;
    this._restart(delay ?? this._backoff());
  }

  _restart(delay) {
    clearTimeout(this._timer);
    const old = this._abort;
    this._abort = null;
    old?.abort();
    this._setState(this._everOpen ? 'reconnecting' : 'connecting');
    this.stats.reconnects += 1;
    this._timer = setTimeout(() => this._run(), delay);
  }

  // Exponential backoff with "equal jitter" (half fixed, half random): a fleet of clients cut
  // off at the same moment does not come back at the same moment.
  _backoff() {
    const base = Math.min(this.options.maxDelay, this._minDelay * 2 ** this._attempt);
    this._attempt = Math.min(this._attempt + 1, 20);
    return jitter(base);
  }

  // Reads SSE frames (the WHATWG event-stream format) until the body ends. Returns 'reconnect'
  // when the server asked for it, 'end' when the server closed the stream.
  async _read(body, touch) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    let ev = { event: '', data: [], id: null };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return 'end';
        touch();
        buf += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
          // A lone '\r' at the end might be the first half of '\r\n': wait for the next chunk.
          if (buf[nl] === '\r' && nl === buf.length - 1) break;
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + (buf.startsWith('\r\n', nl) ? 2 : 1));
          if (line === '') {
            const done = this._dispatch(ev);
            ev = { event: '', data: [], id: null };
            if (done) return 'reconnect';
            continue;
          }
          if (line[0] === ':') continue; // `: ping`: only keeps the idle timer quiet
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let v = colon < 0 ? '' : line.slice(colon + 1);
          if (v[0] === ' ') v = v.slice(1);
          if (field === 'data') ev.data.push(v);
          else if (field === 'event') ev.event = v;
          else if (field === 'id' && !v.includes('\0')) ev.id = v;
          else if (field === 'retry' && /^\d+$/.test(v)) this._minDelay = Math.max(100, Number(v));
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  // One complete event. Returns true when the stream should be dropped and reopened.
  _dispatch({ event, data, id }) {
    if (id) this.lastEventId = id; // the resume token advances with every event that has one
    if (data.length === 0 && !event) return false;
    const type = event || 'message';
    const text = data.join('\n');
    let parsed = text;
    try { parsed = text ? JSON.parse(text) : null; } catch { /* not JSON: hand over the text */ }
    this.stats.events += 1;
    // Every event reaches onEvent first, including kinds this client does not know yet
    // (`pin`, `unpin`, ...): apps handle new server features without an update.
    this._emit('onEvent', { type, data: parsed, id: id || null, raw: text });
    if (type === 'comment') this._comment(parsed, id);
    else if (type === 'delete') this._deletion(parsed, id);
    else if (type === 'truncated') this._emit('onReset', { reason: parsed?.reason || 'truncated' });
    else if (type === 'viewers') {
      const n = Number(parsed?.viewers);
      if (Number.isFinite(n)) this._emit('onViewers', n);
    } else if (type === 'reactions') {
      if (parsed && typeof parsed === 'object') this._emit('onReactions', reactionCounts(parsed));
    } else if (type === 'sampling') {
      if (parsed && typeof parsed === 'object') {
        const num = (v) => (Number.isFinite(Number(v)) ? Number(v) : 0);
        this._emit('onSampling', { rate: num(parsed.rate), shown: num(parsed.shown), total: num(parsed.total) });
      }
    }
    else if (type === 'reconnect') {
      // The server closes this stream (shutdown, rebalancing, token expiry): resume elsewhere now.
      if (parsed?.reason === 'token_expired') this.token = null;
      return true;
    }
    return false;
  }

  // This server sends `event: delete` only to the streams open at that moment and its replay
  // carries comments, not deletions (CONTRACT §10 asks for them; until then): after a resume,
  // what we delivered but the newest page no longer holds was deleted while we were away.
  async _checkDeletedWhileAway() {
    const shown = [...this._seen].filter((id) => !this._deleted.has(id));
    if (shown.length === 0) return;
    try {
      const q = this._q();
      q.set('page_size', '100');
      const res = await this._authed(`/comments?${q}`, { headers: { Accept: 'application/json' } }, false);
      if (!res.ok) return;
      const page = await res.json();
      if (page.partial) return; // a region did not answer: an absence proves nothing
      const present = new Set((page.comments || []).map((c) => c.id));
      const whole = !page.next_cursor; // the page holds every comment of the post
      let oldest = null;
      for (const id of present) if (oldest === null || id < oldest) oldest = id;
      for (const id of shown) {
        // Delivered before the request, so a comment still stored is on the page when it is at
        // least as new as the page's oldest (ids order by time).
        if (!present.has(id) && (whole || (oldest !== null && id >= oldest))) {
          this._deletion({ id, post_id: this.postId }, null);
        }
      }
    } catch { /* the next resume checks again */ }
  }

  _comment(c, id) {
    if (!c || typeof c.id !== 'string') return;
    if (this._seen.has(c.id) || this._deleted.has(c.id)) { this.stats.duplicates += 1; return; }
    this._remember(c.id);
    this._emit('onComment', c, { id });
  }

  _deletion(d, id) {
    if (!d || typeof d.id !== 'string' || this._deleted.has(d.id)) return;
    this._deleted.add(d.id);
    if (this._deleted.size > this.options.seenLimit) this._deleted.delete(this._deleted.values().next().value);
    this._emit('onDelete', d, { id });
  }

  _remember(id) {
    this._seen.add(id);
    if (this._seen.size > this.options.seenLimit) this._seen.delete(this._seen.values().next().value);
  }

  // ---- plumbing ------------------------------------------------------------------------------

  _q() { return new URLSearchParams({ post_id: this.postId }); }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit('onStateChange', state);
  }

  _emit(name, ...args) {
    const fn = this.options[name];
    if (typeof fn !== 'function') return;
    // A throwing callback must not kill the stream loop.
    try { fn.apply(this, args); } catch (e) { queueMicrotask(() => { throw e; }); }
  }

  // The token to send: the given one, or a new one from getToken() when missing or about to expire.
  async _currentToken(force) {
    const { getToken, refreshMargin } = this.options;
    if (getToken && (force || !this.token || expiresWithin(this.token, refreshMargin))) {
      this.token = await getToken({ force });
    }
    return this.token;
  }

  // A request with the token; on 401 asks getToken() for a new one once and retries.
  async _authed(path, init, required) {
    const send = async (force) => {
      const token = await this._currentToken(force);
      if (!token && required && !this.options.getToken) {
        throw new LivecommentsError({ code: 'missing_token', message: 'this call needs `token` or `getToken`' });
      }
      const headers = { ...(init.headers || {}) };
      if (token) headers.Authorization = `Bearer ${token}`;
      try {
        return await this.fetch(`${this.base}${path}`, { ...init, headers });
      } catch (e) {
        throw new LivecommentsError({ message: String(e?.message || e), cause: e });
      }
    };
    let res = await send(false);
    if (res.status === 401 && this.options.getToken) {
      await res.body?.cancel().catch(() => {});
      res = await send(true);
    }
    return res;
  }
}

// Counts per kind: every known kind (0 when absent), plus any other kind a newer server sends.
function reactionCounts(src) {
  const out = {};
  for (const kind of REACTION_KINDS) out[kind] = 0;
  if (src && typeof src === 'object') {
    for (const [kind, v] of Object.entries(src)) {
      const n = Number(v);
      if (Number.isFinite(n) && n >= 0) out[kind] = n;
    }
  }
  return out;
}

const jitter = (ms) => Math.round(ms / 2 + Math.random() * (ms / 2));

function randomKey() {
  const c = globalThis.crypto;
  if (c?.randomUUID) return c.randomUUID();
  return Array.from(c.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** True when the JWT's `exp` is within `margin` seconds (or unreadable: then we cannot tell, false). */
function expiresWithin(token, margin) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const { exp } = JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
    return typeof exp === 'number' && exp - Date.now() / 1000 < margin;
  } catch {
    return false;
  }
}
