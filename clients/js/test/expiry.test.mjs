// A stream that requires a token is closed by the server with `event: reconnect`
// (`reason: token_expired`) when the token's `exp` passes (CONTRACT §12); the client asks
// getToken() for a fresh one, resumes with Last-Event-ID, and every comment posted before,
// around and after the expiry arrives exactly once, in order.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { connect } from '../index.js';
import { Server, mintToken, rawPost, recorder, sleep, uniquePost, waitFor } from './server.mjs';

const SECRET = 'js-expiry-test-secret-that-is-long-enough-0123456789';
const TTL = 3; // seconds: the first token expires while comments keep coming

test('the server closes a stream at its token expiry; a fresh token from getToken resumes it without loss', async (t) => {
  const server = await Server.start({ env: { LIVECOMMENTS_JWT_SECRET: SECRET }, args: ['--read-requires-token'] });
  t.after(() => server.stop());
  const postId = uniquePost('expiry');
  const handed = [];
  const r = recorder();
  const conn = connect({
    url: server.base,
    postId,
    // refreshMargin 0: the client keeps a token until the server says it expired, so the
    // refresh below is the server's doing, not the client's own timer.
    refreshMargin: 0,
    minDelay: 100,
    maxDelay: 1000,
    getToken: async () => {
      const exp = Math.floor(Date.now() / 1000) + (handed.length === 0 ? TTL : 600);
      handed.push(exp);
      return mintToken(SECRET, { sub: 'viewer', exp, posts: [postId] });
    },
    ...r.callbacks,
  });
  t.after(() => conn.close());
  await waitFor(() => r.states.includes('open'), 'the stream to open');
  assert.equal(handed.length, 1);

  const poster = mintToken(SECRET, { sub: 'poster' });
  const posted = [];
  // One comment every 100 ms, from before the expiry until two seconds after it (pacing, not
  // a wait for an event: what is checked is awaited with waitFor below).
  while (Date.now() / 1000 < handed[0] + 2) {
    posted.push((await rawPost(server.base, poster, postId, `n${posted.length}`)).id);
    await sleep(100);
  }
  await waitFor(() => posted.every((id) => r.ids().includes(id)), 'every comment after the resume');
  const reconnect = r.events.find((e) => e.type === 'reconnect');
  assert.ok(reconnect, 'event: reconnect from the server');
  assert.equal(reconnect.data.reason, 'token_expired');
  assert.ok(handed.length >= 2, `getToken was asked again (${handed.length})`);
  assert.ok(r.states.includes('resumed'), JSON.stringify(r.states));
  assert.deepEqual(r.ids(), posted, 'each comment once, in order');
  assert.deepEqual(r.errors, []);
});
