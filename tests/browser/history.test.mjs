// History: newest first, older pages load when the sentinel scrolls into view (next_cursor),
// and comments that arrive both live and in a history page are shown once; `event: truncated`
// reloads the history.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  devToken, loadAll, openPage, postComment, screenshot, serverAndBrowser, shownIds, shownTexts,
  TIMEOUT, waitFor,
} from './harness.mjs';

const env = serverAndBrowser();

test('older pages load on scroll, newest first, each comment once', { timeout: 4 * TIMEOUT }, async () => {
  const post = 'long-thread';
  const token = await devToken(env.server.base, 'historian');
  const posted = [];
  for (let i = 1; i <= 45; i++) posted.push(await postComment(env.server.base, token, post, `comment number ${i}`));

  const page = await openPage(env.browser, env.server.base, post, { viewport: { width: 800, height: 600 } });
  await waitFor(async () => (await shownIds(page)).length >= 20, 'the first page of history');
  const first = await shownTexts(page);
  assert.equal(first[0], 'comment number 45', 'newest first');
  assert.ok(first.length < 45, `only the first page(s) at first (${first.length})`);

  // New comments while scrolling back: they go on top, and are not repeated by later pages.
  posted.push(await postComment(env.server.base, token, post, 'comment number 46'));
  await waitFor(async () => (await shownTexts(page))[0] === 'comment number 46', 'the live comment on top');

  await loadAll(page);
  const texts = await shownTexts(page);
  assert.deepEqual(texts, posted.map((c) => c.text).reverse(), 'every comment once, newest first');
  assert.equal(await page.$eval('#load-older', (b) => b.hidden), true);
  await screenshot(page, 'history-scrolled');
});

test('event: truncated (more missed than one replay carries) reloads the history, each comment once', { timeout: 4 * TIMEOUT }, async () => {
  const post = 'truncated-replay';
  const token = await devToken(env.server.base, 'historian');
  const posted = [];
  for (let i = 1; i <= 25; i++) posted.push(await postComment(env.server.base, token, post, `old ${i}`));

  const context = await env.browser.newContext({ viewport: { width: 800, height: 600 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  let newestPageLoads = 0;
  page.on('request', (r) => { if (/\/comments\?/.test(r.url()) && !/before=/.test(r.url())) newestPageLoads += 1; });
  // The first stream answers as the server does when a resume would exceed its replay limit;
  // the page's next connection reaches the real server.
  await page.route('**/comments/stream?*', (route) => route.fulfill({
    status: 200,
    headers: { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' },
    body: 'retry: 500\n\nevent: truncated\ndata: {"reason":"replay_limit"}\n\n',
  }), { times: 1 });
  await page.goto(`${env.server.base}/?post=${post}`);
  await waitFor(async () => ['live', 'caught-up'].includes(await page.$eval('#conn', (e) => e.dataset.state))
    && (await shownIds(page)).length >= 20, 'the page, resynced and live');
  posted.push(await postComment(env.server.base, token, post, 'new after the resync'));
  await waitFor(async () => (await shownTexts(page))[0] === 'new after the resync', 'the live comment');
  await loadAll(page);
  assert.deepEqual(await shownTexts(page), posted.map((c) => c.text).reverse(), 'every comment once, newest first');
  assert.ok(newestPageLoads >= 2, `the newest page was loaded again (${newestPageLoads})`);
  assert.deepEqual(errors, []);
  await screenshot(page, 'history-truncated');
  await context.close();
});
