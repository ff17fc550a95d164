// Service coordination in a real browser (issue 27):
// 1. a resident finds a free slot in the regional pool, books it, sees it under "my
//    appointments" and cancels it;
// 2. a family doctor refers a contracted resident up to a hospital (the resident reads out
//    the SMS code), the hospital's clinician accepts it in the referral inbox, and the family
//    doctor books a slot kept for family doctors' referrals at the hospital;
// 3. a clinician about to order an HbA1c done at another hospital last month is shown that
//    result and uses it instead of a repeat.
// Every page is screenshotted at phone and desktop width.
//
// Started by crates/cli/tests/portal.rs, which finds (or makes) the data each flow needs.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const env = process.env;
const root = env.HUTONG_ROOT;
const shots = env.HUTONG_SHOTS || 'screenshots';
mkdirSync(shots, { recursive: true });

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

async function message(to, re) {
  const v = await (await fetch(`${root}/dev/outbox?to=${to}`)).json();
  // Newest first.
  for (const m of v.messages.map((m) => m.body)) {
    const x = m.match(re);
    if (x) return x[1];
  }
  throw new Error(`no message matching ${re} to ${to}`);
}

/// Both widths of the page a flow is on.
async function snap(page, name) {
  const size = page.viewportSize();
  for (const width of [1280, 390]) {
    await page.setViewportSize({ width, height: 900 });
    await page.screenshot({ path: `${shots}/${name}-${width}.png`, fullPage: true });
  }
  await page.setViewportSize(size);
}

async function signInStaff(browser, user, password) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, locale: 'zh-CN' });
  page.setDefaultTimeout(20000);
  await page.goto(`${root}/workstation`);
  await page.getByLabel('用户名').fill(user);
  await page.getByLabel('密码').fill(password);
  await page.getByRole('button', { name: '登录' }).click();
  await page.waitForURL(`${root}/workstation`);
  return page;
}

