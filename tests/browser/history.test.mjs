// History: newest first, older pages load when the sentinel scrolls into view (next_cursor),
// and comments that arrive both live and in a history page are shown once.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  devToken, launchBrowser, loadAll, openPage, postComment, screenshot, Server, shownIds, shownTexts,
  TIMEOUT, waitFor,
} from './harness.mjs';

let server;
let browser;
before(async () => {
  server = await Server.start();
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

test('older pages load on scroll, newest first, each comment once', { timeout: 4 * TIMEOUT }, async () => {
  const post = 'long-thread';
  const token = await devToken(server.base, 'historian');
  const posted = [];
  for (let i = 1; i <= 45; i++) posted.push(await postComment(server.base, token, post, `comment number ${i}`));

  const page = await openPage(browser, server.base, post, { viewport: { width: 800, height: 600 } });
  await waitFor(async () => (await shownIds(page)).length >= 20, 'the first page of history');
  const first = await shownTexts(page);
  assert.equal(first[0], 'comment number 45', 'newest first');
  assert.ok(first.length < 45, `only the first page(s) at first (${first.length})`);

  // New comments while scrolling back: they go on top, and are not repeated by later pages.
  posted.push(await postComment(server.base, token, post, 'comment number 46'));
  await waitFor(async () => (await shownTexts(page))[0] === 'comment number 46', 'the live comment on top');

  await loadAll(page);
  const texts = await shownTexts(page);
  assert.deepEqual(texts, posted.map((c) => c.text).reverse(), 'every comment once, newest first');
  assert.equal(await page.$eval('#load-older', (b) => b.hidden), true);
  await screenshot(page, 'history-scrolled');
});
