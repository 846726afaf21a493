/**
 * Wires the app: loads the bundle index, creates the one store, derives every view's
 * datum from it on each change (coalesced to one draw per animation frame) and turns
 * what views report into store commits. Views never read the store themselves.
 */
import { d3 } from "./lib.js";
import { createApi, urls } from "./api.js";
import { createStore } from "./state.js";
import { createModel } from "./model.js";
import { compareCandidate, firstScreenSprites, recordedSteps } from "./data.js";
import { createPlayer } from "./player.js";
import { bindKeyboard } from "./keyboard.js";
import { applyWording, bindArticleLinks, renderMath } from "./article.js";
import { architecture } from "./views/architecture.js";
import { attentionControls, attentionHover, attentionOverlay } from "./views/attention.js";
import { choice } from "./views/choice.js";
import { clipDiagram, CLIP_EXAMPLE } from "./views/clip.js";
import { compareLanes } from "./views/compare.js";
import { controlnetLevel } from "./views/controlnet-level.js";
import { controlImageChoice, controlOpener, controlSetup, openingScale, shownRunId } from "./controlnet-model.js";
import { differenceChart, differenceImage } from "./views/difference-chart.js";
import { fields } from "./views/fields.js";
import { frame } from "./views/frame.js";
import { guidanceFormula, guidanceSlider, sweep } from "./views/guidance-panel.js";
import { imagePanel } from "./views/image-panel.js";
import { promptPicker } from "./views/prompt-picker.js";
import { promptWords } from "./views/prompt-words.js";
import { conditioningInputs, tokenChips, vectorStrips } from "./views/text-panel.js";
import { timestepController } from "./views/timestep-controller.js";
import { trajectoryMap } from "./views/trajectory-map.js";
import { livePrompt } from "./views/live-prompt.js";
import { spokenExamples } from "./views/speech-input.js";
import { fewstepBox } from "./views/fewstep-view.js";

const RENDER_MEASURE = "noisepath:render";

function setStatus(text, isError = false) {
  d3.select("#status").text(text).classed("is-error", isError);
}

/** Commit/preview/unpreview listeners for any view that offers a choice of `key`. */
function choiceHandlers(view, store, key, after = () => {}) {
  return view
    .on("commit", (value) => { store.commit({ [key]: value }); after(); })
    .on("preview", (value) => store.preview({ [key]: value }))
    .on("unpreview", () => store.clearPreview([key]));
}

