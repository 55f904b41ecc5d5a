// The demo in a real browser: Debian's headless Chromium, driven by Playwright.
// A booking made by clicking on the front end, and the status page with a traffic split,
// kept as a screenshot (MULTIMESH_ARTIFACTS, default target/artifacts).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const target = process.env.CARGO_TARGET_DIR || join(root, 'target');
const bin = process.env.MULTIMESH_BIN_DIR || join(target, 'debug');
const artifacts = process.env.MULTIMESH_ARTIFACTS || join(target, 'artifacts');
const base = Number(process.env.MULTIMESH_UI_PORT_BASE || 29100);
const dir = mkdtempSync(join(tmpdir(), 'multimesh-ui.'));

let demo, browser, frontend, status;

before(async () => {
  demo = spawn(join(bin, 'multimesh-demo'), ['--port-base', String(base), '--dir', join(dir, 'demo'), '--bin-dir', bin],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error('demo not ready in 90 s:\n' + log)), 90_000);
    demo.stderr.on('data', d => {
      log += d;
      const f = log.match(/front end:\s+(\S+)/), s = log.match(/status page:\s+(\S+)/);
      if (f && s) { frontend = f[1]; status = s[1]; clearTimeout(timer); ok(); }
    });
    demo.on('exit', code => { clearTimeout(timer); fail(new Error(`demo exited (${code}):\n${log}`)); });
  });
  demo.removeAllListeners('exit');
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  if (demo && demo.exitCode === null) {
    const exited = new Promise(ok => demo.on('exit', ok));
    demo.kill('SIGINT');
    await exited;
  }
});

test('a booking made by clicking shows each step and the site that served it', async () => {
  const page = await browser.newPage();
  await page.goto(frontend);
  await page.waitForSelector('button[data-book="fjord-kayak"]');
  assert.match(await page.textContent('#catalog-info'), /tour-catalog v[12] at site [bc]/);
  await page.fill('#customer', 'Grace Hopper');
  await page.fill('#seats', '3');
  await page.click('button[data-book="fjord-kayak"]');
  await page.waitForSelector('#confirmation', { timeout: 15_000 });
  assert.match(await page.textContent('#confirmation'), /Booking bkg-[0-9a-f]+ confirmed/);
  const site = async step => page.getAttribute(`#steps tr[data-step="${step}"]`, 'data-site');
  assert.equal(await site('booking'), 'a');
  assert.ok(['b', 'c'].includes(await site('tour-catalog')));
  assert.ok(['b', 'c'].includes(await site('payment')));
  assert.ok(['b', 'node'].includes(await site('notification')));
  // The bookings list shows it too, with the customer's name.
  await page.waitForFunction(() => document.getElementById('bookings').textContent.includes('Grace Hopper'));
  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: join(artifacts, 'front-end-booking.png'), fullPage: true });
  await page.close();
});

test('the status page shows sites, links, catalogs and a split with observed shares', async () => {
  // A 80/20 split at site a, and traffic through it.
  const split = join(dir, 'split.yaml');
  writeFileSync(split, 'apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: tc, namespace: tours}\nspec:\n  service: tour-catalog\n  backends:\n  - {service: tour-catalog-v1, weight: 80}\n  - {service: tour-catalog-v2, weight: 20}\n');
  execFileSync(join(bin, 'federationctl'), ['apply', '-f', split],
    { env: { ...process.env, MULTIMESH_ADMIN_SOCKET: join(dir, 'demo', 'a', 'admin.sock') } });
  for (let i = 0; i < 300; i++) {
    const r = await fetch(new URL('/api/tours', frontend));
    assert.equal(r.status, 200);
  }
  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  await page.goto(status);
  for (const s of ['a', 'b', 'c', 'node']) await page.waitForSelector(`[data-site="${s}"]`);
  // Links: a's peers b and c are healthy.
  await page.waitForSelector('[data-link="a-b"] .dot.ok');
  await page.waitForSelector('[data-link="c-node"] .dot.ok');
  // Catalog at the edge node lists payment from both b and c.
  await page.waitForFunction(() => document.querySelector('[data-catalog="node"]').textContent.includes('tours/payment'));
  // The split's row shows 80% configured and an observed share near it.
  const row = '[data-split="tour-catalog"][data-backend="tour-catalog-v1"]';
  await page.waitForFunction(sel => /%/.test(document.querySelector(sel + ' .observed')?.textContent || ''), row);
  const observed = parseFloat(await page.textContent(`${row} .observed`));
  assert.ok(Math.abs(observed - 80) <= 10, `observed ${observed}% for a 80% backend`);
  mkdirSync(artifacts, { recursive: true });
  const shot = join(artifacts, 'status-page.png');
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`status page screenshot: ${shot}`);
  await page.close();
});

test('Ctrl-C stops every process of the demo', async () => {
  // Runs last (tests run in order): SIGINT the demo, then nothing answers any more.
  const exited = new Promise(ok => demo.on('exit', code => ok(code)));
  demo.kill('SIGINT');
  assert.equal(await exited, 0);
  for (const url of [frontend, status]) {
    await assert.rejects(fetch(url), `${url} still answers after Ctrl-C`);
  }
});
