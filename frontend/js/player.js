/**
 * Playback: while the store says "playing", advance one step every 1/speed seconds on
 * animation frames, hold the last step for a moment, then start again from step 0.
 * Frames come from sprites already in memory, so a tick is only a state change and a draw.
 * Until `started()` says so (the app: its first screen is drawn, or could not be) playing
 * waits at the step it is on, so a first visit does not play through frames still loading.
 */
import { recordedSteps } from "./data.js";

const HOLD_AT_END_MS = 1200;

export function createPlayer(store, started = () => true) {
  let frameRequest = null;
  let last = null;
  let waited = 0;

  function tick(now) {
    frameRequest = null;
    if (!store.playing()) return;
    if (!started()) {
      frameRequest = requestAnimationFrame(tick);
      return;
    }
    if (last === null) last = now;
    waited += now - last;
    last = now;
    const s = store.committed();
    const T = recordedSteps(store.index);
    const interval = 1000 / s.speed;
    if (s.step >= T) {
      if (waited >= HOLD_AT_END_MS) {
        waited = 0;
        store.commit({ step: 0 });
      }
    } else if (waited >= interval) {
      waited = Math.min(waited - interval, interval);
      store.commit({ step: s.step + 1 });
    }
    frameRequest = requestAnimationFrame(tick);
  }

  function sync() {
    if (store.playing() && frameRequest === null) {
      last = null;
      waited = 0;
      frameRequest = requestAnimationFrame(tick);
    } else if (!store.playing() && frameRequest !== null) {
      cancelAnimationFrame(frameRequest);
      frameRequest = null;
    }
  }

  store.on("change.player", sync);
  sync();
  return { sync };
}
