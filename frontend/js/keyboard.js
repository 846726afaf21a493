/**
 * Page-wide keys: Space plays or pauses, arrows step, Home/End jump to the first and
 * last step, Escape closes the open level, P toggles presentation mode.
 *
 * The shortcuts work whatever app control has focus (a clicked word, a button, the step
 * slider), so Space on a focused button plays instead of pressing it again (Enter still
 * presses it). What a control needs for itself is left to it: every key typed into a text
 * field or a select, Space on a checkbox, and the arrows and Home/End of widgets that move
 * with them (radio groups, list boxes, sliders).
 */

const TEXT_ENTRY = "textarea, select, [contenteditable=true], input:not([type]), "
  + "input[type=text], input[type=search], input[type=number], input[type=email], input[type=url], "
  + "input[type=password], input[type=tel]";
const ARROW_ROLES = new Set(["radio", "option", "listbox", "slider"]);
const MOVES = new Set(["ArrowRight", "ArrowLeft", "ArrowUp", "ArrowDown", "Home", "End"]);

/** Whether the focused element keeps `key` for itself. */
export function ownsKey(target, key) {
  if (!target || !target.closest) return false;
  if (target.closest(TEXT_ENTRY)) return true;
  if (key === " ") {
    if (target.closest("input[type=checkbox], input[type=radio]")) return true;
    // an open prompt list: Space belongs to it
    return Boolean(target.closest("[role=combobox][aria-expanded=true]"));
  }
  if (!MOVES.has(key)) return false;
  if (target.closest("input[type=range]")) return true;
  const role = target.getAttribute && target.getAttribute("role");
  if (ARROW_ROLES.has(role)) return true;
  return role === "combobox" && (key === "ArrowUp" || key === "ArrowDown");
}

/**
 * @param {object} actions {togglePlay, step(delta), first, last, escape, present}
 */
export function bindKeyboard(actions) {
  let swallowSpaceUp = false;
  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.key === "Escape") {
      if (actions.escape()) event.preventDefault();
      return;
    }
    if (ownsKey(event.target, event.key)) return;
    const handlers = {
      " ": actions.togglePlay,
      ArrowRight: () => actions.step(1),
      ArrowLeft: () => actions.step(-1),
      Home: actions.first,
      End: actions.last,
      p: actions.present,
      P: actions.present,
    };
    const handler = handlers[event.key];
    if (!handler) return;
    event.preventDefault(); // also keeps a focused button from being pressed by Space
    if (event.key === " ") swallowSpaceUp = true;
    if (!event.repeat || event.key !== " ") handler();
  });
  // a button is pressed when Space comes up: not when Space just played or paused
  document.addEventListener("keyup", (event) => {
    if (event.key === " " && swallowSpaceUp) {
      swallowSpaceUp = false;
      event.preventDefault();
    }
  });
}
