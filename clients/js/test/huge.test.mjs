// Huge streams (CONTRACT §11) through the client, against the real binary: the viewer count
// (`viewers: true`, onViewers, viewers()), reactions (react(), onReactions, reactions()) with the
// token handling and typed errors of post(), and rate sampling (`rate`, onSampling).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { connect, LivecommentsError, REACTION_KINDS } from '../index.js';
import { Server, devToken, mintToken, rawPost, recorder, uniquePost, waitFor } from './server.mjs';

let server;
let alice;
before(async () => {
  server = await Server.start();
  alice = await devToken(server.base, 'alice');
});
after(async () => { await server?.stop(); });

const open = (r) => waitFor(() => r.states.includes('open'), 'the stream to open');
// Whether a resume token (shared/src/position.rs: `<region>.<floor>` and `<region>_<id>` parts
// joined by `~`) covers comment `id`: a floor at or above it, or its writer's id at or above it.
function covers(token, id) {
  return (token || '').split('~').some((part) => {
    const at = Math.max(part.lastIndexOf('.'), part.lastIndexOf('_'));
    const v = part.slice(at + 1);
    if (part[at] === '.') return v >= id;
    return v.slice(10, 18) === id.slice(10, 18) && v >= id;
  });
}
const sum = (list, kind) => list.reduce((n, c) => n + c[kind], 0);

test('the viewer count: at open, when a second stream comes and when it goes; viewers() agrees', async (t) => {
  const postId = uniquePost('viewers');
  const r = recorder();
  const conn = connect({ url: server.base, postId, viewers: true, ...r.callbacks });
  t.after(() => conn.close());
  await open(r);
  await waitFor(() => r.viewers.at(-1) === 1, 'one viewer, in the first viewers event', { timeout: 15_000 });
  // The GET counts the nodes' reports (once a second each): right within a few seconds.
  await waitFor(async () => (await conn.viewers()) === 1, 'GET /posts/<id>/viewers says 1', { timeout: 15_000 });

  const second = connect({ url: server.base, postId }); // without viewers: it is counted all the same
  t.after(() => second.close());
  await waitFor(() => r.viewers.at(-1) === 2, 'two viewers', { timeout: 15_000 });
  await waitFor(async () => (await conn.viewers()) === 2, 'GET /posts/<id>/viewers says 2', { timeout: 15_000 });

  second.close();
  await waitFor(() => r.viewers.at(-1) === 1, 'back to one viewer', { timeout: 15_000 });
  await waitFor(async () => (await conn.viewers()) === 1, 'GET /posts/<id>/viewers says 1', { timeout: 15_000 });
  assert.ok(r.events.filter((e) => e.type === 'viewers').every((e) => e.id === null), 'viewers events carry no id');
  assert.deepEqual(r.comments, []);
  assert.deepEqual(r.errors, []);
});

test('react() is counted: every stream gets the counts, reactions() the totals', async (t) => {
  const postId = uniquePost('react');
  const r = recorder();
  const watcher = connect({ url: server.base, postId, ...r.callbacks });
  t.after(() => watcher.close());
  await open(r);
  const conn = connect({ url: server.base, postId, token: alice, autoStart: false });
  assert.deepEqual(await conn.reactions(), Object.fromEntries(REACTION_KINDS.map((k) => [k, 0])), 'a new post has none of any kind');

  const answer = await conn.react('love');
  assert.deepEqual(answer, { post_id: postId, kind: 'love' });
  await conn.react('like');
  await conn.react('like');
  await conn.react('angry');
  // Counts since the previous event: they may be split over two events (a second boundary).
  await waitFor(() => sum(r.reactions, 'like') === 2 && sum(r.reactions, 'love') === 1 && sum(r.reactions, 'angry') === 1,
    'the stream to carry like 2, love 1, angry 1');
  for (const counts of r.reactions) assert.deepEqual(Object.keys(counts).slice(0, 6), [...REACTION_KINDS], 'every kind in each event');
  assert.equal(sum(r.reactions, 'haha') + sum(r.reactions, 'wow') + sum(r.reactions, 'sad'), 0);
  await waitFor(async () => {
    const totals = await conn.reactions();
    return totals.like === 2 && totals.love === 1 && totals.angry === 1 && totals.haha === 0 ? totals : false;
  }, 'the totals of GET /posts/<id>/reactions');
  assert.ok(r.events.filter((e) => e.type === 'reactions').every((e) => e.id === null), 'reactions events carry no id');
  assert.deepEqual(r.comments, []);
});

