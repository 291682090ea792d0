// Huge streams on the demo page (CONTRACT §11): the live viewer count, reaction buttons with
// their totals and the floating reactions they cause on other pages, the note of a sampled
// stream (`?rate=R`), and the refusals of POST /reaction in words.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  devToken, openPage, postBurst, postReaction, reactionTotals, screenshot, serverAndBrowser, shownIds,
  TIMEOUT, waitFor, waitShown, waitText,
} from './harness.mjs';

const env = serverAndBrowser();
// The contract: the count is right within 5 s of a change; three times that on a busy machine.
const COUNT_DEADLINE = 15_000;

const total = (page, kind) => page.$eval(`#total-${kind}`, (e) => Number(e.dataset.count));
const noErrors = (...pages) => {
  for (const page of pages) {
    assert.deepEqual(page.errors, [], 'no script errors');
    assert.deepEqual(page.dialogs, [], 'no dialogs');
  }
};
const streamUrl = (page) => {
  const r = page.requests.find((x) => x.url.includes('/comments/stream?'));
  return r && new URL(r.url);
};

test('the viewer count goes 1 → 2 when a second page opens and back to 1 when it closes', { timeout: 4 * TIMEOUT }, async () => {
  const post = 'huge-viewers';
  const first = await openPage(env.browser, env.server.base, post);
  await waitText(first, '#viewers', '👁 1 watching', { timeout: COUNT_DEADLINE });
  assert.equal(streamUrl(first).searchParams.get('viewers'), '1', 'the page asks for viewer events');
  // Quiet for screen readers: it changes all the time on a busy post.
  assert.equal(await first.$eval('#viewers', (e) => e.getAttribute('aria-live')), 'off');
  assert.ok(await first.$eval('#viewers', (e) => e.getAttribute('aria-label')), 'the count has a label');

  const second = await openPage(env.browser, env.server.base, post);
  await waitText(second, '#viewers', '👁 2 watching', { timeout: COUNT_DEADLINE });
  await waitText(first, '#viewers', '👁 2 watching', { timeout: COUNT_DEADLINE });
  await screenshot(first, 'huge-viewers-2');

  await second.context().close();
  await waitText(first, '#viewers', '👁 1 watching', { timeout: COUNT_DEADLINE });
  noErrors(first);
});

