/**
 * The first screen of a first visit, asked for before the app has loaded.
 *
 * index.html runs this small module `async`, as soon as it and its four imports are in:
 * it does not wait for d3 or the app's other modules (about 40 files, which take longer
 * to arrive and run than the first screen's data). It reads api/index.json (preloaded),
 * works out the run a first visit opens (data.js openingRun, which js/state.js uses
 * too) and asks for its documents and the sprites its step 0 draws (data.js
 * firstScreenSprites), so the largest of them (an SD-sized run's decoded images: 51
 * frames of 256 px, 3.3 megapixels) downloads and decodes while the app is still
 * loading. Each load is handed to the app's first load of the same URL (api.js prefetch);
 * nothing is fetched twice. A visit with state in its address (a link, a reload after a
 * choice) is left to the app: its run and step are the app's to read.
 */
import { prefetch, urls } from "./api.js";
import { firstScreenSprites, openingRun, runIdFor } from "./data.js";

async function askEarly() {
  if (window.location.search) return;
  const index = await prefetch(urls.index());
  if (!index || !index.runs) return; // the app says what is wrong
  const { prompt, seed, guidance } = openingRun(index);
  if (prompt) prefetch(urls.prompt(prompt));
  const runId = runIdFor(index, prompt, seed, guidance);
  if (!runId) return;
  const run = await prefetch(urls.run(runId));
  for (const name of firstScreenSprites(0)) {
    if (run.images && run.images[name]) prefetch(run.images[name].url, "image");
  }
}

askEarly().catch(() => {}); // whatever failed here, the app loads (and reports) itself
