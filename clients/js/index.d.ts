// Types of @livecomments/client (index.js). See README.md for usage.

/** A comment (CONTRACT §1). */
export interface Comment {
  id: string;
  post_id: string;
  user_id: string;
  text: string;
  /** RFC 3339 UTC with milliseconds. */
  timestamp: string;
  region: string;
  metadata?: Record<string, string>;
}

export interface Deletion {
  id: string;
  post_id: string;
}

/** The kinds of reaction (CONTRACT §11). */
export type ReactionKind = 'like' | 'love' | 'haha' | 'wow' | 'sad' | 'angry';
export const REACTION_KINDS: readonly ReactionKind[];

/** Counts per kind: every ReactionKind is present (0 when none); a newer server may add kinds. */
export type ReactionCounts = Record<ReactionKind, number> & Record<string, number>;

/** `event: sampling` of a stream opened with `rate` (CONTRACT §11), once a second while it skips. */
export interface Sampling {
  /** The stream's `rate`: at most this many comments a second. */
  rate: number;
  /** Comments of the last second sent to this stream. */
  shown: number;
  /** Comments the post received in that second. */
  total: number;
}

/** Any event of the stream, as parsed: `data` is the JSON value, or the text when not JSON. */
export interface StreamEvent {
  /** `comment`, `delete`, `reconnect`, `truncated`, `viewers`, `reactions`, `sampling`, and kinds this version does not know (`pin`, `unpin`, ...). */
  type: string;
  data: unknown;
  /** The event's `id:` (resume token), or null. */
  id: string | null;
  raw: string;
}

/**
 * `connecting` (first attempt), `open` (first stream open), `reconnecting` (dropped, waiting
 * or retrying), `resumed` (open again, the replay of what was missed comes first), `closed`.
 */
export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'resumed' | 'closed';

/** The error body of the API, `{"error": {"code", "message"}}`, or a network failure (status 0). */
export class LivecommentsError extends Error {
  constructor(init?: { status?: number; code?: string; message?: string; retryAfter?: number | null; body?: unknown; cause?: unknown });
  /** HTTP status; 0 for a network failure. */
  readonly status: number;
  /** The contract's snake_case code (`invalid_text`, `rate_limited`, ...), `network_error`, `stream_idle`, `missing_token`, or `http_<status>` when the body had none. */
  readonly code: string;
  /** Seconds from `Retry-After`, else null. */
  readonly retryAfter: number | null;
  /** The parsed error body, if any. */
  readonly body: unknown;
  /** Set on stream errors after which the client gives up (400, 403, 404; 401 without getToken). */
  readonly fatal?: boolean;
  static fromResponse(res: Response): Promise<LivecommentsError>;
}

export interface ConnectOptions {
  /** Base URL of the server, e.g. `https://comments.example.com` (no trailing path). */
  url: string;
  postId: string;
  /** A JWT, sent as `Authorization: Bearer` (posting, deleting; reads when the server requires it). */
  token?: string;
  /** Asked for a token when there is none, when it expires within `refreshMargin` s, and after a 401 (`force: true`). */
  getToken?: (opts: { force: boolean }) => string | Promise<string>;
  /** Ask for `event: viewers` (CONTRACT §11): `onViewers` gets the count at open and whenever it changed (at most every 2 s). */
  viewers?: boolean;
  /** Rate sampling, 1..=1000 comments per second (CONTRACT §11): a faster post is sampled down to this for this stream (`onSampling` says so); deletions and the resume token are not affected. Outside 1..=1000 the server refuses the stream (400, fatal). */
  rate?: number;
  /** Start from this resume token instead of now. */
  lastEventId?: string;
  /** Start from this time (RFC 3339 or ms since the epoch) instead of now. */
  since?: string | number;
  /** First reconnect delay in ms (default 500; the server's `retry:` replaces it). */
  minDelay?: number;
  /** Longest reconnect delay in ms (default 30000). */
  maxDelay?: number;
  /** No byte for this long (the server pings every 15 s) means a dead stream: reconnect (default 45000 ms). */
  idleTimeout?: number;
  /** Comment ids remembered for de-duplication (default 10000). */
  seenLimit?: number;
  /** Seconds before `exp` at which getToken() is asked for a new token (default 30). */
  refreshMargin?: number;
  /** After a resume, also compare what was delivered with the newest page and report what is gone as deletions: only for servers that do not replay deletions on resume (default false; livecomments replays them, CONTRACT §10). */
  checkDeletes?: boolean;
  /** false: do not open the stream (only post/delete/history). Default true. */
  autoStart?: boolean;
  /** A fetch implementation (default globalThis.fetch). */
  fetch?: typeof fetch;

  /** Each new comment, once (de-duplicated by id across the stream, its replays, post() and history()). */
  onComment?: (comment: Comment, info: { id: string | null }) => void;
  /** Each deletion, once. */
  onDelete?: (deletion: Deletion, info: { id: string | null }) => void;
  /** Every event the server sends, before de-duplication, including kinds unknown to this version (`pin`, `unpin`). */
  onEvent?: (event: StreamEvent) => void;
  /** `event: viewers` (with `viewers: true`): open streams of the post, every node and region. */
  onViewers?: (viewers: number) => void;
  /** `event: reactions`: counts per kind since the previous such event (at most one a second, only when there were any). */
  onReactions?: (counts: ReactionCounts) => void;
  /** `event: sampling` (with `rate`): this stream is being sampled down. */
  onSampling?: (sampling: Sampling) => void;
  onOpen?: (info: { resumed: boolean }) => void;
  onStateChange?: (state: ConnectionState) => void;
  /** A failed stream attempt (the client retries unless `error.fatal`). */
  onError?: (error: LivecommentsError) => void;
  /** The server could not replay everything missed (`truncated`, `invalid_cursor`): reload the history. */
  onReset?: (info: { reason: string }) => void;
}

export interface HistoryPage {
  /** Newest first. */
  comments: Comment[];
  /** Pass as `before` for the next older page; null when there is none. */
  nextCursor: string | null;
  /** A region did not answer: the page may miss its comments. */
  partial: boolean;
  /** The server's `Date` header. */
  date: string | null;
}

export class Connection {
  constructor(options: ConnectOptions);
  readonly postId: string;
  readonly state: ConnectionState;
  /** The `id:` of the last event received: the position a resume starts from. */
  readonly lastEventId: string | null;
  readonly stats: { events: number; duplicates: number; reconnects: number };
  post(text: string, opts?: { idempotencyKey?: string; metadata?: Record<string, string> }): Promise<Comment>;
  delete(id: string): Promise<void>;
  history(opts?: { before?: string; limit?: number; since?: string | number }): Promise<HistoryPage>;
  /** POST /reaction (202). Token, refresh on 401 and errors as post(): 400 `invalid_parameter` (kind), 401, 403 `forbidden`, 429 `rate_limited` with `retryAfter` (20 a second per user). */
  react(kind: ReactionKind): Promise<{ post_id: string; kind: ReactionKind }>;
  /** GET /posts/<id>/reactions: the post's totals. */
  reactions(): Promise<ReactionCounts>;
  /** GET /posts/<id>/viewers: open streams of the post now (right within ~5 s of a change). */
  viewers(): Promise<number>;
  /** Replaces the token; the next request sends it (the open stream keeps its own until it reconnects). */
  setToken(token: string | null): void;
  /** Reopens the stream now, optionally from another position. */
  reconnect(opts?: { lastEventId?: string | null; since?: string | number }): void;
  close(): void;
}

export function connect(options: ConnectOptions): Connection;
