// The resident portal in a real browser: sign in with phone and code, see the timeline,
// approve a clinician's request, revoke it, report an error on a result.
//
// Started by crates/cli/tests/portal.rs against a running `hutong demo`-style server; it
// passes the server's root, the resident's phone and ID number, and where to put
// screenshots. Exits non-zero with the failed step on the first failure.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const root = process.env.HUTONG_ROOT;
const phone = process.env.HUTONG_PHONE;
const idNumber = process.env.HUTONG_ID_NUMBER || '';
const shots = process.env.HUTONG_SHOTS || 'screenshots';
const requester = process.env.HUTONG_REQUESTER || '';
mkdirSync(shots, { recursive: true });

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

async function latestCode() {
  const r = await fetch(`${root}/dev/outbox?to=${phone}`);
  const v = await r.json();
  const bodies = v.messages.map((m) => m.body);
  for (const b of bodies) {
    const m = b.match(/登录验证码是([0-9]{6})/);
    if (m) return m[1];
  }
  throw new Error('no sign-in code in the outbox');
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
try {
  // A phone-sized window: residents use their phones.
  const page = await browser.newPage({ viewport: { width: 390, height: 844 }, locale: 'zh-CN' });
  page.setDefaultTimeout(15000);

  await page.goto(`${root}/portal/login`);
  await page.screenshot({ path: `${shots}/01-login.png`, fullPage: true });
  await page.getByLabel('手机号').fill(phone);
  await page.getByRole('button', { name: '获取验证码' }).click();
  await page.getByLabel('验证码', { exact: true }).waitFor();
  await page.getByLabel('验证码', { exact: true }).fill(await latestCode());
  if (idNumber) await page.getByLabel(/身份证号/).fill(idNumber);
  await page.getByRole('button', { name: '登录' }).click();

  // The timeline: items from several institutions, each with its source and collection time.
  await page.waitForURL(`${root}/portal`);
  const items = page.locator('li.item');
  check((await items.count()) > 5, 'the timeline lists the record');
  const meta = await items.first().locator('.meta').innerText();
  check(meta.includes('来源') && meta.includes('采集时间'), `source and collection time shown: ${meta}`);
  await page.screenshot({ path: `${shots}/02-timeline.png`, fullPage: false });
  // Filter: results only, then a result's page with its trend.
  await page.getByRole('link', { name: '检验结果' }).click();
  await page.waitForURL(/kind=results/);
  check((await page.locator('span.tag', { hasText: '就诊' }).count()) === 0, 'the filter keeps results only');
  await page.locator('li.item a').first().click();
  await page.waitForURL(/\/portal\/item\/(Observation|DiagnosticReport)\//);
  await page.screenshot({ path: `${shots}/03-result.png`, fullPage: true });
  // Restrict it (患者申明特控), see it marked, lift it again.
  const resultUrl = page.url();
  await page.getByRole('button', { name: '设为特控' }).click();
  await page.waitForURL(resultUrl);
  check((await page.locator('[data-restricted="true"]').count()) === 1, 'the item shows as restricted');
  await page.getByRole('button', { name: '取消特控' }).click();
  await page.waitForURL(resultUrl);
  check((await page.locator('[data-restricted]').count()) === 0, 'the restriction is lifted');

  // Report an error on it: a work order to the institution, followed on "my reports".
  await page.getByLabel('问题类型').selectOption('not-mine');
  await page.getByLabel('说明').fill('这不是我的检验结果，我那天没有去医院。');
  await page.getByRole('button', { name: '提交' }).click();
  await page.waitForURL(/\/portal\/reports/);
  check((await page.locator('td[data-state="open"]').count()) >= 1, 'the report is open');
  await page.screenshot({ path: `${shots}/04-reports.png`, fullPage: true });

  // A clinician's request waits for the resident: approve it, then revoke it.
  await page.getByRole('link', { name: '授权与访问记录' }).click();
  await page.waitForURL(`${root}/portal/access`);
  const pending = page.locator('li.item', { hasText: requester });
  check((await pending.count()) >= 1, `the request of ${requester} is waiting`);
  await page.screenshot({ path: `${shots}/05-request.png`, fullPage: true });
  await pending.first().getByRole('button', { name: '同意' }).click();
  await page.waitForURL(`${root}/portal/access`);
  const granted = page.locator('tr[data-consent]', { hasText: requester });
  check((await granted.count()) >= 1, 'the approved grant is in force');
  await page.screenshot({ path: `${shots}/06-granted.png`, fullPage: true });
  await granted.first().getByRole('button', { name: '撤销' }).click();
  await page.waitForURL(`${root}/portal/access`);
  check((await page.locator('tr[data-consent]', { hasText: requester }).count()) === 0, 'the revoked grant is gone');
  // A standing authorization for another institution (the family doctor's centre, say).
  const choice = await page.locator('#institution option').evaluateAll(
    (opts, who) => opts.map((o) => [o.value, o.textContent]).find(([, t]) => t !== who),
    requester,
  );
  await page.getByLabel('授权机构').selectOption(choice[0]);
  await page.getByRole('button', { name: '授权', exact: true }).click();
  const standing = page.locator('tr[data-consent]', { hasText: choice[1] }).filter({ hasText: '长期授权' });
  await standing.first().waitFor();
  check((await standing.count()) === 1, `one standing authorization for ${choice[1]}`);
  await page.screenshot({ path: `${shots}/08-standing.png`, fullPage: true });
  // The access history shows who read the record.
  check((await page.locator('table').last().locator('tbody tr').count()) > 0, 'the access history lists reads');

  // English on request, and keyboard-reachable controls.
  await page.goto(`${root}/portal?lang=en`);
  check((await page.getByRole('link', { name: 'Results', exact: true }).count()) === 1, 'the English switch');
  await page.screenshot({ path: `${shots}/07-timeline-en.png`, fullPage: false });
  console.log('resident portal: every step passed');
} finally {
  await browser.close();
}
