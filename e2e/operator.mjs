// The operations console in a real browser. The identity steward signs in, opens the review
// queue, compares a possible duplicate side by side and decides it — the pair leaves the queue
// and the decision shows among the recent merges; the quality officer sees the intake charts,
// the scorecards and the work-order queue; the auditor verifies the audit chain; the privacy
// officer rules on a break-glass access.
//
// Started by crates/cli/tests/portal.rs with the demo's operator password and a review task
// that is known to be in the queue.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const root = process.env.HUTONG_ROOT;
const password = process.env.HUTONG_PASSWORD;
const task = process.env.HUTONG_REVIEW_TASK;
const shots = process.env.HUTONG_SHOTS || 'screenshots';
mkdirSync(shots, { recursive: true });

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});

async function signIn(user) {
  const page = await (await browser.newContext({ viewport: { width: 1366, height: 900 }, locale: 'zh-CN' })).newPage();
  page.setDefaultTimeout(20000);
  await page.goto(`${root}/console`);
  await page.getByLabel('用户名').fill(user);
  await page.getByLabel('密码').fill(password);
  await page.getByRole('button', { name: '登录' }).click();
  await page.waitForURL(`${root}/console`);
  check((await page.getByRole('heading', { name: '运营总览' }).count()) === 1, `${user} sees the overview`);
  return page;
}

try {
  // Identity steward: the review queue, side by side, link.
  const steward = await signIn('steward');
  await steward.screenshot({ path: `${shots}/21-console-overview.png`, fullPage: true });
  await steward.getByRole('link', { name: '身份复核' }).first().click();
  await steward.waitForURL(`${root}/console/identity`);
  const row = steward.locator(`tr[data-task="${task}"]`);
  check((await row.count()) === 1, `review task ${task} is in the queue`);
  await steward.screenshot({ path: `${shots}/22-identity-queue.png`, fullPage: true });
  await row.getByRole('link', { name: '比对' }).click();
  await steward.waitForURL(`${root}/console/identity/${task}`);
  const cells = await steward.locator('tbody tr').count();
  check(cells >= 8, `the two records are compared field by field (${cells} rows)`);
  check((await steward.locator('td.diff').count()) > 0, 'the fields that differ are marked');
  await steward.screenshot({ path: `${shots}/23-identity-compare.png`, fullPage: true });
  // A decision needs a reason: without one the browser refuses to submit.
  await steward.getByRole('button', { name: '是同一人：合并' }).click();
  check(steward.url().endsWith(`/console/identity/${task}`), 'no decision without a reason');
  await steward.getByLabel('判断依据').fill('同一身份证号，电话一致，姓名为同音字录入错误');
  await steward.getByRole('button', { name: '是同一人：合并' }).click();
  await steward.waitForURL(/\/console\/identity\?done=same/);
  check((await steward.locator(`tr[data-task="${task}"]`).count()) === 0, 'the pair left the queue');
  const recent = await steward.locator('table').nth(1).innerText();
  check(recent.includes('同音字录入错误'), `the decision is among the recent merges: ${recent}`);
  await steward.screenshot({ path: `${shots}/24-identity-decided.png`, fullPage: true });

  // Quality officer: intake, scorecards, work orders.
  const quality = await signIn('quality');
  await quality.getByRole('link', { name: '数据接入' }).first().click();
  await quality.waitForURL(/\/console\/intake/);
  check((await quality.locator('svg[role=img]').count()) > 1, 'intake charts are drawn');
  const received = Number((await quality.locator('.card .n').first().innerText()).replace(/[^0-9]/g, ''));
  check(received > 0, `the region received data (${received})`);
  await quality.screenshot({ path: `${shots}/25-intake.png`, fullPage: true });
  await quality.getByRole('link', { name: '质控评分' }).first().click();
  await quality.waitForURL(/\/console\/quality/);
  const institutions = await quality.locator('tr[data-source]').count();
  check(institutions > 0, `a scorecard per institution (${institutions})`);
  const score = await quality.locator('.card .n').first().innerText();
  check(/^[0-9.]+$/.test(score.trim()), `the region has a score (${score})`);
  await quality.screenshot({ path: `${shots}/26-scorecards.png`, fullPage: true });
  const csv = await quality.evaluate(async () => {
    const a = [...document.querySelectorAll('a')].find((x) => x.textContent === 'CSV');
    const r = await fetch(a.href);
    return [r.status, r.headers.get('content-type'), await r.text()];
  });
  check(csv[0] === 200 && csv[1].startsWith('text/csv') && csv[2].startsWith('level,source'), `the report exports as CSV: ${csv[0]} ${csv[1]}`);
  await quality.getByRole('link', { name: '工单' }).first().click();
  await quality.waitForURL(/\/console\/work-orders/);
  check((await quality.locator('.card').count()) === 3, 'pending, past due and escalated counts');
  await quality.screenshot({ path: `${shots}/27-work-orders.png`, fullPage: true });

  // Auditor: the chain verifies.
  const auditor = await signIn('auditor');
  await auditor.getByRole('link', { name: '审计' }).first().click();
  await auditor.getByRole('button', { name: '立即校验' }).click();
  await auditor.locator('[data-intact]').waitFor();
  check((await auditor.locator('[data-intact="true"]').count()) === 1, 'the audit chain is intact');
  await auditor.screenshot({ path: `${shots}/28-audit.png`, fullPage: true });

  // Privacy officer: a break-glass access waits for a verdict.
  const privacy = await signIn('privacy');
  await privacy.getByRole('link', { name: '审计' }).first().click();
  const bg = privacy.locator('tr.breakglass[data-task]').first();
  await bg.waitFor();
  const id = await bg.getAttribute('data-task');
  await bg.getByLabel('备注').fill('抢救记录已核实');
  await bg.getByRole('button', { name: '合理', exact: true }).click();
  await privacy.waitForURL(/reviewed=justified/);
  check((await privacy.locator(`tr[data-task="${id}"]`).count()) === 0, 'the reviewed access left the queue');
  await privacy.screenshot({ path: `${shots}/29-break-glass-reviewed.png`, fullPage: true });
  console.log('operator console: every step passed');
} finally {
  await browser.close();
}
