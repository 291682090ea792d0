// Two browser pages on the same post: what one posts through the form appears in the other, live;
// a deletion by the author disappears from both; only the author gets a delete button.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  openPage, postViaUi, screenshot, serverAndBrowser, shownIds, shownTexts, TIMEOUT, waitFor,
} from './harness.mjs';

const env = serverAndBrowser();

const textsOf = (page) => shownTexts(page);
const waitText = (page, text) => waitFor(async () => (await textsOf(page)).includes(text), `“${text}” on the page`);

test('a comment posted in one page appears live in the other; deletions follow', { timeout: 4 * TIMEOUT }, async () => {
  const post = 'live-two-pages';
  const alice = await openPage(env.browser, env.server.base, post);
  const bob = await openPage(env.browser, env.server.base, post);
  assert.equal(await alice.title(), `${post} · livecomments`);

  await postViaUi(alice, 'alice', 'hello from alice');
  await waitText(bob, 'hello from alice');
  await waitText(alice, 'hello from alice');
  await waitFor(async () => (await alice.$eval('#comment-text', (t) => t.value)) === '', 'the text box to clear');

  await postViaUi(bob, 'bob', 'hi alice, bob here');
  await waitText(alice, 'hi alice, bob here');
  await waitText(bob, 'hi alice, bob here');

  // Newest first, each comment once, in both pages (the POST answer and the stream overlap).
  for (const page of [alice, bob]) {
    assert.deepEqual(await textsOf(page), ['hi alice, bob here', 'hello from alice']);
    const ids = await shownIds(page);
    assert.equal(new Set(ids).size, ids.length, 'no comment shown twice');
  }

  // Delete buttons only on one's own comments.
  const buttons = (page) => page.$$eval('#comments > li', (lis) => lis.map((li) => [
    li.querySelector('.text').textContent, !!li.querySelector('button.delete')]));
  assert.deepEqual(await buttons(alice), [['hi alice, bob here', false], ['hello from alice', true]]);
  assert.deepEqual(await buttons(bob), [['hi alice, bob here', true], ['hello from alice', false]]);
  await screenshot(bob, 'live-two-pages');

  // Alice deletes hers: it disappears from Bob's page through the stream.
  await alice.click('#comments > li:has-text("hello from alice") button.delete');
  await waitFor(async () => !(await textsOf(bob)).includes('hello from alice'), 'the deletion to reach bob');
  await waitFor(async () => !(await textsOf(alice)).includes('hello from alice'), 'the deletion in alice’s page');
  assert.deepEqual(await textsOf(bob), ['hi alice, bob here']);

  // A page opened now loads the history without the deleted comment.
  // Reloading keeps the tab's demo identity (sessionStorage): the name and the delete buttons.
  await bob.reload();
  await waitText(bob, 'hi alice, bob here');
  assert.equal(await bob.$eval('#user-name', (i) => i.value), 'bob');
  assert.deepEqual(await buttons(bob), [['hi alice, bob here', true]]);

  const carol = await openPage(env.browser, env.server.base, post);
  await waitText(carol, 'hi alice, bob here');
  assert.deepEqual(await textsOf(carol), ['hi alice, bob here']);

  for (const page of [alice, bob, carol]) {
    assert.deepEqual(page.errors, [], 'no script errors');
    assert.deepEqual(page.dialogs, [], 'no dialogs');
    assert.deepEqual(page.consoleErrors, [], 'nothing logged as an error (no failed request)');
  }
  await screenshot(alice, 'live-after-delete');

  if (process.env.LIVECOMMENTS_DOCS_SCREENSHOT) {
    // The picture in docs/DEMO.md: a short conversation, seen by one of its participants.
    const match = 'match-42';
    const ann = await openPage(env.browser, env.server.base, match, { viewport: { width: 900, height: 700 } });
    const ben = await openPage(env.browser, env.server.base, match);
    for (const [who, page, text] of [
      ['ann', ann, 'Kick-off! Anyone else watching from the stands?'],
      ['ben', ben, 'Watching from home, the stream is right on time.'],
      ['ann', ann, 'What a save by the keeper!'],
      ['ben', ben, 'Second half starts in 5 minutes.'],
    ]) {
      await postViaUi(page, who, text);
      await waitText(ann, text);
    }
    await ann.fill('#comment-text', 'Typing a reply…');
    await ann.evaluate(() => document.getAnimations().forEach((a) => a.finish()));
    await ann.screenshot({ path: new URL('../../docs/img/demo.png', import.meta.url).pathname, fullPage: true });
  }
});