async function start() {
  bindArticleLinks(document);

  let schedule = () => {};
  const failures = new Map();
  const api = createApi({
    onLoad: () => schedule(),
    onError: (url, error) => {
      failures.set(url, error);
      api.startBackground(); // the first screen may never be drawn: hold nothing back for it
      schedule();
    },
  });

  let index;
  try {
    index = await api.load(urls.index());
  } catch (error) {
    setStatus(`Could not load the bundle: ${error.message}`, true);
    d3.select("#viz").attr("aria-busy", "false");
    renderMath(document);
    return;
  }
  if (!index.runs || !Object.keys(index.runs).length) {
    setStatus("This bundle has no runs yet: run `noisepath precompute` to fill it.", true);
    return;
  }

  const firstVisit = !window.location.search; // read before the store writes the URL
  const liveJob = new URLSearchParams(window.location.search).get("live_job"); // reopened
  const store = createStore(index, window);
  const model = createModel(index, api);
  // The first screen first (api.js): the opening run's documents, then its opening step's
  // sprites, asked for before the views are built (that work overlaps their download);
  // the rest waits for the first render. A slow server holds the views back 0.5 s at most.
  setStatus("Loading the run…");
  const start0 = store.committed();
  const opened = api.firstScreen(shownRunId(index, start0), // js/opening.js asks for the same
    start0.prompt, firstScreenSprites(start0.step)).catch(() => {}); // a failure reaches onError
  await Promise.race([opened, new Promise((resolve) => setTimeout(resolve, 500))]);
  applyWording(document, index); // the words that depend on the bundle's model
  const viz = d3.select("#viz");
  livePrompt(d3.select("#live-prompt"), { ...store.committed(), job: liveJob }); // serve --live
  spokenExamples(d3.select("#speech-examples"), { store }); // the bundle's spoken prompts (speech/)
  const fewstep = fewstepBox(d3.select("#fewstep"), { api, index, store }); // fewstep/: 50 steps, 4, 1

  const togglePlay = () => {
    const s = store.committed();
    if (!store.playing() && s.step >= recordedSteps(index)) store.commit({ step: 0 });
    store.setPlaying(!store.playing());
  };
  const goTo = (step) => {
    store.setPlaying(false);
    store.commit({ step });
  };
  const toggleToken = (k) => store.commit({ token: store.committed().token === k ? null : k });

  /** Open the comparison: the prompt's variant, else any other prompt with a run for this seed. */
  function enterCompare() {
    const s = store.committed();
    const other = compareCandidate(index, s.prompt, s.seed, s.guidance);
    if (!other) return;
    store.setPlaying(false);
    store.commit({ compare: other });
    requestAnimationFrame(() => document.getElementById("panel-compare-title").focus());
  }
  function leaveCompare() {
    store.commit({ compare: null });
    const back = document.getElementById("compare-open");
    requestAnimationFrame(() => back && back.offsetParent && back.focus());
  }

  // ---- views, configured once
  const views = {
    architecture: architecture(),
    controller: timestepController()
      .on("step", goTo)
      .on("play", (play) => (play !== store.playing() ? togglePlay() : null))
      .on("speed", (speed) => store.commit({ speed })),
    picker: choiceHandlers(promptPicker(), store, "prompt"),
    seeds: choiceHandlers(choice(), store, "seed"),
    guidance: choiceHandlers(choice(), store, "guidance"),
    words: promptWords().on("token", toggleToken),
    chips: tokenChips().on("token", toggleToken),
    chips2: tokenChips().on("token", toggleToken), // SDXL's tokenizer_2
    conditioning: conditioningInputs(),
    strips: vectorStrips().on("cell", (cell) => {
      d3.select("#vector-readout").text(cell
        ? `“${cell.row.label}”, number ${cell.dim}: ${d3.format(".3f")(cell.value)}`
          + (cell.empty === null ? "" : ` (empty prompt: ${d3.format(".3f")(cell.empty)})`)
        : "\u00a0");
    }),
    clip: clipDiagram(),
    fields: fields(),
    imagePanel: imagePanel(),
    slider: choiceHandlers(guidanceSlider(), store, "guidance"),
    channels: choice().on("commit", (channel) => store.commit({ channel })),
    formula: guidanceFormula(),
    sweep: choiceHandlers(sweep(), store, "guidance"),
    attentionHover: attentionHover(),
    overlay: attentionOverlay().on("pixel", (p) => store.setHover(p ? { fx: p.fx, fy: p.fy } : null)),
    attentionControls: attentionControls()
      .on("res", (res) => store.commit({ res }))
      .on("avg", (avg) => store.commit({ avg }))
      .on("clear", () => store.commit({ token: null })),
    compare: compareLanes()
      .on("commit", ({ lane, id }) => store.commit({ [lane === 0 ? "prompt" : "compare"]: id }))
      .on("preview", ({ lane, id }) => store.preview({ [lane === 0 ? "prompt" : "compare"]: id }))
      .on("unpreview", ({ lane }) => store.clearPreview([lane === 0 ? "prompt" : "compare"])),
    compareSeeds: choiceHandlers(choice(), store, "seed"),
    compareGuidance: choiceHandlers(choice(), store, "guidance"),
    trajectory: trajectoryMap()
      .on("step", goTo)
      .on("paths", (paths) => store.commit({ paths })),
    differences: differenceChart().on("step", goTo),
    differenceImage: differenceImage(),
    controlnet: choiceHandlers(controlnetLevel(), store, "control")
      .on("image", (id) => store.commit(controlImageChoice(index, store.committed(), id)))
      // the preview shows what a click would choose: the image at a scale it was run at
      .on("imagePreview", (id) => store.preview(controlImageChoice(index, store.committed(), id)))
      .on("imageUnpreview", () => store.clearPreview(["controlImage", "control"])),
  };

  const frameView = frame();

  // A first visit (no state in the address bar) opens with the bundle's marked word of the
  // first prompt selected, so the attention lesson is on screen from the start.
  let opening = firstVisit;
  function openOn(spans) {
    opening = false;
    const marked = spans.find((sp) => sp.highlight && sp.k !== null);
    if (marked && store.committed().token === null) store.commit({ token: marked.k }, { replace: true });
  }

  // A level that opens below the fold is scrolled into view: also the one a link opens
  // with, so a shared link shows its level, not the overview above it.
  let shownPanels = new Set();
  let revealed = false;
  function revealOpened(open) {
    const fromLink = !revealed;
    revealed = true;
    const added = open.filter((p) => !shownPanels.has(p));
    shownPanels = new Set(open);
    if (!added.length) return;
    // the topmost of them: nothing still loading above it moves it after the scroll
    const panel = [...document.querySelectorAll(".panel")].find((el) => added.includes(el.id.slice(6)));
    if (!panel) return;
    requestAnimationFrame(() => {
      const box = panel.getBoundingClientRect();
      if (box.top < window.innerHeight - 160 && box.top >= 0) return; // already on screen
      // a link's level jumps there at once: a smooth scroll still under way when the
      // pictures above it arrive ends short, the level's title under the sticky player
      const smooth = !fromLink && !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
      // its top just below the sticky player, whose height (two rows on a phone) the
      // panel's scroll-margin cannot know
      const player = document.querySelector(".timestep-controller");
      const below = (player ? player.getBoundingClientRect().height : 0) + 12;
      window.scrollTo({ top: window.scrollY + box.top - below, behavior: smooth ? "smooth" : "auto" });
    });
  }
  d3.select("#clip-diagram").datum(CLIP_EXAMPLE).call(views.clip);

  let firstRender = false;
  let measures = 0;

  const PHONE = window.matchMedia("(max-width: 719px)"); // main.css's phone layout
  function render() {
    performance.mark("noisepath:render-start");
    const state = store.state();
    const m = model.derive(state, store.hover());

    // ControlNet: its opener and level only where the prompt has control at this seed and guidance
    const control = controlOpener(index, api, state);
    viz.datum({ ...m.architecture, unavailable: control ? [] : ["controlnet"] }).call(views.architecture);
    const opener = d3.select("#controlnet-open").property("hidden", !control);
    if (control) {
      const scale = control.scale ? `scale ${control.scale}` : "off";
      opener.attr("aria-label", `ControlNet, ${scale}: open its level`).select(".box-sub").text(scale);
      opener.select(".frame").datum(control.frame).call(frameView);
    }
    if (m.controlnet) d3.select("#panel-controlnet").datum(m.controlnet).call(views.controlnet);
    const controlled = m.run && m.run.controlnet; // the refiner's UNet calls get its residuals
    d3.select("#image-note-control").property("hidden", !controlled)
      .select(".cn-scale").text(controlled ? String(controlled.conditioning_scale) : "");
    if (!state.compare) revealOpened(state.open);
    d3.select("#timestep-controller").datum(m.controller).call(views.controller);
    d3.select("#prompt-picker").datum(m.picker).call(views.picker);
    d3.select("#seed-choice").datum(m.seeds).call(views.seeds);
    d3.select("#guidance-choice").datum(m.guidance).call(views.guidance);
    d3.select("#prompt-words").datum(m.words).call(views.words);
    d3.select(document.body).datum(m.fields).call(views.fields);
    // presentation mode is for projectors: on a phone, where its toggle is hidden and could
    // not leave it, a presenting link's page shows as usual (its captions overlapped)
    d3.select(document.documentElement).classed("presenting", state.present && !PHONE.matches);
    d3.select("#present-toggle").attr("aria-pressed", String(state.present));

    d3.select("#compare-entry").property("hidden", !m.compareFallback || Boolean(state.compare));
    if (m.compareFallback) d3.select("#compare-variant").text(index.prompts[m.compareFallback].text);
    // only a group's variant has its differing words marked in the prompt
    d3.select("#compare-marked").property("hidden", !m.words.spans.some((w) => w.highlight));

    // The controls show while a word is selected; what a hovered pixel attends to floats
    // over the page, so hovering never moves anything.
    const att = m.attention;
    const ac = att && att.controls;
    d3.select("#decoded-frame").datum({ map: att ? att.map : null }).call(views.overlay);
    // (while a previewed run loads they keep what they showed: the page does not move)
    const controls = d3.select("#attention-controls").property("hidden", state.token === null);
    if (ac && ac.token !== null) controls.datum(ac).call(views.attentionControls);
    d3.select("#attention-hover").datum(ac && ac.hover ? ac.hover : null).call(views.attentionHover);
    if (opening && m.words.spans.length) openOn(m.words.spans);

    if (m.text) {
      d3.select("#token-chips").datum(m.text.chips).call(views.chips);
      d3.select("#truncation-note").property("hidden", !m.text.chips.truncated);
      d3.select("#compare-empty").property("checked", state.vsEmpty);
      if (m.text.strips) d3.select("#vector-strips").datum(m.text.strips).call(views.strips);
      const sdxl = m.text.sdxl; // SDXL: the second token row and the conditioning inputs
      d3.select("#sdxl-text").property("hidden", !sdxl);
      if (sdxl) d3.select("#token-chips-2").datum(sdxl.chips).call(views.chips2);
      const cond = sdxl && sdxl.conditioning;
      d3.select("#sdxl-conditioning").property("hidden", !cond);
      if (cond) d3.select("#sdxl-conditioning").datum(cond).call(views.conditioning);
      d3.select("#sdxl-zeros-note").property("hidden", !(cond && cond.force_zeros_for_empty_prompt));
    }
    if (m.image) d3.select("#panel-image").datum(m.image).call(views.imagePanel);
    if (m.guidancePanel) {
      const g = m.guidancePanel;
      d3.select("#guidance-slider").datum(g.slider).call(views.slider);
      d3.select("#guidance-channel-choice").datum(g.channels).call(views.channels);
      d3.select("#guidance-formula").datum(g.formula).call(views.formula);
      d3.select("#guidance-note-0").property("hidden", !g.notes.zero);
      d3.select("#guidance-note-1").property("hidden", !g.notes.one);
      d3.select("#guidance-formula-empty").property("hidden", g.notes.negative); // a run's negative prompt
      d3.select("#guidance-formula-negative").property("hidden", !g.notes.negative);
      d3.select("#guidance-sweep").datum(g.sweep).call(views.sweep);
    }
    viz.classed("is-comparing", Boolean(m.compare))
      .attr("aria-label", m.compare ? "Comparison view: two prompts from the same noise" : "Architecture view: the whole pipeline");
    if (m.compare) {
      const c = m.compare;
      d3.select("#compare-lanes").datum(c).call(views.compare);
      d3.select("#compare-seed-choice").datum(m.seeds).call(views.compareSeeds);
      d3.select("#compare-guidance-choice").datum(m.guidance).call(views.compareGuidance);
      d3.select("#compare-noise-frame").datum(c.noise).call(frameView);
      d3.select("#compare-note-shared").property("hidden", !c.shared);
      d3.select("#trajectory-map").datum(c.map).call(views.trajectory);
      d3.select("#difference-chart").datum(c.differences.chart).call(views.differences);
      d3.select("#difference-image").datum(c.differences.image).call(views.differenceImage);
      checkLayout();
    }

    const errors = [...failures.values()];
    if (errors.length) setStatus(`Some data could not be loaded: ${errors[errors.length - 1].message}`, true);
    else setStatus(m.ready ? "" : "Loading the run…");
    viz.attr("aria-busy", String(!m.ready)).attr("data-run", m.runId || null);

    if (m.ready && !firstRender) {
      firstRender = true;
      performance.mark("noisepath:first-full-render");
      api.startBackground();
      // The math is off the first screen: typeset it once the pictures are up.
      setTimeout(() => renderMath(document).then(schedule), 50);
    }
    performance.measure(RENDER_MEASURE, "noisepath:render-start");
    if (++measures > 2000) {
      performance.clearMeasures(RENDER_MEASURE);
      measures = 0;
    }
  }

  // The map's size follows the page layout: read it at the start of the next frame (when
  // it is already computed, so reading is cheap) and draw again if it changed.
  let layoutCheck = null;
  function checkLayout() {
    if (layoutCheck !== null) return;
    layoutCheck = requestAnimationFrame(() => {
      layoutCheck = null;
      if (views.trajectory.measure()) schedule();
    });
  }

  let frameRequest = null;
  schedule = () => {
    if (frameRequest === null) {
      frameRequest = requestAnimationFrame(() => {
        frameRequest = null;
        render();
      });
    }
  };
  store.on("change.render", schedule);

  // ---- page-level intents
  function openerOf(panel) {
    return document.querySelector(`#pipeline [data-panel="${panel}"], #viz [data-panel="${panel}"]`);
  }
  viz.on("click.panels", (event) => {
    const opener = event.target.closest("[data-panel]");
    if (opener) {
      store.togglePanel(opener.dataset.panel);
      const s = store.committed();
      if (opener.dataset.panel === "controlnet" && s.open.includes("controlnet") && !s.control) {
        // the level is about control acting: opening it with control off turns it on
        const setup = controlSetup(index, s.prompt, s.seed, s.guidance, s.controlImage);
        if (setup) store.commit({ control: openingScale(setup) }, { replace: true });
      }
      return;
    }
    const closer = event.target.closest("[data-close]");
    if (closer) {
      store.togglePanel(closer.dataset.close, false);
      const back = openerOf(closer.dataset.close);
      if (back) back.focus();
    }
  });
  d3.select("#compare-open").on("click", enterCompare);
  d3.select("#compare-close").on("click", leaveCompare);
  window.addEventListener("resize", () => schedule()); // the map's size follows the layout
  d3.select("#compare-empty").on("change", function onChange() {
    store.commit({ vsEmpty: this.checked });
  });

  // A click outside the open levels (not on a control) closes them.
  document.addEventListener("click", (event) => {
    if (!store.committed().open.length || store.committed().compare) return;
    const t = event.target;
    if (!t.isConnected || t.closest(".panel:not([hidden]), button, a, input, select, label, [role=option], [role=listbox]")) return;
    store.closeAllPanels();
  });

  const togglePresent = () => {
    const present = !store.committed().present;
    store.commit({ present });
    if (present && document.fullscreenEnabled && !document.fullscreenElement) {
      document.documentElement.requestFullscreen().catch(() => {});
    } else if (!present && document.fullscreenElement) {
      document.exitFullscreen().catch(() => {});
    }
  };
  d3.select("#present-toggle").on("click", togglePresent);

  bindKeyboard({
    togglePlay,
    step: (delta) => goTo(Math.max(0, Math.min(recordedSteps(index), store.committed().step + delta))),
    first: () => goTo(0),
    last: () => goTo(recordedSteps(index)),
    present: togglePresent,
    escape: () => {
      const s = store.committed();
      if (s.compare) {
        leaveCompare();
        return true;
      }
      // a level this run does not show (ControlNet's, without control) stays as it is
      const shown = s.open.filter((p) => p !== "controlnet" || controlSetup(index, s.prompt, s.seed, s.guidance));
      if (shown.length) {
        const top = shown[shown.length - 1];
        store.togglePanel(top, false);
        const back = openerOf(top);
        if (back) back.focus();
        return true;
      }
      if (s.token !== null) {
        store.commit({ token: null });
        return true;
      }
      return fewstep.close();
    },
  });

  // A first visit plays the run: from its first screen on, not through frames still loading.
  createPlayer(store, () => firstRender || failures.size > 0);
  render();
}

start().catch((error) => {
  setStatus(`Something went wrong: ${error.message}`, true);
  throw error;
});
