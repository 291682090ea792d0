// Starts the real `livecomments standalone` binary for the client's tests, the way
// tests/browser/harness.mjs does (free port, temp --data-dir, /dev/token), without the browser.
import { spawn } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const BIN = path.resolve(ROOT, process.env.LIVECOMMENTS_BIN || 'target/debug/livecomments');
// The machine is slow and shared: every wait polls with a generous deadline instead of sleeping.
export const TIMEOUT = Number(process.env.JS_TEST_TIMEOUT_MS || 30_000);

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value; throws with `what` and the last value on timeout. */
export async function waitFor(fn, what, { timeout = TIMEOUT, interval = 50 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}; last: ${last instanceof Error ? last.stack : JSON.stringify(last)}`);
    }
    await sleep(interval);
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const running = new Set();
process.on('exit', () => { for (const child of running) child.kill('SIGKILL'); });

/** One standalone process; can be killed (-9) and started again on the same port and data dir. */
export class Server {
  constructor({ port, env = {}, args = [], rateLimit = 1_000_000 }) {
    this.rateLimit = rateLimit;
    this.port = port;
    this.dataDir = mkdtempSync(path.join(tmpdir(), 'livecomments-js-'));
    this.env = env;
    this.args = args;
    this.child = null;
    this.output = '';
  }

  get base() { return `http://127.0.0.1:${this.port}`; }

  static async start(options = {}) {
    const server = new Server({ ...options, port: options.port || (await freePort()) });
    await server.start();
    return server;
  }

  async start() {
    // A port just released by a killed process can take a moment to be bindable again: retry.
    await waitFor(() => this.#spawnOnce(), `livecomments to start on ${this.base}`, { timeout: 60_000, interval: 250 });
  }

  async #spawnOnce() {
    const args = ['standalone', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir,
      '--rate-limit', String(this.rateLimit), ...this.args];
    const child = spawn(BIN, args, { env: { RUST_LOG: 'info', ...process.env, ...this.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    const mark = this.output.length;
    const keep = (chunk) => { this.output += chunk; };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    let exited = null;
    this.gone = new Promise((resolve) => child.on('exit', (code, signal) => {
      running.delete(child);
      exited = { code, signal };
      resolve();
    }));
    child.on('error', (e) => { this.output += `\nspawn error: ${e.message}`; });
    this.child = child;
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if (exited) {
        if (/in use|AddrInUse|os error 98/i.test(this.output.slice(mark))) return false;
        throw new Error(`livecomments exited early (${JSON.stringify(exited)}):\n${this.output}`);
      }
      try {
        const res = await fetch(`${this.base}/healthz`, { signal: AbortSignal.timeout(2000) });
        if (res.ok) return true;
      } catch { /* not listening yet */ }
      await sleep(100);
    }
    await this.kill();
    throw new Error(`livecomments did not answer /healthz within 30 s:\n${this.output}`);
  }

  /** SIGKILL by default: no graceful shutdown, no goodbye to the streams. */
  async kill(signal = 'SIGKILL') {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill(signal);
    await this.gone;
  }

  async stop() {
    await this.kill();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

export async function devToken(base, user) {
  const res = await fetch(`${base}/dev/token?user_id=${encodeURIComponent(user)}`);
  if (!res.ok) throw new Error(`GET /dev/token: ${res.status} ${await res.text()}`);
  return (await res.json()).token;
}

/** An HS256 JWT for servers started with LIVECOMMENTS_JWT_SECRET (no /dev/token there). */
export function mintToken(secret, claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims })}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

/** POST /comment straight over fetch (not through the client), so the stream is what delivers it. */
export async function rawPost(base, token, postId, text) {
  const res = await fetch(`${base}/comment?post_id=${encodeURIComponent(postId)}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}`, 'Idempotency-Key': randomUUID() },
    body: JSON.stringify({ text }),
    signal: AbortSignal.timeout(10_000),
  });
  if (res.status !== 201) throw new Error(`POST /comment: ${res.status} ${await res.text()}`);
  return res.json();
}

/** Collects what a connection delivers, for the assertions. */
export function recorder() {
  const r = { comments: [], deletes: [], events: [], states: [], errors: [], resets: [], viewers: [], reactions: [], samplings: [] };
  r.callbacks = {
    onViewers: (n) => r.viewers.push(n),
    onReactions: (c) => r.reactions.push(c),
    onSampling: (s) => r.samplings.push(s),
    onComment: (c) => r.comments.push(c),
    onDelete: (d) => r.deletes.push(d),
    onEvent: (e) => r.events.push(e),
    onStateChange: (s) => r.states.push(s),
    onError: (e) => r.errors.push(e),
    onReset: (x) => r.resets.push(x),
  };
  r.ids = () => r.comments.map((c) => c.id);
  return r;
}

export const uniquePost = (name) => `${name}-${randomUUID().slice(0, 8)}`;