const browser = await chromium.launch({
  executablePath: env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
try {
  // 1. The resident books and cancels.
  const me = await browser.newPage({ viewport: { width: 390, height: 844 }, locale: 'zh-CN' });
  me.setDefaultTimeout(20000);
  await me.goto(`${root}/portal/login`);
  await me.getByLabel('手机号').fill(env.HUTONG_PHONE);
  await me.getByRole('button', { name: '获取验证码' }).click();
  await me.getByLabel('验证码', { exact: true }).waitFor();
  await me.getByLabel('验证码', { exact: true }).fill(await message(env.HUTONG_PHONE, /登录验证码是([0-9]{6})/));
  if (env.HUTONG_ID_NUMBER) await me.getByLabel(/身份证号/).fill(env.HUTONG_ID_NUMBER);
  await me.getByRole('button', { name: '登录' }).click();
  await me.waitForURL(`${root}/portal`);
  await me.getByRole('link', { name: '预约与转诊' }).click();
  await me.waitForURL(/\/portal\/appointments/);
  const free = me.locator('ul.slots li.item');
  check((await free.count()) > 0, 'the pool offers free slots');
  check((await me.locator('ul.slots [data-reserved]').count()) === 0, "a resident is not offered the family doctors' share");
  await snap(me, '40-pool');
  const slot = await free.first().getAttribute('data-slot');
  await free.first().getByRole('button', { name: '预约' }).click();
  await me.waitForURL(/done=booked/);
  const mine = me.locator('li.item[data-status="booked"]');
  check((await mine.count()) >= 1, 'the booking is under my appointments');
  check((await me.locator(`ul.slots li[data-slot="${slot}"]`).count()) === 0, 'the booked slot is no longer offered');
  await snap(me, '41-booked');
  await mine.first().getByRole('button', { name: '取消预约' }).click();
  await me.waitForURL(/done=cancelled/);
  check((await me.locator('li.item[data-status="cancelled"]').count()) >= 1, 'the booking is cancelled');
  await me.getByRole('link', { name: '家庭医生' }).click();
  await me.waitForURL(/\/portal\/family-doctor/);
  await snap(me, '42-family-doctor');

  // 2. The family doctor refers up; the hospital accepts; the reserved slot is booked.
  const fd = await signInStaff(browser, env.HUTONG_FD_USER, env.HUTONG_FD_PASSWORD);
  await fd.goto(`${root}/workstation/person/${env.HUTONG_FD_PERSON}/coordinate`);
  await snap(fd, '43-coordinate');
  await fd.getByLabel('转至机构').selectOption(env.HUTONG_HOSPITAL_ORG);
  await fd.getByLabel('方向').selectOption('up');
  await fd.getByLabel('转诊原因').fill('血压控制不佳，请上级医院心内科调整用药');
  await fd.getByLabel('征得居民同意的方式').selectOption('sms');
  await fd.getByRole('button', { name: '提交转诊' }).click();
  await fd.getByLabel('验证码').waitFor();
  await fd.getByLabel('验证码').fill(await message(env.HUTONG_FD_PHONE, /上转[\s\S]*验证码([0-9]{6})/));
  await fd.getByRole('button', { name: '确认' }).click();
  await fd.waitForURL(/\/workstation\/referrals\?box=out/);
  const sent = fd.locator('li.item[data-state="requested"]');
  check((await sent.count()) >= 1, 'the referral waits for the hospital');
  const task = await sent.first().getAttribute('data-referral');
  await snap(fd, '44-referrals-out');

  const hd = await signInStaff(browser, env.HUTONG_HOSPITAL_USER, env.HUTONG_HOSPITAL_PASSWORD);
  await hd.getByRole('link', { name: '转诊' }).click();
  await hd.waitForURL(/\/workstation\/referrals/);
  const received = hd.locator(`li.item[data-referral="${task}"]`);
  await received.waitFor();
  await snap(hd, '45-referrals-in');
  await received.getByRole('button', { name: '接收' }).click();
  await hd.waitForURL(/box=in/);
  check((await hd.locator(`li.item[data-referral="${task}"][data-state="accepted"]`).count()) === 1, 'accepted');

  await fd.goto(`${root}/workstation/referrals?box=out`);
  await fd.locator(`li.item[data-referral="${task}"]`).getByRole('link', { name: '预约接诊机构号源' }).click();
  await fd.waitForURL(/\/book$/);
  const kept = fd.locator('ul.slots li.item', { has: fd.locator('[data-reserved]') });
  check((await kept.count()) >= 1, "the family doctor is offered the hospital's reserved slots");
  await snap(fd, '46-reserved-slots');
  await kept.first().getByRole('button', { name: '预约' }).click();
  await fd.waitForURL(/box=out/);
  check((await fd.locator(`li.item[data-referral="${task}"][data-state="scheduled"]`).count()) === 1, 'the referral is scheduled');
  await snap(fd, '47-scheduled');
  // The centre's follow-up worklist.
  await fd.getByRole('link', { name: '慢病随访' }).click();
  await fd.waitForURL(/\/workstation\/follow-ups/);
  check((await fd.locator('table').count()) === 2, 'the teams and the list');
  await snap(fd, '51-follow-ups');

  // 3. Result recognition at order time.
  const dr = await signInStaff(browser, env.HUTONG_RC_USER, env.HUTONG_RC_PASSWORD);
  await dr.goto(`${root}/workstation/person/${env.HUTONG_RC_PERSON}/coordinate`);
  await dr.getByLabel('拟开检查检验项目').selectOption('4548-4');
  await dr.getByRole('button', { name: '查询可互认结果' }).click();
  await dr.locator('[data-recognized]').first().waitFor();
  const shown = await dr.locator('[data-recognized]').first().innerText();
  check(shown.includes(env.HUTONG_RC_VALUE), `the recent result is shown: ${shown}`);
  await snap(dr, '48-recognition');
  await dr.getByRole('button', { name: '使用已有结果（不重复检查）' }).click();
  await dr.getByText('避免了一次重复检查').waitFor();
  await snap(dr, '49-recognition-used');

  // The console's view of it all.
  const op = await browser.newPage({ viewport: { width: 1280, height: 900 }, locale: 'zh-CN' });
  op.setDefaultTimeout(20000);
  await op.goto(`${root}/console`);
  await op.getByLabel('用户名').fill('quality');
  await op.getByLabel('密码').fill(env.HUTONG_OPERATOR_PASSWORD);
  await op.getByRole('button', { name: '登录' }).click();
  await op.waitForURL(`${root}/console`);
  await op.screenshot({ path: `${shots}/50-console-signed-in.png`, fullPage: true });
  await op.getByRole('link', { name: '业务协同' }).first().click();
  await op.waitForURL(/\/console\/coordination/);
  check((await op.locator('table').first().locator('tbody tr').count()) > 0, 'the pool use per institution');
  check((await op.getByText('已预约').count()) >= 1, 'the scheduled referral is counted');
  await snap(op, '50-console-coordination');
  // This platform's place in the hierarchy: the test's server stands alone.
  await op.getByRole('link', { name: '平台层级' }).first().click();
  await op.waitForURL(/\/console\/nodes/);
  check((await op.getByText('独立平台').count()) === 1, 'a standalone platform says so');
  await snap(op, '51-console-levels');
  console.log('coordination: every step passed');
} finally {
  await browser.close();
}
