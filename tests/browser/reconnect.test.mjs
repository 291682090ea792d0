// The server is killed (SIGKILL) and restarted on the same port and data dir while comments are
// posted through the API: the page reconnects by itself (EventSource + Last-Event-ID) and shows
// exactly the comments it missed, none twice.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import {
  connState, devToken, loadAll, openPage, postComment, postViaUi, screenshot, serverAndBrowser, shownIds,
  sleep, TIMEOUT, waitFor, waitShown, waitState,
} from './harness.mjs';

const env = serverAndBrowser();

const POST = 'restart-me';

async function assertExactly(page, ids, what) {
  await waitShown(page, ids, what);
  // Settle: nothing may arrive a second time a moment later (a replay overlapping the live stream).
  await sleep(500);
  const shown = await shownIds(page);
  assert.equal(new Set(shown).size, shown.length, `no comment shown twice (${what})`);
  assert.deepEqual([...shown].sort(), [...ids].sort(), what);
}

test('the page catches up exactly after the server is killed and restarted', { timeout: 8 * TIMEOUT }, async () => {
  const expected = new Set();
  let token = await devToken(env.server.base, 'poster');
  for (let i = 1; i <= 3; i++) expected.add((await postComment(env.server.base, token, POST, `before the page ${i}`)).id);

  const page = await openPage(env.browser, env.server.base, POST);
  await assertExactly(page, expected, 'history on open');
  for (let i = 1; i <= 2; i++) expected.add((await postComment(env.server.base, token, POST, `live ${i}`)).id);
  await assertExactly(page, expected, 'live comments');
  // The page signs in through the form now, so it holds a token of this server process.
  await postViaUi(page, 'viewer', 'from the page, before the restarts');
  await waitFor(async () => (await page.$eval('#notice', (n) => n.textContent)) === 'Posted.', 'the page’s post');
  expected.add(await page.$eval('#comments > li:first-child', (li) => li.dataset.id));

  // 1. A deterministic gap: the page cannot reconnect until we let it, while comments are posted.
  await page.route('**/comments/stream**', (route) => route.abort());
  await env.server.kill('SIGKILL');
  await waitState(page, ['reconnecting', 'offline']);
  await env.server.start();
  token = await devToken(env.server.base, 'poster'); // the dev secret is new with every process start
  const missed = [];
  for (let i = 1; i <= 4; i++) missed.push((await postComment(env.server.base, token, POST, `missed ${i}`)).id);
  await sleep(300);
  assert.ok(!(await shownIds(page)).some((id) => missed.includes(id)), 'the page was really cut off');
  missed.forEach((id) => expected.add(id));
  await page.unroute('**/comments/stream**');
  await waitState(page, ['caught-up']);
  await assertExactly(page, expected, 'after the first restart');
  expected.add((await postComment(env.server.base, token, POST, 'live again')).id);
  await assertExactly(page, expected, 'live after catching up');
  await screenshot(page, 'reconnect-caught-up');

  // 2. A kill in the middle of a stream of posts. A POST cut off by the kill may or may not have
  //    been stored: it is retried after the restart with the same Idempotency-Key, and the
  //    comment must then appear exactly once.
  let stop = false;
  const poster = (async () => {
    for (let i = 1; !stop; i++) {
      const key = randomUUID();
      for (;;) {
        try {
          expected.add((await postComment(env.server.base, token, POST, `during restart ${i}`, { idempotencyKey: key })).id);
          break;
        } catch (e) {
          if (/POST \/comment: 401/.test(e.message)) token = await devToken(env.server.base, 'poster').catch(() => token);
          await sleep(100);
        }
      }
      await sleep(30);
    }
  })();
  await sleep(600);
  await env.server.kill('SIGKILL');
  await waitState(page, ['reconnecting', 'offline']);
  await sleep(300);
  await env.server.start();
  await sleep(600);
  stop = true;
  await poster;
  assert.ok(expected.size > 12, `comments were posted around the kill (${expected.size})`);
  await waitState(page, ['caught-up']);
  await assertExactly(page, expected, 'after the kill during posting');

  // The history agrees with the page: a fresh page, scrolled to the end, shows the same set.
  const fresh = await openPage(env.browser, env.server.base, POST);
  await loadAll(fresh);
  await assertExactly(fresh, expected, 'a fresh page');
  assert.deepEqual(await shownIds(fresh), await shownIds(page), 'same order in both pages');

  assert.equal(await connState(page), 'caught-up');
  assert.deepEqual(page.errors, []);

  // The page's token is from the first process (a dev secret of its own): posting renews it.
  await postViaUi(page, 'viewer', 'from the page, after the restarts');
  await waitFor(async () => (await page.$eval('#notice', (n) => n.textContent)) === 'Posted.', 'posting with a renewed token');
  expected.add(await page.$eval('#comments > li:first-child', (li) => li.dataset.id));
  await assertExactly(page, expected, 'after posting from the page');
  await screenshot(page, 'reconnect-after-kill');
});

test('a page that has seen no live event yet also catches up after a restart', { timeout: 4 * TIMEOUT }, async () => {
  // Before its first event the browser has no Last-Event-ID to send: the page resumes with
  // since=<the server's time of its first history page> instead.
  const post = 'quiet-until-restart';
  const expected = new Set();
  let token = await devToken(env.server.base, 'poster');
  expected.add((await postComment(env.server.base, token, post, 'history only')).id);
  const page = await openPage(env.browser, env.server.base, post);
  await assertExactly(page, expected, 'history on open');

  await page.route('**/comments/stream**', (route) => route.abort());
  await env.server.kill('SIGKILL');
  await waitState(page, ['reconnecting', 'offline']);
  await env.server.start();
  token = await devToken(env.server.base, 'poster');
  for (let i = 1; i <= 3; i++) expected.add((await postComment(env.server.base, token, post, `while away ${i}`)).id);
  await page.unroute('**/comments/stream**');
  await waitState(page, ['caught-up']);
  await assertExactly(page, expected, 'after the restart');
  expected.add((await postComment(env.server.base, token, post, 'and live')).id);
  await assertExactly(page, expected, 'live after catching up');
  assert.deepEqual(page.errors, []);
  await screenshot(page, 'reconnect-no-event-yet');
});

