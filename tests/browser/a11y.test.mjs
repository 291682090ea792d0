// Accessibility smoke check: labels, focus order and visible focus, contrast, an aria-live state,
// phone width without horizontal scrolling.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  devToken, openPage, postComment, postViaUi, screenshot, serverAndBrowser, TIMEOUT, waitFor,
} from './harness.mjs';

const env = serverAndBrowser();

test('every form control has a label, and the state is an aria-live region', { timeout: 2 * TIMEOUT }, async () => {
  const page = await openPage(env.browser, env.server.base, 'a11y');
  const unlabelled = await page.$$eval('input, textarea, select', (els) => els
    .filter((e) => e.type !== 'hidden')
    .filter((e) => !(e.labels && e.labels.length && e.labels[0].textContent.trim())
      && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby'))
    .map((e) => e.outerHTML));
  assert.deepEqual(unlabelled, []);
  const nameless = await page.$$eval('button', (bs) => bs.filter((b) => !b.textContent.trim() && !b.getAttribute('aria-label')).map((b) => b.outerHTML));
  assert.deepEqual(nameless, [], 'every button has a name');
  assert.equal(await page.$eval('#conn', (e) => e.getAttribute('aria-live')), 'polite');
  assert.equal(await page.$eval('#notice', (e) => e.getAttribute('aria-live')), 'polite');
  assert.equal(await page.$eval('html', (e) => e.lang), 'en');
  assert.equal(await page.$$eval('h1', (hs) => hs.length), 1);
  await screenshot(page, 'a11y-labels');
});

test('keyboard: focus order reaches name, text, post button, with a visible focus ring', { timeout: 2 * TIMEOUT }, async () => {
  const page = await openPage(env.browser, env.server.base, 'a11y');
  const order = [];
  for (let i = 0; i < 15 && !order.includes('send'); i++) {
    await page.keyboard.press('Tab');
    const f = await page.evaluate(() => {
      const e = document.activeElement;
      const s = getComputedStyle(e);
      return { id: e.id || e.tagName, outline: s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2 };
    });
    order.push(f.id);
    assert.ok(f.outline, `visible focus on ${f.id}`);
  }
  const at = (id) => order.indexOf(id);
  assert.ok(at('user-name') >= 0, `focus reaches the name field: ${order}`);
  assert.ok(at('user-name') < at('comment-text') && at('comment-text') < at('send'), `name → text → post: ${order}`);
  assert.ok(at('post-id') < at('user-name'), `the post picker comes first: ${order}`);
  // The form works from the keyboard alone.
  await page.focus('#user-name');
  await page.keyboard.type('keyboard-user');
  await page.keyboard.press('Tab');
  await page.keyboard.type('typed, not clicked');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Enter');
  await waitFor(async () => (await page.$$eval('#comments .text', (ps) => ps.map((p) => p.textContent))).includes('typed, not clicked'), 'the keyboard comment');
  await screenshot(page, 'a11y-keyboard');
});

test('readable contrast for the text on the page', { timeout: 2 * TIMEOUT }, async () => {
  const page = await openPage(env.browser, env.server.base, 'a11y-contrast');
  const token = await devToken(env.server.base, 'alice');
  await postComment(env.server.base, token, 'a11y-contrast', 'a comment to have every kind of text on the page');
  await postViaUi(page, 'alice', 'my own, with a delete button');
  await page.waitForSelector('#comments button.delete');
  await page.evaluate(() => document.getAnimations().forEach((a) => a.finish()));
  const low = await page.evaluate(() => {
    const rgb = (c) => (c.match(/[\d.]+/g) || []).map(Number);
    const lum = ([r, g, b]) => {
      const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
      return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const bg = (e) => {
      for (; e; e = e.parentElement) {
        const c = rgb(getComputedStyle(e).backgroundColor);
        if (c.length === 3 || c[3] > 0) return c.slice(0, 3);
      }
      return [255, 255, 255];
    };
    const out = [];
    for (const e of document.querySelectorAll('body *')) {
      const own = [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
      if (!own || !e.getClientRects().length || e.closest('.visually-hidden')) continue;
      const s = getComputedStyle(e);
      const [a, b] = [lum(rgb(s.color)), lum(bg(e))];
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      const large = parseFloat(s.fontSize) >= 24 || (parseFloat(s.fontSize) >= 18.66 && Number(s.fontWeight) >= 700);
      if (ratio < (large ? 3 : 4.5)) out.push(`${e.tagName}.${e.className} “${e.textContent.trim().slice(0, 30)}” ${ratio.toFixed(2)}`);
    }
    return out;
  });
  assert.deepEqual(low, [], 'text below WCAG AA contrast');
  await screenshot(page, 'a11y-contrast');
});

test('usable at 375 px: no horizontal scrolling, controls fit', { timeout: 2 * TIMEOUT }, async () => {
  const post = 'phone';
  const page = await openPage(env.browser, env.server.base, post, { viewport: { width: 375, height: 700 } });
  const token = await devToken(env.server.base, 'a-rather-long-user-name-that-could-overflow');
  await postComment(env.server.base, token, post, 'x'.repeat(300)); // one unbreakable word
  await postComment(env.server.base, token, post, 'https://example.com/a/very/long/link/without/any/spaces/in/it/at/all?q=1234567890');
  await postViaUi(page, 'phone-user', 'posting from a phone');
  await waitFor(async () => (await page.$$('#comments > li')).length === 3, 'three comments');
  const widths = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    client: document.documentElement.clientWidth,
    wide: [...document.querySelectorAll('body *')]
      .filter((e) => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
      .map((e) => `${e.tagName}#${e.id}.${e.className}`),
  }));
  assert.ok(widths.scroll <= widths.client, `no horizontal scroll: ${JSON.stringify(widths)}`);
  assert.deepEqual(widths.wide, []);
  const send = await page.$eval('#send', (b) => b.getBoundingClientRect().height);
  assert.ok(send >= 24, `a tappable post button (${send}px)`);
  await screenshot(page, 'phone-375');
});
