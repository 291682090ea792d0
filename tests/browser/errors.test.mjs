// API errors reach the status line: a 429 (rate limited), a server that hands out no demo
// tokens (a JWT secret is configured; the page still streams what others post), and a failed
// history load, which the page offers to retry.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  devToken, launchBrowser, mintToken, openPage, postComment, postViaUi, screenshot, Server, shownIds, shownTexts,
  TIMEOUT, waitFor,
} from './harness.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

const notice = (page) => page.$eval('#notice', (n) => n.textContent);

test('a 429 shows in the status line and keeps the text', { timeout: 2 * TIMEOUT }, async () => {
  const server = await Server.start({ rateLimit: 1 });
  try {
    const page = await openPage(browser, server.base, 'errors');
    await postViaUi(page, 'eager', 'first one');
    await waitFor(async () => (await notice(page)) === 'Posted.', 'the first post');
    await postViaUi(page, 'eager', 'second one, too soon');
    await waitFor(async () => /rate limited/i.test(await notice(page)), 'the 429 in the status line');
    assert.equal(await page.$eval('#notice', (n) => n.classList.contains('error')), true);
    assert.equal(await page.$eval('#comment-text', (t) => t.value), 'second one, too soon', 'the text is kept to retry');
    assert.deepEqual(await shownTexts(page), ['first one']);
    await screenshot(page, 'rate-limited');
  } finally {
    await server.stop();
  }
});

test('with a configured secret: no demo tokens, but the page streams comments', { timeout: 2 * TIMEOUT }, async () => {
  const secret = 'browser-test-secret-0123456789abcdef';
  const server = await Server.start({ env: { LIVECOMMENTS_JWT_SECRET: secret } });
  try {
    const page = await openPage(browser, server.base, 'keyed');
    await postViaUi(page, 'visitor', 'can I post?');
    await waitFor(async () => /demo tokens/i.test(await notice(page)), 'the missing /dev/token explained');
    const token = mintToken(secret, { sub: 'backend' });
    await postComment(server.base, token, 'keyed', 'posted with a real HS256 token');
    await waitFor(async () => (await shownTexts(page)).includes('posted with a real HS256 token'), 'the comment, live');
    await screenshot(page, 'no-dev-token');
  } finally {
    await server.stop();
  }
});

test('a failed history load is reported and can be retried', { timeout: 2 * TIMEOUT }, async () => {
  const server = await Server.start();
  try {
    const post = 'flaky-history';
    const c = await postComment(server.base, await devToken(server.base, 'someone'), post, 'here all along');
    const context = await browser.newContext();
    const page = await context.newPage();
    // The first GET /comments fails as a store outage would (503 with the API's error body).
    await page.route('**/comments?*', (route) => route.fulfill({
      status: 503, contentType: 'application/json',
      body: JSON.stringify({ error: { code: 'unavailable', message: 'the comment store is unavailable' } }),
    }), { times: 1 });
    await page.goto(`${server.base}/?post=${post}`);
    await waitFor(async () => /could not load comments: the comment store is unavailable/i.test(await notice(page)), 'the error in the status line');
    await page.waitForSelector('#load-older:not([hidden])');
    assert.equal((await page.textContent('#load-older')).trim(), 'Try loading again');
    assert.deepEqual(await shownTexts(page), []);
    await screenshot(page, 'history-failed');
    await page.click('#load-older');
    await waitFor(async () => JSON.stringify(await shownIds(page)) === JSON.stringify([c.id]), 'the history after the retry');
    assert.equal(await page.isHidden('#load-older'), true);
    await context.close();
  } finally {
    await server.stop();
  }
});
