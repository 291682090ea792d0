// The client against the real binary: live comments, post/delete/history, typed errors, tokens.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { connect, LivecommentsError } from '../index.js';
import { Server, devToken, mintToken, rawPost, recorder, uniquePost, waitFor } from './server.mjs';

let server;
let alice;
let bob;
before(async () => {
  server = await Server.start();
  alice = await devToken(server.base, 'alice');
  bob = await devToken(server.base, 'bob');
});
after(async () => { await server?.stop(); });

const open = (conn, r) => waitFor(() => r.states.includes('open'), 'the stream to open').then(() => conn);

test('receives live comments posted by someone else, in order, once each', async (t) => {
  const postId = uniquePost('live');
  const r = recorder();
  const conn = connect({ url: server.base, postId, ...r.callbacks });
  t.after(() => conn.close());
  await open(conn, r);
  const sent = [];
  for (let i = 0; i < 5; i += 1) sent.push(await rawPost(server.base, bob, postId, `live ${i}`));
  await waitFor(() => r.comments.length >= sent.length, 'five live comments');
  assert.deepEqual(r.ids(), sent.map((c) => c.id));
  assert.deepEqual(r.comments.map((c) => c.text), sent.map((c) => c.text));
  assert.ok(conn.lastEventId, 'the resume token advanced');
  assert.deepEqual(r.errors, []);
});

test('post, delete and history with cursor paging', async (t) => {
  const postId = uniquePost('crud');
  const r = recorder();
  const conn = connect({ url: server.base, postId, token: alice, ...r.callbacks });
  t.after(() => conn.close());
  await open(conn, r);

  const posted = [];
  for (let i = 0; i < 5; i += 1) posted.push(await conn.post(`crud ${i}`, { metadata: { n: String(i) } }));
  assert.equal(posted[0].user_id, 'alice');
  assert.deepEqual(posted[0].metadata, { n: '0' });
  // Our own comment comes back from POST and from the stream: delivered once.
  await waitFor(() => conn.stats.events >= posted.length, 'the stream copies of our comments');
  assert.deepEqual(r.ids(), posted.map((c) => c.id));

  // The same idempotency key twice: the same comment, delivered once.
  const key = `key-${postId}`;
  const once = await conn.post('idempotent', { idempotencyKey: key });
  const twice = await conn.post('idempotent', { idempotencyKey: key });
  assert.equal(twice.id, once.id);
  assert.equal(r.ids().filter((id) => id === once.id).length, 1);

  await conn.delete(posted[1].id);
  assert.deepEqual(r.deletes.map((d) => d.id), [posted[1].id], 'onDelete fired once (the stream copy is de-duplicated)');
  await waitFor(() => r.events.some((e) => e.type === 'delete' && e.data.id === posted[1].id), 'the stream to carry the deletion');
  assert.equal(r.deletes.length, 1);

  // Newest first, two per page, cursor to cursor until null; the deleted one is gone.
  const pages = [];
  let cursor;
  do {
    const page = await conn.history({ before: cursor, limit: 2 });
    pages.push(page.comments.map((c) => c.text));
    cursor = page.nextCursor;
  } while (cursor);
  assert.deepEqual(pages.flat(), ['idempotent', 'crud 4', 'crud 3', 'crud 2', 'crud 0']);
  assert.ok(pages.length >= 3 && pages.every((p) => p.length <= 2), `pages of two: ${JSON.stringify(pages)}`);
});

