// Drives the listener page in headless Chromium: rest, then a step up to a run, then down to a walk;
// after each step it waits until the page has played three segments in a row within 3% of the
// step's target tempo (by their metadata: the test measures the tempo heard from the audio).
// Meanwhile a second tab plays the same live session as a standard HLS player does: hls.js (npm)
// on an <audio> element, from the HLS playlist (the token in the playlist request only; the
// fragments' URLs are signed).
// Usage: node listener_page.mjs <page url with #token=...&ingest=...> [timeout_s]
// Prints one JSON line: every played segment (wall-clock start, duration, signed URL, params,
// format), for each step the event time of the first sample sent in the new state and the target
// tempo, and what hls.js played (`hls`); exit 0 when both steps were played, 1 otherwise.
import { chromium } from "playwright-core";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const HLS_JS = join(dirname(fileURLToPath(import.meta.url)), "node_modules", "hls.js", "dist", "hls.min.js");

const [url, timeoutArg] = process.argv.slice(2);
const timeoutMs = Number(timeoutArg || 200) * 1000;
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
  const hlsPage = await playHls(context, url);
  // Step up: cadence 170, heart rate 160, running; then down to a walk: cadence 105, heart rate 120.
  const up = await step(page, { hr: 160, cadence: 170, activity: "RUNNING" }, started);
  const down = await step(page, { hr: 120, cadence: 105, activity: "WALKING" }, started);
  // the HLS tab plays on (the session still running) until it has played 25 s, for at most 40 s more
  for (const until = Date.now() + 40_000; Date.now() < until;) {
    if (await hlsPage.evaluate(() => window.hlsAudio.currentTime) >= 25) break;
    await page.waitForTimeout(500);
  }
  // what the page shows as playing, read in the same turn as what it played
  const [last, shown] = await page.evaluate(() => [window.entrain, document.getElementById("showPlaying").textContent]);
  result.hls = await hlsPage.evaluate(() => ({ ...window.hlsResult, played_s: window.hlsAudio.currentTime,
                                               paused: window.hlsAudio.paused }));
  Object.assign(result, {
    ok: true, rest_tempo: restTempo, up, down,
    played: last.played, underruns: last.underruns, swaps: last.swaps,
    shown_tempo: shown, last_played_tempo: last.played[last.played.length - 1].tempo,
  });
} catch (e) {
  result.error = String(e);
} finally {
  await context.close();
}
console.log(JSON.stringify(result));

// A tab at the page's origin (so the playlist request may carry the token) playing the live HLS
// playlist with hls.js: the fragments it buffered, its errors, how far it played.
async function playHls(context, pageUrl) {
  const token = new URLSearchParams(new URL(pageUrl).hash.slice(1)).get("token");
  const tab = await context.newPage();
  tab.on("pageerror", (e) => console.error("hls tab error:", e.message));
  await tab.goto(new URL("/", pageUrl).href);
  await tab.addScriptTag({ path: HLS_JS });
  await tab.evaluate((token) => {
    window.hlsResult = { fragments: 0, errors: [], codecs: null, supported: Hls.isSupported() };
    const audio = document.createElement("audio");
    audio.muted = true;  // autoplay allowed; the element still decodes and advances
    document.body.append(audio);
    window.hlsAudio = audio;
    const hls = new Hls({ xhrSetup: (xhr, u) => {
      if (u.includes("/v1/playlist")) xhr.setRequestHeader("Authorization", "Bearer " + token);
    } });
    hls.on(Hls.Events.ERROR, (_, d) => window.hlsResult.errors.push({ type: d.type, details: d.details, fatal: d.fatal }));
    hls.on(Hls.Events.FRAG_BUFFERED, () => { window.hlsResult.fragments++; });
    hls.on(Hls.Events.MANIFEST_PARSED, (_, d) => {
      window.hlsResult.codecs = d.levels.map((l) => l.audioCodec || l.codecSet || null);
      audio.play();
    });
    hls.loadSource("/v1/playlist.m3u8");
    hls.attachMedia(audio);
  }, token);
  return tab;
}

// Move the sliders to a new state; resolves once three played segments in a row after it are
// within 3% of the target tempo, with the first sample sent in the new state and that target.
async function step(page, to, started) {
  const since = Date.now();
  await page.$eval("#hr", (el, v) => { el.value = String(v); el.dispatchEvent(new Event("input")); }, to.hr);
  await page.$eval("#cadence", (el, v) => { el.value = String(v); el.dispatchEvent(new Event("input")); },
                   to.cadence);
  await page.selectOption("#activity", to.activity);
  for (;;) {
    if (Date.now() - started > timeoutMs) throw new Error(`the page did not settle at ${to.activity} in time`);
    await page.waitForTimeout(500);
    const s = await page.evaluate(() => window.entrain);
    const changed = s.sent.find((x) => x.event_time >= since && x.cadence_spm === to.cadence);
    if (!changed) continue;
    const target = to.cadence;  // match mode: one beat per step (soundtrack.policy)
    const tail = s.played.filter((x) => x.start_ms > changed.event_time).slice(-3);
    if (tail.length === 3 && tail.every((x) => Math.abs(x.tempo / target - 1) <= 0.03)) {
      return { changed_at_ms: changed.event_time, target_tempo: target, playlist_target_tempo: s.targetTempo };
    }
  }
}
process.exit(result.ok ? 0 : 1);
