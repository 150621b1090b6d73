// Drives the listener page in headless Chromium: rest, then a heart-rate/cadence change, and
// checks that segments at the new tempo were fetched and played.
// Usage: node listener_page.mjs <page url with #token=...&ingest=...> [timeout_s]
// Prints one JSON line with what happened; exit 0 when the new tempo was played, 1 otherwise.
import { chromium } from "playwright-core";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const [url, timeoutArg] = process.argv.slice(2);
const timeoutMs = Number(timeoutArg || 150) * 1000;
const userDataDir = mkdtempSync(join(tmpdir(), "entrain-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required",
         "--use-fake-ui-for-media-stream"],
});
const result = { ok: false };
try {
  const page = context.pages()[0] || await context.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  await page.goto(url);
  await page.fill("#hr", "70");
  await page.$eval("#hr", (el) => el.dispatchEvent(new Event("input")));
  await page.selectOption("#activity", "RESTING");
  await page.click("#start");
  const started = Date.now();
  const state = () => page.evaluate(() => window.entrain);
  // Rest until two segments have played: the resting tempo.
  let s = await state();
  while (s.played.length < 2) {
    if (Date.now() - started > timeoutMs) throw new Error("no segment played while resting");
    await page.waitForTimeout(500);
    s = await state();
  }
  const restTempo = s.played[s.played.length - 1].tempo;
  const changedAt = Date.now();
  // Start running: cadence 170, heart rate 160.
  await page.$eval("#hr", (el) => { el.value = "160"; el.dispatchEvent(new Event("input")); });
  await page.$eval("#cadence", (el) => { el.value = "170"; el.dispatchEvent(new Event("input")); });
  await page.selectOption("#activity", "RUNNING");
  const faster = (x) => x.at >= changedAt && x.tempo >= restTempo * 1.05;
  while (!(s.fetched.some(faster) && s.played.some(faster))) {
    if (Date.now() - started > timeoutMs) throw new Error("no faster segment played after the change");
    await page.waitForTimeout(500);
    s = await state();
  }
  const firstPlayed = s.played.find(faster);
  Object.assign(result, {
    ok: true, rest_tempo: restTempo, new_tempo: firstPlayed.tempo,
    seconds_to_faster_playback: (firstPlayed.at - changedAt) / 1000,
    played: s.played.length, underruns: s.underruns,
    shown_tempo: await page.textContent("#showPlaying"),
  });
} catch (e) {
  result.error = String(e);
} finally {
  await context.close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