test('errors are LivecommentsError with the contract code, status and Retry-After', async (t) => {
  const postId = uniquePost('errors');
  const conn = connect({ url: server.base, postId, token: alice, autoStart: false });
  t.after(() => conn.close());

  const empty = await conn.post('   ').catch((e) => e);
  assert.ok(empty instanceof LivecommentsError, String(empty));
  assert.equal(empty.status, 400);
  assert.equal(empty.code, 'invalid_text');
  assert.ok(empty.message.length > 0);

  const missing = await conn.delete('01JDQ7Z8XK3M4N5P6Q7R8S9T0V').catch((e) => e);
  assert.equal(missing.status, 404);
  assert.equal(missing.code, 'not_found');

  const mine = await conn.post('mine');
  const other = connect({ url: server.base, postId, token: bob, autoStart: false });
  const forbidden = await other.delete(mine.id).catch((e) => e);
  assert.equal(forbidden.status, 403);
  assert.equal(forbidden.code, 'forbidden');

  const badToken = connect({ url: server.base, postId, token: 'not-a-jwt', autoStart: false });
  const unauthorized = await badToken.post('x').catch((e) => e);
  assert.equal(unauthorized.status, 401);
  assert.equal(unauthorized.code, 'invalid_token');

  const badPage = await conn.history({ limit: 1000 }).catch((e) => e);
  assert.equal(badPage.status, 400);
  assert.equal(badPage.code, 'invalid_parameter');

  // A bad post id on the stream cannot get better by retrying: one error, then closed.
  const r = recorder();
  const bad = connect({ url: server.base, postId: 'no spaces allowed', ...r.callbacks });
  t.after(() => bad.close());
  await waitFor(() => r.states.includes('closed'), 'the stream with a bad post id to give up');
  assert.equal(r.errors.length, 1);
  assert.equal(r.errors[0].code, 'invalid_post_id');
  assert.equal(r.errors[0].status, 400);
});

test('429 carries retryAfter', async (t) => {
  const limited = await Server.start({ rateLimit: 2, args: ['--rate-window-secs', '60'] });
  t.after(() => limited.stop());
  const token = await devToken(limited.base, 'carol');
  const conn = connect({ url: limited.base, postId: uniquePost('rate'), token, autoStart: false });
  await conn.post('one');
  await conn.post('two');
  const e = await conn.post('three').catch((x) => x);
  assert.ok(e instanceof LivecommentsError, String(e));
  assert.equal(e.status, 429);
  assert.equal(e.code, 'rate_limited');
  assert.ok(Number.isInteger(e.retryAfter) && e.retryAfter > 0, `retryAfter ${e.retryAfter}`);
});

test('an expired token is refreshed through getToken, for posts and for a stream that requires one', async (t) => {
  const secret = 'js-client-test-secret-that-is-long-enough-0123456789';
  const secured = await Server.start({ env: { LIVECOMMENTS_JWT_SECRET: secret }, args: ['--read-requires-token'] });
  t.after(() => secured.stop());
  const postId = uniquePost('token');
  const expired = mintToken(secret, { sub: 'dave', exp: Math.floor(Date.now() / 1000) - 3600 });
  const asked = [];
  const r = recorder();
  const conn = connect({
    url: secured.base,
    postId,
    token: expired,
    getToken: async ({ force }) => { asked.push(force); return mintToken(secret, { sub: 'dave' }); },
    ...r.callbacks,
  });
  t.after(() => conn.close());
  await open(conn, r);
  assert.ok(asked.length >= 1, 'getToken was asked for the expired token');
  const c = await conn.post('fresh token');
  assert.equal(c.user_id, 'dave');
  const other = await rawPost(secured.base, mintToken(secret, { sub: 'erin' }), postId, 'from erin');
  await waitFor(() => r.ids().includes(other.id), 'a live comment on the token-protected stream');
  assert.deepEqual(r.errors, []);
});

test('unknown event kinds reach onEvent', async (t) => {
  // The server does not send pin/viewers yet; a tiny SSE source stands in for the new kinds.
  const { createServer } = await import('node:http');
  const fake = createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/event-stream' });
    res.end('retry: 1000\n\nevent: viewers\ndata: {"viewers": 7}\n\nevent: pin\nid: p1\ndata: {"id":"x","text":"hi"}\n\n');
  });
  await new Promise((resolve) => fake.listen(0, '127.0.0.1', resolve));
  t.after(() => fake.close());
  const r = recorder();
  const conn = connect({ url: `http://127.0.0.1:${fake.address().port}`, postId: 'p', viewers: true, ...r.callbacks });
  t.after(() => conn.close());
  await waitFor(() => r.events.length >= 2, 'the two events');
  conn.close();
  assert.deepEqual(r.events.slice(0, 2).map((e) => [e.type, e.data]), [['viewers', { viewers: 7 }], ['pin', { id: 'x', text: 'hi' }]]);
  assert.equal(conn.lastEventId, 'p1');
  assert.deepEqual(r.comments, []);
});

test('the binary serves this module as /client.js, byte for byte, as JavaScript', async () => {
  const { readFile } = await import('node:fs/promises');
  const res = await fetch(`${server.base}/client.js`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/javascript/);
  assert.equal(await res.text(), await readFile(new URL('../index.js', import.meta.url), 'utf8'));
});