test('a reaction button: a floating reaction on another page, totals rise everywhere', { timeout: 4 * TIMEOUT }, async () => {
  const post = 'huge-reactions';
  const base = env.server.base;
  // Two reactions before the other pages open: alice's page counts them from its stream, the
  // pages opened later read them from GET /posts/<id>/reactions.
  const alice = await openPage(env.browser, base, post);
  await alice.waitForSelector('#reaction-buttons[data-loaded="true"]', { state: 'attached' });
  const early = await devToken(base, 'early');
  for (let i = 0; i < 2; i += 1) assert.equal((await postReaction(base, early, post, 'love')).status, 202);
  await waitFor(async () => (await total(alice, 'love')) === 2, 'the two early reactions on the open page');
  const bob = await openPage(env.browser, base, post);
  const calm = await openPage(env.browser, base, post, { context: { reducedMotion: 'reduce' } });
  for (const page of [alice, bob, calm]) {
    await waitFor(async () => (await total(page, 'love')) === 2, 'the love total of 2');
    assert.equal(await total(page, 'like'), 0);
  }
  // Every kind has a button with a name and a total next to it.
  const buttons = await alice.$$eval('#reaction-buttons button', (bs) => bs.map((b) => [b.dataset.kind, b.getAttribute('aria-label')]));
  assert.deepEqual(buttons, [['like', 'Like'], ['love', 'Love'], ['haha', 'Haha'], ['wow', 'Wow'], ['sad', 'Sad'], ['angry', 'Angry']]);

  await alice.fill('#user-name', 'alice');
  await alice.click('#react-like');
  // Bob sees it float up; the floats are decoration, hidden from screen readers.
  await bob.waitForSelector('#floats .float[data-kind="like"]', { state: 'attached', timeout: TIMEOUT });
  assert.equal(await bob.$eval('#floats', (e) => e.getAttribute('aria-hidden')), 'true');
  for (const page of [alice, bob, calm]) {
    await waitFor(async () => (await total(page, 'like')) === 1, 'the like total to reach 1');
    assert.equal(await total(page, 'love'), 2);
  }
  // With reduced motion: no floats, the counts in words instead.
  await waitText(calm, '#reaction-burst', 'Just now: 👍 1');
  assert.equal(await calm.$eval('#floats', (e) => e.dataset.shown), '0');
  assert.equal(await alice.$eval('#react-notice', (e) => e.textContent), '', 'no error');
  await screenshot(bob, 'huge-reaction-float');

  // A crowd: 150 reactions from 10 people at once. The floats per event are capped at 20 and
  // the screen at 60; the totals count every one.
  await bob.evaluate(() => {
    const floats = document.getElementById('floats');
    window.floatLog = { perEvent: [], most: 0 };
    new MutationObserver((records) => {
      for (const r of records) {
        if (r.type === 'attributes') window.floatLog.perEvent.push(Number(floats.dataset.shown) - Number(r.oldValue));
      }
      window.floatLog.most = Math.max(window.floatLog.most, floats.childElementCount);
    }).observe(floats, { childList: true, attributes: true, attributeFilter: ['data-shown'], attributeOldValue: true });
  });
  const crowd = await Promise.all(Array.from({ length: 10 }, (_, i) => devToken(base, `fan-${i}`)));
  const answers = await Promise.all(crowd.flatMap((t) => Array.from({ length: 15 }, (_, i) => postReaction(base, t, post, i % 3 ? 'haha' : 'wow'))));
  assert.deepEqual([...new Set(answers.map((r) => r.status))], [202]);
  for (const page of [alice, bob]) {
    await waitFor(async () => (await total(page, 'haha')) === 100 && (await total(page, 'wow')) === 50, 'haha 100 and wow 50');
  }
  const log = await bob.evaluate(() => window.floatLog);
  assert.ok(log.perEvent.length >= 1, `floats for the crowd: ${JSON.stringify(log)}`);
  assert.ok(log.perEvent.every((n) => n >= 1 && n <= 20), `at most 20 floats per event: ${JSON.stringify(log)}`);
  assert.ok(log.most <= 60, `at most 60 on screen: ${JSON.stringify(log)}`);
  assert.ok(log.perEvent.some((n) => n === 20), `an event of 150 (or of most of it) shows the 20 allowed: ${JSON.stringify(log)}`);
  assert.equal(await calm.$eval('#floats', (e) => e.dataset.shown), '0', 'still no floats with reduced motion');
  const totals = await reactionTotals(base, post);
  assert.deepEqual(totals, { like: 1, love: 2, haha: 100, wow: 50, sad: 0, angry: 0 });
  noErrors(alice, bob, calm);
});

test('?rate=2: a burst of 60 comments shows a sample and the "Showing … of …" note', { timeout: 4 * TIMEOUT }, async () => {
  const post = 'huge-sampled';
  const base = env.server.base;
  const sampled = await openPage(env.browser, base, post, { query: '&rate=2' });
  const full = await openPage(env.browser, base, post);
  assert.equal(streamUrl(sampled).searchParams.get('rate'), '2', 'the page passes ?rate= to its stream');
  assert.equal(streamUrl(full).searchParams.get('rate'), null);
  // The (empty) history is loaded: every comment shown below came from the stream.
  for (const page of [sampled, full]) await page.waitForSelector('#end', { state: 'visible' });

  const posted = await postBurst(base, await devToken(base, 'crowd'), post, 60);
  await waitShown(full, posted.map((c) => c.id), 'every comment on the page without ?rate');
  await waitText(sampled, '#sampling', /^Showing \d+ of \d+ comments per second$/);
  const [, shownPerSecond, receivedPerSecond] = (await sampled.textContent('#sampling')).match(/(\d+) of (\d+)/).map(Number);
  assert.ok(shownPerSecond <= 2 && receivedPerSecond > 2, `the note: ${shownPerSecond} of ${receivedPerSecond}`);
  await screenshot(sampled, 'huge-sampled');
  // No sampling event for 3 s: the note goes away.
  await sampled.waitForSelector('#sampling', { state: 'hidden', timeout: TIMEOUT });
  const ids = await shownIds(sampled);
  const all = new Set(posted.map((c) => c.id));
  assert.ok(ids.length > 0, 'some comments are shown');
  assert.ok(ids.length < posted.length, `fewer comments than posted: ${ids.length} of ${posted.length}`);
  assert.ok(ids.every((id) => all.has(id)), 'only comments that were posted');
  assert.equal(new Set(ids).size, ids.length, 'none twice');
  noErrors(sampled, full);
});