test('react() errors are LivecommentsError: bad kind 400, no token, bad token 401, 429 with retryAfter', async () => {
  const postId = uniquePost('react-errors');
  const conn = connect({ url: server.base, postId, token: alice, autoStart: false });
  const bad = await conn.react('meh').catch((e) => e);
  assert.ok(bad instanceof LivecommentsError, String(bad));
  assert.equal(bad.status, 400);
  assert.equal(bad.code, 'invalid_parameter');

  const anonymous = connect({ url: server.base, postId, autoStart: false });
  const missing = await anonymous.react('like').catch((e) => e);
  assert.equal(missing.code, 'missing_token');

  const forged = connect({ url: server.base, postId, token: 'not-a-jwt', autoStart: false });
  const unauthorized = await forged.react('like').catch((e) => e);
  assert.equal(unauthorized.status, 401);
  assert.equal(unauthorized.code, 'invalid_token');

  // More than 20 a second from one user: some are refused, with Retry-After.
  const bob = connect({ url: server.base, postId, token: await devToken(server.base, 'bob'), autoStart: false });
  const results = await Promise.all(Array.from({ length: 60 }, () => bob.react('haha').then(() => null, (e) => e)));
  const refused = results.filter(Boolean);
  assert.ok(refused.length > 0, 'some of 60 at once are over the limit');
  assert.ok(results.length - refused.length >= 1, 'and some are accepted');
  for (const e of refused) {
    assert.equal(e.status, 429, String(e));
    assert.equal(e.code, 'rate_limited');
    assert.ok(Number.isInteger(e.retryAfter) && e.retryAfter > 0, `retryAfter ${e.retryAfter}`);
  }
});

test('react() asks getToken again after a 401 and retries once; a token for other posts gets 403', async (t) => {
  const secret = 'js-client-react-secret-that-is-long-enough-0123456789';
  const keyed = await Server.start({ env: { LIVECOMMENTS_JWT_SECRET: secret } });
  t.after(() => keyed.stop());
  const postId = uniquePost('react-token');
  const asked = [];
  const conn = connect({
    url: keyed.base,
    postId,
    // Signed with another key (as after a key rotation): only the server's 401 tells.
    token: mintToken('another-secret-that-is-also-long-enough-0123456789', { sub: 'dave' }),
    getToken: async ({ force }) => { asked.push(force); return mintToken(secret, { sub: 'dave' }); },
    autoStart: false,
  });
  assert.deepEqual(await conn.react('wow'), { post_id: postId, kind: 'wow' });
  assert.deepEqual(asked, [true], 'one forced refresh after the 401');

  const scoped = connect({ url: keyed.base, postId, token: mintToken(secret, { sub: 'erin', posts: ['elsewhere-*'] }), autoStart: false });
  const forbidden = await scoped.react('wow').catch((e) => e);
  assert.ok(forbidden instanceof LivecommentsError, String(forbidden));
  assert.equal(forbidden.status, 403);
  assert.equal(forbidden.code, 'forbidden');
});

test('rate sampling: a burst reaches a `rate: 2` stream as a sample, with onSampling; a full stream gets all', async (t) => {
  const postId = uniquePost('sampled');
  const sampled = recorder();
  const full = recorder();
  const a = connect({ url: server.base, postId, rate: 2, ...sampled.callbacks });
  const b = connect({ url: server.base, postId, ...full.callbacks });
  t.after(() => { a.close(); b.close(); });
  await open(sampled);
  await open(full);
  const burst = 60;
  const posted = await Promise.all(Array.from({ length: burst }, (_, i) => rawPost(server.base, alice, postId, `burst ${i}`)));
  await waitFor(() => full.comments.length === burst, 'every comment on the stream without rate');
  await waitFor(() => sampled.samplings.length > 0, 'an event: sampling on the rate-2 stream');
  const s = sampled.samplings[0];
  assert.equal(s.rate, 2);
  assert.ok(s.shown <= s.total && s.total > 2, `shown ${s.shown} of ${s.total}`);
  assert.ok(sampled.comments.length > 0, 'some comments are shown');
  assert.ok(sampled.comments.length < burst, `a sample: ${sampled.comments.length} of ${burst}`);
  const ids = new Set(posted.map((c) => c.id));
  assert.ok(sampled.comments.every((c) => ids.has(c.id)), 'only comments that were posted');
  // The resume token advances past the skipped comments, and a resume does not bring them back.
  const newest = posted.map((c) => c.id).sort().at(-1);
  await waitFor(() => covers(a.lastEventId, newest), `the sampled stream’s position to cover ${newest}`);
  const shownBefore = sampled.comments.length;
  a.reconnect();
  await waitFor(() => sampled.states.filter((x) => x === 'resumed').length === 1, 'the sampled stream to resume');
  const marker = await rawPost(server.base, alice, postId, 'after the resume');
  await waitFor(() => sampled.comments.some((c) => c.id === marker.id), 'the comment posted after the resume');
  assert.deepEqual(sampled.comments.slice(shownBefore).map((c) => c.text), ['after the resume'], 'nothing skipped was replayed');
  assert.deepEqual(sampled.errors, []);
});

test('a rate outside 1..=1000 is refused: the stream gives up with invalid_parameter', async (t) => {
  const r = recorder();
  const conn = connect({ url: server.base, postId: uniquePost('bad-rate'), rate: 1001, ...r.callbacks });
  t.after(() => conn.close());
  await waitFor(() => r.states.includes('closed'), 'the stream with rate 1001 to give up');
  assert.equal(r.errors.length, 1);
  assert.equal(r.errors[0].status, 400);
  assert.equal(r.errors[0].code, 'invalid_parameter');
});
