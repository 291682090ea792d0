// Resume after a drop: kill -9 the server mid-stream, restart it on the same port and data dir,
// and every comment arrives exactly once; replays of what was already delivered are dropped.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { connect } from '../index.js';
import { Server, devToken, rawPost, recorder, uniquePost, waitFor } from './server.mjs';

// Short backoff so the test does not wait out the production delays; jitter still applies.
const FAST = { minDelay: 100, maxDelay: 1000 };

test('kill -9 mid-stream and restart: every comment exactly once, deletions while away applied', async (t) => {
  const server = await Server.start();
  t.after(() => server.stop());
  const postId = uniquePost('kill');
  const r = recorder();
  const conn = connect({ url: server.base, postId, ...FAST, ...r.callbacks });
  t.after(() => conn.close());
  await waitFor(() => r.states.includes('open'), 'the stream to open');

  let token = await devToken(server.base, 'alice');
  const before = [];
  for (let i = 0; i < 3; i += 1) before.push(await rawPost(server.base, token, postId, `before ${i}`));
  await waitFor(() => r.comments.length === 3, 'the comments posted before the kill');

  await server.kill('SIGKILL');
  await waitFor(() => r.states.at(-1) === 'reconnecting', 'the client to notice the drop');
  await server.start();
  // A restarted standalone has a new dev secret: the old token is no longer valid.
  token = await devToken(server.base, 'alice');

  // Posted right after the restart, most likely before the client is back: they come in the replay.
  const after = [];
  for (let i = 0; i < 3; i += 1) after.push(await rawPost(server.base, token, postId, `after ${i}`));
  const gone = before[1];
  const del = await fetch(`${server.base}/comment/${gone.id}?post_id=${postId}`, { method: 'DELETE', headers: { Authorization: `Bearer ${token}` } });
  assert.equal(del.status, 204);

  await waitFor(() => r.states.includes('resumed'), 'the stream to resume');
  const live = [];
  for (let i = 0; i < 3; i += 1) live.push(await rawPost(server.base, token, postId, `live ${i}`));

  const all = [...before, ...after, ...live].map((c) => c.id);
  await waitFor(() => all.every((id) => r.ids().includes(id)), 'every comment after the restart');
  await waitFor(() => r.deletes.some((d) => d.id === gone.id), 'the deletion made while the client was away');
  assert.deepEqual(r.ids(), all, 'each comment once, in order');
  assert.equal(r.deletes.length, 1);
  assert.ok(conn.stats.reconnects >= 1);
  assert.ok(r.errors.every((e) => e.code === 'network_error' || e.code === 'stream_idle'), JSON.stringify(r.errors));
});

test('a replay of what was already delivered is de-duplicated; history counts as delivered', async (t) => {
  const server = await Server.start();
  t.after(() => server.stop());
  const postId = uniquePost('dedup');
  const token = await devToken(server.base, 'bob');
  const older = [];
  for (let i = 0; i < 3; i += 1) older.push(await rawPost(server.base, token, postId, `older ${i}`));

  const r = recorder();
  const conn = connect({ url: server.base, postId, ...FAST, ...r.callbacks });
  t.after(() => conn.close());
  await waitFor(() => r.states.includes('open'), 'the stream to open');
  const page = await conn.history({ limit: 10 });
  assert.deepEqual(page.comments.map((c) => c.id), older.map((c) => c.id).reverse());

  const fresh = [];
  for (let i = 0; i < 2; i += 1) fresh.push(await rawPost(server.base, token, postId, `fresh ${i}`));
  await waitFor(() => r.comments.length === 2, 'the two live comments');

  // Rewind to the beginning of time: the server replays all five.
  const rawBefore = r.events.filter((e) => e.type === 'comment').length;
  conn.reconnect({ since: 0 });
  await waitFor(() => r.events.filter((e) => e.type === 'comment').length >= rawBefore + 5, 'the replay of all five');
  const last = await rawPost(server.base, token, postId, `last ${randomUUID()}`);
  await waitFor(() => r.ids().includes(last.id), 'the comment after the replay');
  assert.deepEqual(r.ids(), [...fresh, last].map((c) => c.id), 'nothing delivered twice, history not re-delivered');
  assert.ok(conn.stats.duplicates >= 5, `duplicates ${conn.stats.duplicates}`);
});

test('a graceful shutdown sends event: reconnect; the client resumes on the restarted server without loss', async (t) => {
  const server = await Server.start();
  t.after(() => server.stop());
  const postId = uniquePost('term');
  const r = recorder();
  const conn = connect({ url: server.base, postId, ...FAST, ...r.callbacks });
  t.after(() => conn.close());
  await waitFor(() => r.states.includes('open'), 'the stream to open');
  let token = await devToken(server.base, 'carol');
  const first = await rawPost(server.base, token, postId, 'before the shutdown');
  await waitFor(() => r.ids().includes(first.id), 'the first comment');

  await server.kill('SIGTERM');
  await waitFor(() => r.events.some((e) => e.type === 'reconnect'), 'event: reconnect from the closing server');
  assert.equal(r.states.at(-1), 'reconnecting');
  await server.start();
  token = await devToken(server.base, 'carol');
  const second = await rawPost(server.base, token, postId, 'after the restart');
  await waitFor(() => r.ids().includes(second.id), 'the comment after the restart');
  assert.deepEqual(r.ids(), [first.id, second.id]);
  assert.ok(r.states.includes('resumed'));
});
