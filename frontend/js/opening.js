/**
 * The first screen, asked for before the app has loaded.
 *
 * index.html runs this small module `async`, as soon as it and its imports are in: it
 * does not wait for d3 or the app's other modules (about 40 files, which take longer to
 * arrive and run than the first screen's data). It reads api/index.json (preloaded),
 * works out the run the page opens on the way the app does (js/state.js reads the address
 * bar: a first visit's opening run, or a link's prompt, seed, guidance, step and ControlNet
 * choice; js/controlnet-model.js shownRunId says which run that state shows, a controlled
 * run included) and asks for its documents and the sprites its step draws (data.js
 * firstScreenSprites), so the largest of them (an SD-sized run's decoded images: 51
 * frames of 256 px, 3.3 megapixels) downloads and decodes while the app is still
 * loading. Each load is handed to the app's first load of the same URL (api.js prefetch);
 * nothing is fetched twice. A link to a prompt the index does not list (a live prompt the
 * server computes again) is left to the app.
 *
 * Nothing imported here may import d3 (js/lib.js): this module can run before d3 has.
 */
import { prefetch, urls } from "./api.js";
import { shownRunId } from "./controlnet-model.js";
import { firstScreenSprites } from "./data.js";
import { fromSearch, normalize } from "./state.js";

async function askEarly() {
  const index = await prefetch(urls.index());
  if (!index || !index.runs) return; // the app says what is wrong
  const asked = fromSearch(window.location.search);
  const state = normalize(index, asked);
  if (asked.prompt !== undefined && asked.prompt !== state.prompt) return;
  if (state.prompt) prefetch(urls.prompt(state.prompt));
  const runId = shownRunId(index, state);
  if (!runId) return;
  const run = await prefetch(urls.run(runId));
  for (const name of firstScreenSprites(state.step)) {
    if (run.images && run.images[name]) prefetch(run.images[name].url, "image");
  }
}

askEarly().catch(() => {}); // whatever failed here, the app loads (and reports) itself
