// Deletions reach pages that were not connected when they happened: the server replays them on
// resume (CONTRACT §10), and the page applies what the stream says.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  devToken, openPage, postComment, serverAndBrowser, shownIds, sleep, TIMEOUT, waitFor, waitShown, waitState,
} from './harness.mjs';

const env = serverAndBrowser();

const POST = 'deleted-while-away';

test('a comment deleted while the page was cut off disappears when it reconnects', { timeout: 6 * TIMEOUT }, async () => {
  let token = await devToken(env.server.base, 'author');
  const ids = [];
  for (let i = 1; i <= 3; i++) ids.push((await postComment(env.server.base, token, POST, `comment ${i}`)).id);
  const page = await openPage(env.browser, env.server.base, POST);
  await waitShown(page, ids, 'history on open');

  // Cut the page off (it cannot reconnect until we let it), then delete a comment.
  await page.route('**/comments/stream**', (route) => route.abort());
  await env.server.kill('SIGKILL');
  await waitState(page, ['reconnecting', 'offline']);
  await env.server.start();
  token = await devToken(env.server.base, 'author'); // a new dev secret with every process start
  const res = await fetch(`${env.server.base}/comment/${ids[1]}?post_id=${POST}`, {
    method: 'DELETE',
    headers: { Authorization: `Bearer ${token}` },
  });
  assert.equal(res.status, 204);
  await sleep(300);
  assert.ok((await shownIds(page)).includes(ids[1]), 'the page was really cut off and still shows it');

  await page.unroute('**/comments/stream**');
  await waitState(page, ['caught-up']);
  await waitFor(async () => !(await shownIds(page)).includes(ids[1]), 'the deleted comment leaves the page');
  await sleep(300);
  assert.deepEqual([...(await shownIds(page))].sort(), [ids[0], ids[2]].sort(), 'the others stay');
});
