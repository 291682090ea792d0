// With two regions: a page on region A shows a comment posted in region B.
// Two nats-servers joined by gateways (eu, us) and one `livecomments standalone` per region, each
// with its own data dir and its own dev-token secret (no LIVECOMMENTS_JWT_SECRET: a page asks its
// own region for a token, and the API posts to us with a token of us).
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  devToken, launchBrowser, NatsSupercluster, openPage, postComment, postViaUi, screenshot, Server,
  shownIds, shownTexts, sleep, TIMEOUT, waitAllRegions, waitFor, waitShown,
} from './harness.mjs';

let sc;
let eu;
let us;
let browser;
before(async () => {
  sc = await NatsSupercluster.start(['eu', 'us']);
  [eu, us] = await Promise.all(['eu', 'us'].map((r) => Server.start({ args: sc.regionArgs(r) })));
  // Gateways connect and the readers' queue subscriptions cross them asynchronously.
  await waitAllRegions(eu);
  await waitAllRegions(us);
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await eu?.stop();
  await us?.stop();
  await sc?.stop();
});

/** [id, region label, text] of every comment shown, in page order. */
const shown = (page) => page.$$eval('#comments > li', (lis) => lis.map((li) => [
  li.dataset.id, li.querySelector('.region')?.textContent ?? null, li.querySelector('.text').textContent]));

const waitText = (page, text) => waitFor(async () => (await shownTexts(page)).includes(text), `“${text}” on ${page.url()}`);

/** Every comment of the post from `server`'s merged GET /comments, newest first (all pages). */
async function history(server, post) {
  const all = [];
  let before = '';
  for (;;) {
    const res = await fetch(`${server.base}/comments?post_id=${post}&page_size=50${before}`);
    assert.equal(res.status, 200);
    const page = await res.json();
    assert.ok(!page.partial, `${server.base}: every region answered: ${JSON.stringify(page.missing_regions)}`);
    all.push(...page.comments);
    if (!page.next_cursor) return all;
    before = `&before=${encodeURIComponent(page.next_cursor)}`;
  }
}

test('with two regions: a page on region A shows a comment posted in region B', { timeout: 6 * TIMEOUT }, async () => {
  const post = 'regions-across';
  const euPage = await openPage(browser, eu.base, post);
  const usPage = await openPage(browser, us.base, post);

  // 1. Posted through us's API, shown live on the eu page. eu's subscription to the post crosses
  // the gateway asynchronously: a comment published before us knew of it is not delivered live,
  // but the next one from us carries it along (eu's hub sees the gap in us's sequence and fetches
  // it from us's history). So post until one arrives; then all of them must be there.
  const token = await devToken(us.base, 'uma'); // us's own secret: a token of eu is not valid here
  const fromApi = [];
  for (let i = 1; ; i++) {
    const c = await postComment(us.base, token, post, `from us through the API #${i}`);
    assert.equal(c.region, 'us');
    fromApi.push(c);
    const arrived = await waitFor(async () => (await shownIds(euPage)).includes(c.id), 'probe', { timeout: 1500 })
      .then(() => true, () => false);
    if (arrived) break;
    assert.ok(i < 20, 'a comment posted in us reached the eu page');
  }
  if (fromApi.length > 1) console.log(`# ${fromApi.length - 1} comment(s) of us posted before eu's interest crossed the gateway`);
  await waitShown(euPage, fromApi.map((c) => c.id), 'every comment of us’s API on the eu page');
  for (const [id, region] of await shown(euPage)) {
    assert.equal(region, 'us', `comment ${id} is labelled with its region`);
  }

  // 2. Posted through the form of the page on us: shown on the eu page, labelled us.
  await postViaUi(usPage, 'ursula', 'hello from the us page');
  await waitText(euPage, 'hello from the us page');
  // 3. And the other way: through the form of the page on eu, shown on the page on us.
  await postViaUi(euPage, 'emil', 'hallo from the eu page');
  await waitText(usPage, 'hallo from the eu page');
  await waitText(euPage, 'hallo from the eu page');

  // The merged history of both regions: the same in each, newest first by (timestamp, id).
  const all = await history(eu, post);
  assert.deepEqual(await history(us, post), all, 'both regions return the same merged history');
  const key = (c) => `${c.timestamp}\u0000${c.id}`;
  assert.deepEqual(all.map((c) => c.id), [...all].sort((a, b) => (key(a) < key(b) ? 1 : -1)).map((c) => c.id));
  assert.equal(all.length, fromApi.length + 2);
  assert.deepEqual(Object.fromEntries(all.map((c) => [c.text, c.region])), {
    ...Object.fromEntries(fromApi.map((c) => [c.text, 'us'])),
    'hello from the us page': 'us',
    'hallo from the eu page': 'eu',
  }, 'each comment carries the region it was posted in');
  const want = all.map((c) => [c.id, c.region, c.text]);

  // Each page shows each comment exactly once, in that order (a short settle first: a late
  // duplicate from the stream would show up in it).
  await sleep(500);
  for (const page of [euPage, usPage]) {
    await waitShown(page, all.map((c) => c.id), `every comment on ${page.url()}`);
    assert.deepEqual(await shown(page), want, `${page.url()}: each comment once, newest first, with its region`);
  }
  await screenshot(euPage, 'regions-eu-live');
  await screenshot(usPage, 'regions-us-live');

  // 4. Reloaded, the eu page loads the merged history (GET /comments): both regions' comments,
  // each once, newest first, each labelled with the region it was posted in.
  await euPage.reload();
  await waitFor(async () => (await shownIds(euPage)).length >= all.length, 'the history after the reload');
  await sleep(300);
  assert.deepEqual(await shown(euPage), want, 'the eu page after a reload');
  assert.equal(await euPage.$eval('#comments', (ol) => ol.querySelector('.region').title), `Posted in region ${all[0].region}`);
  await screenshot(euPage, 'regions-eu-reloaded');

  for (const page of [euPage, usPage]) {
    assert.deepEqual(page.errors, [], 'no script errors');
    assert.deepEqual(page.dialogs, [], 'no dialogs');
    assert.deepEqual(page.consoleErrors, [], 'nothing logged as an error (no failed request)');
  }
});
