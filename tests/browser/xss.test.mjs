// Comment text is data, never markup: an HTML payload shows as literal text and runs nothing,
// whether it arrives through the form, the live stream or the history.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  devToken, launchBrowser, openPage, postComment, postViaUi, screenshot, Server, shownTexts, sleep,
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

const PAYLOADS = [
  '<img src=x onerror=alert(1)>',
  '<script>alert(2)</script>',
  '<svg onload=alert(3)></svg><a href="javascript:alert(4)">click</a>',
  '"><iframe src=javascript:alert(5)>',
];

test('HTML in a comment is shown as text and executes nothing', { timeout: 4 * TIMEOUT }, async () => {
  const post = 'xss';
  const viewer = await openPage(browser, server.base, post);
  const author = await openPage(browser, server.base, post);

  // Through the form (the author's page adds it from the POST answer and the stream) ...
  await postViaUi(author, 'mallory', PAYLOADS[0]);
  // The form's POST (after the page fetches its token) must be stored before the API's, or
  // the newest-first order below differs: wait for its answer on the author's page.
  await waitFor(async () => (await shownTexts(author)).includes(PAYLOADS[0]), "the form's comment shown");
  // ... and through the API (the viewer gets all of them from the stream).
  const token = await devToken(server.base, 'mallory2');
  for (const p of PAYLOADS.slice(1)) await postComment(server.base, token, post, p);

  const want = [...PAYLOADS].reverse();
  for (const page of [viewer, author]) {
    await waitFor(async () => JSON.stringify(await shownTexts(page)) === JSON.stringify(want), 'all payloads shown as text');
  }
  // ... and from the history, in a page opened afterwards.
  const later = await openPage(browser, server.base, post);
  await waitFor(async () => JSON.stringify(await shownTexts(later)) === JSON.stringify(want), 'payloads from history');

  await sleep(500); // give a (wrongly) created image time to fail loading and fire onerror
  for (const page of [viewer, author, later]) {
    assert.deepEqual(page.dialogs, [], 'no alert() ran');
    assert.deepEqual(page.errors, [], 'no script errors');
    assert.deepEqual(page.consoleErrors, [], 'no failed request (an <img src=x> would log one)');
    const created = await page.$$eval('#comments img, #comments script, #comments svg, #comments iframe, #comments a',
      (els) => els.map((e) => e.outerHTML));
    assert.deepEqual(created, [], 'no element was created from comment text');
    const shown = await page.$eval('#comments', (ol) => ol.innerText);
    assert.ok(shown.includes('<img src=x onerror=alert(1)>'), 'the literal text is visible');
  }
  await screenshot(later, 'xss-literal-text');
});
