// Shared harness of the browser tests: starts the real `livecomments` binary, launches headless
// Debian chromium through playwright-core, and small helpers to talk to the API from node.
import { spawn } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = path.resolve(ROOT, process.env.LIVECOMMENTS_BIN || 'target/debug/livecomments');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
export const SHOTS = path.join(ROOT, 'target/browser-screenshots');

// The machine is slow and noisy: every wait polls with a generous deadline instead of sleeping.
export const TIMEOUT = Number(process.env.BROWSER_TEST_TIMEOUT_MS || 30_000);

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value; throws with `what` and the last value/error on timeout. */
export async function waitFor(fn, what, { timeout = TIMEOUT, interval = 100 } = {}) {
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

/** A TCP port that was free a moment ago. */
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

export function tempDir(prefix) {
  return mkdtempSync(path.join(tmpdir(), `livecomments-${prefix}-`));
}

const running = new Set();
process.on('exit', () => { for (const child of running) child.kill('SIGKILL'); });

/** One `livecomments standalone` process; can be killed and started again on the same port and data dir. */
export class Server {
  constructor({ port, dataDir, env = {}, args = [], rateLimit = 1_000_000 } = {}) {
    this.port = port;
    this.dataDir = dataDir || tempDir('data');
    this.ownDataDir = !dataDir;
    this.env = env;
    this.args = args;
    this.rateLimit = rateLimit;
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
    const child = spawn(BIN, args, {
      env: { RUST_LOG: 'info', ...process.env, ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    running.add(child);
    this.output += `\n--- ${new Date().toISOString()} ${BIN} ${args.join(' ')}\n`;
    const mark = this.output.length;
    const keep = (chunk) => { this.output += chunk; };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    let exited = null;
    const gone = new Promise((resolve) => child.on('exit', (code, signal) => {
      running.delete(child);
      exited = { code, signal };
      resolve();
    }));
    child.on('error', (e) => { this.output += `\nspawn error: ${e.message}`; });
    this.child = child;
    this.gone = gone;
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if (exited) {
        if (/in use|AddrInUse|os error 98/i.test(this.output.slice(mark))) return false; // retried by start()
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

  /** Ends the process (SIGKILL by default: no graceful shutdown) and waits until it is gone. */
  async kill(signal = 'SIGKILL') {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill(signal);
    await this.gone;
  }

  /** Kills the process, keeps its log next to the screenshots, removes a data dir of its own. */
  async stop() {
    await this.kill('SIGKILL');
    mkdirSync(SHOTS, { recursive: true });
    const test = path.basename(process.argv[1] || 'test', '.test.mjs');
    writeFileSync(path.join(SHOTS, `${test}-server-${this.port}.log`), this.output.replace(/\x1b\[[0-9;]*m/g, ''));
    if (this.ownDataDir) rmSync(this.dataDir, { recursive: true, force: true });
  }
}

// ---- the API from node -------------------------------------------------------------------------

/** One server and one browser for all the tests of a file: started before the first test,
 * closed after the last. Read them as `env.server` and `env.browser`. */
export function serverAndBrowser(options = {}) {
  const env = { server: null, browser: null };
  before(async () => {
    env.server = await Server.start(options);
    env.browser = await launchBrowser();
  });
  after(async () => {
    await env.browser?.close();
    await env.server?.stop();
  });
  return env;
}

export async function devToken(base, user) {
  const res = await fetch(`${base}/dev/token?user_id=${encodeURIComponent(user)}`);
  if (!res.ok) throw new Error(`GET /dev/token: ${res.status} ${await res.text()}`);
  return (await res.json()).token;
}

/** An HS256 JWT for servers started with LIVECOMMENTS_JWT_SECRET (where /dev/token does not exist). */
export function mintToken(secret, claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims })}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

/** POST /comment; returns the created comment, throws on anything but 201. */
export async function postComment(base, token, postId, text, { idempotencyKey = randomUUID() } = {}) {
  const res = await fetch(`${base}/comment?post_id=${encodeURIComponent(postId)}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}`, 'Idempotency-Key': idempotencyKey },
    body: JSON.stringify({ text }),
    signal: AbortSignal.timeout(10_000),
  });
  if (res.status !== 201) throw new Error(`POST /comment: ${res.status} ${await res.text()}`);
  return res.json();
}

/** POST /comment `n` times at once (a burst); returns the created comments, throws if any failed. */
export async function postBurst(base, token, postId, n, text = (i) => `burst ${i}`) {
  return Promise.all(Array.from({ length: n }, (_, i) => postComment(base, token, postId, text(i))));
}

/** POST /reaction; returns the response (202 when counted), so tests can look at refusals. */
export async function postReaction(base, token, postId, kind) {
  return fetch(`${base}/reaction?post_id=${encodeURIComponent(postId)}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
    body: JSON.stringify({ kind }),
    signal: AbortSignal.timeout(10_000),
  });
}

/** GET /posts/<id>/reactions → the totals per kind. */
export async function reactionTotals(base, postId) {
  const res = await fetch(`${base}/posts/${encodeURIComponent(postId)}/reactions`, { signal: AbortSignal.timeout(10_000) });
  if (!res.ok) throw new Error(`GET /posts/${postId}/reactions: ${res.status} ${await res.text()}`);
  return (await res.json()).reactions;
}

// ---- the browser ---------------------------------------------------------------------------------

export async function launchBrowser() {
  // playwright-core gives every launch a fresh temporary --user-data-dir of its own.
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 60_000,
  });
}

/**
 * Opens the demo page for `postId` in a new context (its own sessionStorage), records dialogs,
 * page errors and console errors, and waits until the stream is live. `query` is appended to
 * the URL (`&rate=2`), `context` goes to `browser.newContext` (`{ reducedMotion: 'reduce' }`).
 * Every request the page makes is recorded in `page.requests` (`{method, url}`).
 */
export async function openPage(browser, base, postId, { viewport = { width: 1000, height: 800 }, waitLive = true, query = '', context: contextOptions = {} } = {}) {
  const context = await browser.newContext({ viewport, ...contextOptions });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.dialogs = [];
  page.errors = [];
  page.consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') page.consoleErrors.push(m.text()); });
  page.on('dialog', (d) => { page.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  page.on('pageerror', (e) => page.errors.push(e.message));
  page.requests = [];
  page.on('request', (r) => page.requests.push({ method: r.method(), url: r.url() }));
  await page.goto(`${base}/?post=${encodeURIComponent(postId)}${query}`);
  if (waitLive) await waitState(page, ['live', 'caught-up']);
  return page;
}

export async function waitState(page, states) {
  await page.waitForFunction(
    (s) => s.includes(document.getElementById('conn').dataset.state),
    states, { timeout: TIMEOUT, polling: 50 },
  );
}

/**
 * Waits until the text of `selector` is `want` (a string, or a RegExp it must match); the wait
 * runs in the page at every animation frame, so a short-lived text is not missed. `timeout` in ms.
 */
export async function waitText(page, selector, want, { timeout = TIMEOUT } = {}) {
  const pattern = want instanceof RegExp ? { source: want.source, flags: want.flags } : null;
  try {
    await page.waitForFunction(({ selector, text, pattern }) => {
      const e = document.querySelector(selector);
      if (!e) return false;
      const got = e.textContent;
      return pattern ? new RegExp(pattern.source, pattern.flags).test(got) : got === text;
    }, { selector, text: pattern ? null : want, pattern }, { timeout, polling: 'raf' });
  } catch (e) {
    const got = await page.$eval(selector, (x) => x.textContent).catch((x) => `(${x.message})`);
    e.message += `\nwaiting for ${selector} to read ${want}; it reads “${got}”`;
    throw e;
  }
}

export const connState = (page) => page.$eval('#conn', (e) => e.dataset.state);

/** The ids of the comments shown, in page order (duplicates kept, so tests can see them). */
export const shownIds = (page) => page.$$eval('#comments > li', (lis) => lis.map((li) => li.dataset.id));

export const shownTexts = (page) => page.$$eval('#comments > li .text', (ps) => ps.map((p) => p.textContent));

/** Waits until the page shows exactly `ids` (any order), each once. */
export async function waitShown(page, ids, what = 'the expected comments') {
  const want = [...ids].sort();
  await waitFor(async () => {
    const got = (await shownIds(page)).sort();
    return got.length === want.length && got.every((id, i) => id === want[i]);
  }, `${what} (${want.length} comments)`).catch(async (e) => {
    const got = await shownIds(page).catch(() => []);
    e.message += `\nshown (${got.length}): ${got.join(' ')}\nwanted (${want.length}): ${want.join(' ')}`;
    throw e;
  });
}

export async function postViaUi(page, user, text) {
  await page.fill('#user-name', user);
  await page.fill('#comment-text', text);
  await page.click('#send');
}

export async function screenshot(page, name) {
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

/** Scrolls the history to its end (the sentinel loads older pages) and returns the shown ids. */
export async function loadAll(page) {
  await waitFor(async () => {
    await page.$eval('#more', (m) => m.scrollIntoView());
    return page.$eval('#end', (e) => !e.hidden);
  }, 'the end of the history', { interval: 200 });
  return shownIds(page);
}

// ---- regions -------------------------------------------------------------------------------------

export const NATS_SERVER = process.env.NATS_SERVER || '/usr/sbin/nats-server';

/**
 * One nats-server per region, joined by gateways (as `tests/src/lib.rs` `Supercluster`): the
 * regions of one deployment on this machine. `url(region)` is what that region's
 * `livecomments standalone --nats-url` takes; `regionArgs(region)` the whole set of flags.
 */
export class NatsSupercluster {
  constructor(regions, dir, ports) {
    this.regions = regions;
    this.dir = dir;
    this.ports = ports; // region -> { client, cluster, gateway }
    this.children = new Map(); // region -> child process
    this.output = '';
  }

  static async start(regions) {
    const dir = tempDir('nats');
    const ports = {};
    for (const r of regions) ports[r] = { client: await freePort(), cluster: await freePort(), gateway: await freePort() };
    const sc = new NatsSupercluster(regions, dir, ports);
    for (const r of regions) {
      const gateways = regions.map((o) => `    { name: "${o}", urls: ["nats://127.0.0.1:${ports[o].gateway}"] }`).join('\n');
      const conf = `server_name: "${r}-1"\nlisten: "127.0.0.1:${ports[r].client}"\n`
        + `cluster { name: "${r}", listen: "127.0.0.1:${ports[r].cluster}" }\n`
        + `gateway {\n  name: "${r}"\n  listen: "127.0.0.1:${ports[r].gateway}"\n  reject_unknown_cluster: true\n  gateways: [\n${gateways}\n  ]\n}\n`;
      const file = path.join(dir, `${r}.conf`);
      writeFileSync(file, conf);
      const child = spawn(NATS_SERVER, ['-c', file], { stdio: ['ignore', 'pipe', 'pipe'] });
      running.add(child);
      child.on('exit', () => running.delete(child));
      const keep = (chunk) => { sc.output += `[${r}] ${chunk}`; };
      child.stdout.on('data', keep);
      child.stderr.on('data', keep);
      child.on('error', (e) => { sc.output += `\n[${r}] spawn error: ${e.message}`; });
      sc.children.set(r, child);
    }
    await sc.#waitListening();
    return sc;
  }

  async #waitListening() {
    for (const r of this.regions) {
      await waitFor(() => new Promise((resolve) => {
        if (this.children.get(r).exitCode !== null) throw new Error(`nats-server ${r} exited:\n${this.output}`);
        const s = connect(this.ports[r].client, '127.0.0.1');
        s.on('connect', () => { s.destroy(); resolve(true); });
        s.on('error', () => resolve(false));
      }), `nats-server of ${r} to listen`, { interval: 50 });
    }
  }

  url(region) { return `nats://127.0.0.1:${this.ports[region].client}`; }

  /** The `livecomments standalone` flags of `region` in this deployment. */
  regionArgs(region) {
    return ['--region', region, '--regions', this.regions.join(','), '--nats-url', this.url(region)];
  }

  /** Kills the servers, keeps their log next to the screenshots, removes the configs. */
  async stop() {
    await Promise.all([...this.children.values()].map((child) => new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.on('exit', resolve);
      child.kill('SIGKILL');
    })));
    mkdirSync(SHOTS, { recursive: true });
    const test = path.basename(process.argv[1] || 'test', '.test.mjs');
    writeFileSync(path.join(SHOTS, `${test}-nats.log`), this.output);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Waits until `server`'s merged `GET /comments` answers from every region (no `partial`): the
 * gateways are up and every region's reader is reachable from it.
 */
export async function waitAllRegions(server, postId = 'regions-ready') {
  await waitFor(async () => {
    const res = await fetch(`${server.base}/comments?post_id=${encodeURIComponent(postId)}&page_size=1`,
      { signal: AbortSignal.timeout(5000) });
    const page = await res.json();
    if (!res.ok || page.partial) throw new Error(`${res.status} ${JSON.stringify({ ...page, comments: undefined })}`);
    return true;
  }, `every region to answer ${server.base}/comments`);
}
