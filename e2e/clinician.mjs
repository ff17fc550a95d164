// The clinician workstation in a real browser: sign in, find the resident by ID number (masked
// until authorized), ask for access by SMS code, enter the code the resident reads out, read
// the summary across institutions; the resident revokes in their portal (a second browser
// context), and the clinician is refused again.
//
// Started by crates/cli/tests/portal.rs after resident.mjs, with the demo's accounts.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const root = process.env.HUTONG_ROOT;
const phone = process.env.HUTONG_PHONE;
const idNumber = process.env.HUTONG_ID_NUMBER;
const user = process.env.HUTONG_USER;
const password = process.env.HUTONG_PASSWORD;
const institution = process.env.HUTONG_REQUESTER;
const shots = process.env.HUTONG_SHOTS || 'screenshots';
mkdirSync(shots, { recursive: true });

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

async function codeMatching(re) {
  const r = await fetch(`${root}/dev/outbox?to=${phone}`);
  const v = await r.json();
  for (const m of v.messages.map((m) => m.body)) {
    const x = m.match(re);
    if (x) return x[1];
  }
  throw new Error(`no message matching ${re} in the outbox`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
try {
  const desk = await browser.newPage({ viewport: { width: 1280, height: 900 }, locale: 'zh-CN' });
  desk.setDefaultTimeout(15000);
  await desk.goto(`${root}/workstation`);
  await desk.getByLabel('用户名').fill(user);
  await desk.getByLabel('密码').fill(password);
  await desk.getByRole('button', { name: '登录' }).click();
  await desk.waitForURL(`${root}/workstation`);

  // Find by ID number: masked until authorized.
  await desk.getByLabel('身份证号').fill(idNumber);
  await desk.getByRole('button', { name: '查找' }).click();
  const hit = desk.locator('li.item').first();
  await hit.waitFor();
  const masked = await hit.innerText();
  check(masked.includes('*'), `the ID number is masked before authorization: ${masked}`);
  await desk.screenshot({ path: `${shots}/11-find.png`, fullPage: true });
  await hit.locator('a').click();
  await desk.waitForURL(/\/workstation\/person\//);
  const personUrl = desk.url();

  // Ask by SMS code; the resident reads it out.
  await desk.getByRole('button', { name: '发送短信验证码给居民' }).click();
  await desk.getByLabel('居民告知的验证码').waitFor();
  await desk.screenshot({ path: `${shots}/12-request.png`, fullPage: true });
  await desk.getByLabel('居民告知的验证码').fill(await codeMatching(/请求调阅您的健康档案.*验证码([0-9]{6})/));
  await desk.getByRole('button', { name: '确认' }).click();
  await desk.waitForURL(personUrl);
  check((await desk.getByRole('heading', { name: '现有诊断' }).count()) === 1, 'the summary shows');
  check((await desk.locator('section li.item').count()) > 0, 'the summary lists items');
  check((await desk.locator('section li.item svg[role=img]').count()) > 0, 'latest results come with their trend');
  await desk.screenshot({ path: `${shots}/13-summary.png`, fullPage: true });
  // The full timeline, every item with its institution and collection time.
  await desk.getByRole('link', { name: '完整时间轴' }).click();
  await desk.waitForURL(/\/timeline$/);
  const items = desk.locator('ol.timeline li.item');
  check((await items.count()) > 0, 'the timeline lists the record');
  const first = await items.first().innerText();
  check(first.includes('来源：') && first.includes('采集时间：'), `items show source and collection time: ${first}`);
  await desk.screenshot({ path: `${shots}/15-timeline.png`, fullPage: true });
  await desk.goto(personUrl);

  // The resident revokes the grant in their portal.
  const resident = await (await browser.newContext({ viewport: { width: 390, height: 844 }, locale: 'zh-CN' })).newPage();
  resident.setDefaultTimeout(15000);
  await resident.goto(`${root}/portal/login`);
  await resident.getByLabel('手机号').fill(phone);
  await resident.getByRole('button', { name: '获取验证码' }).click();
  await resident.getByLabel('验证码', { exact: true }).waitFor();
  await resident.getByLabel('验证码', { exact: true }).fill(await codeMatching(/登录验证码是([0-9]{6})/));
  await resident.getByLabel(/身份证号/).fill(idNumber);
  await resident.getByRole('button', { name: '登录' }).click();
  await resident.waitForURL(`${root}/portal`);
  await resident.goto(`${root}/portal/access`);
  const grant = resident.locator('tr[data-consent]', { hasText: institution });
  check((await grant.count()) >= 1, 'the code grant is in force');
  await grant.first().getByRole('button', { name: '撤销' }).click();
  await resident.waitForURL(`${root}/portal/access`);

  // The clinician is refused again.
  await desk.goto(personUrl);
  check((await desk.getByRole('button', { name: '发送短信验证码给居民' }).count()) === 1, 'refused after revocation');
  await desk.screenshot({ path: `${shots}/14-refused.png`, fullPage: true });
  console.log('clinician workstation: every step passed');
} finally {
  await browser.close();
}
