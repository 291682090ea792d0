// The moderator view (`/?post=<id>&moderator=1`, dev tokens only) and what every viewer sees of
// moderation (CONTRACT §8, §9): a moderator pins, bans and sets slow mode by clicking, as a
// person would; a viewer's page shows the pinned comment and the slow-mode state; a banned
// user's page says so in words.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  devToken, openPage, postComment, serverAndBrowser, TIMEOUT, waitFor, waitShown,
} from './harness.mjs';

const env = serverAndBrowser();
const POST = 'moderated';

test('a moderator pins, bans and sets slow mode from the page; viewers see it', { timeout: 6 * TIMEOUT }, async () => {
  const alice = await devToken(env.server.base, 'alice');
  const c = await postComment(env.server.base, alice, POST, 'pin me please');
  const mod = await openPage(env.browser, env.server.base, POST, { query: '&moderator=1' });
  const viewer = await openPage(env.browser, env.server.base, POST);
  await waitShown(mod, [c.id], 'the comment on the moderator page');
  await mod.fill('#user-name', 'mod');

  // Pin: every page shows it (the viewer's through `event: pin`).
  await mod.click(`#comments > li[data-id="${c.id}"] button:has-text("Pin")`);
  for (const page of [mod, viewer]) {
    await waitFor(async () => (await page.textContent('#pinned-text')) === 'pin me please', 'the pinned comment shows');
    assert.equal(await page.isHidden('#pinned'), false);
  }

  // Slow mode: the viewer's page states it (read from the post's settings).
  await mod.fill('#slow-mode', '30');
  await mod.click('#apply-slow');
  await waitFor(async () => (await viewer.textContent('#post-state')).includes('Slow mode: 30 s'),
    'the viewer sees slow mode', { timeout: 15_000 });

  // Ban alice for 60 s: her next comment from her own page is refused, in words.
  await mod.click(`#comments > li[data-id="${c.id}"] button:has-text("Ban 60 s")`);
  await waitFor(async () => (await mod.textContent('#notice')).includes('banned'), 'the moderator is told');
  await viewer.fill('#user-name', 'alice');
  await viewer.fill('#comment-text', 'let me in');
  await viewer.click('#send');
  await waitFor(async () => (await viewer.textContent('#notice')).includes('you are banned'),
    'the banned user reads why', { timeout: 10_000 });

  // A non-moderator page has no moderator tools.
  assert.equal(await viewer.isHidden('#mod-tools'), true);
  assert.deepEqual(mod.errors, []);
  assert.deepEqual(viewer.errors, []);
});