test('a ?rate outside 1..=1000 is ignored: the stream opens without it', { timeout: 2 * TIMEOUT }, async () => {
  for (const rate of ['0', '1001', 'abc', '2.5', '-3']) {
    const page = await openPage(env.browser, env.server.base, 'huge-bad-rate', { query: `&rate=${encodeURIComponent(rate)}` });
    assert.equal(streamUrl(page).searchParams.get('rate'), null, `?rate=${rate} is not passed on`);
    noErrors(page);
    await page.context().close();
  }
});

test('refused reactions read in words: no name, 429 with Retry-After, 401 after a renewal, 403', { timeout: 4 * TIMEOUT }, async () => {
  const post = 'huge-react-errors';
  const page = await openPage(env.browser, env.server.base, post);

  await page.click('#react-wow');
  await waitText(page, '#react-notice', /Enter your name first/);
  assert.equal(await page.evaluate(() => document.activeElement.id), 'user-name');

  // 60 taps at once from one user: past the server's 20 a second.
  await page.fill('#user-name', 'tapper');
  await page.evaluate(() => { for (let i = 0; i < 60; i += 1) document.getElementById('react-haha').click(); });
  await waitText(page, '#react-notice', /^Reaction not sent: Rate limited — try again in \d+ s: /);
  assert.equal(await page.$eval('#react-notice', (n) => n.classList.contains('error')), true);
  await screenshot(page, 'huge-react-429');

  // A 401 (the token expired, or the server restarted with a new dev secret): the page renews
  // its token at /dev/token and sends the reaction again, once. (Another name: tapper is still
  // over the limit.)
  await page.fill('#user-name', 'renewer');
  let refusals = 0;
  await page.route('**/reaction?*', (route) => {
    if (refusals > 0) return route.continue();
    refusals += 1;
    return route.fulfill({ status: 401, contentType: 'application/json', body: JSON.stringify({ error: { code: 'invalid_token', message: 'the token has expired' } }) });
  });
  const tokens = () => page.requests.filter((r) => r.url.includes('/dev/token?user_id=renewer')).length;
  const accepted = page.waitForResponse((r) => r.url().includes('/reaction?') && r.status() === 202);
  await page.click('#react-sad');
  await accepted;
  assert.equal(refusals, 1, 'the first attempt was refused with 401');
  assert.equal(tokens(), 2, 'a token for the name, then a renewed one after the 401');

  // A 401 that stays: said in words.
  await page.unrouteAll();
  await page.route('**/reaction?*', (route) => route.fulfill({
    status: 401, contentType: 'application/json', body: JSON.stringify({ error: { code: 'invalid_token', message: 'bad signature' } }),
  }));
  await page.click('#react-angry');
  await waitText(page, '#react-notice', 'Reaction not sent: the server did not accept your sign-in (bad signature)');

  // 403: a token for other posts.
  await page.unrouteAll();
  await page.route('**/reaction?*', (route) => route.fulfill({
    status: 403, contentType: 'application/json', body: JSON.stringify({ error: { code: 'forbidden', message: 'this token is not valid for this post' } }),
  }));
  await page.click('#react-love');
  await waitText(page, '#react-notice', 'Reaction not sent: not allowed (this token is not valid for this post)');
  assert.equal(await page.$eval('#react-notice', (n) => n.classList.contains('error')), true);
  noErrors(page);
});
