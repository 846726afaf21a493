/**
 * Page-wide keys: Space plays or pauses, arrows step, Home/End jump to the first and
 * last step, Escape closes the open level, P toggles presentation mode. Keys typed into
 * a form control, or handled by a focused widget, are left alone.
 */

const OWN_KEYS_ROLES = new Set(["radio", "option", "combobox", "listbox", "slider"]);

function ownsKeys(target) {
  if (!target || !target.closest) return false;
  if (target.closest("input, select, textarea, [contenteditable=true]")) return true;
  const role = target.getAttribute && target.getAttribute("role");
  return OWN_KEYS_ROLES.has(role);
}

/**
 * @param {object} actions {togglePlay, step(delta), first, last, escape, present}
 */
export function bindKeyboard(actions) {
  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.key === "Escape") {
      if (actions.escape()) event.preventDefault();
      return;
    }
    if (ownsKeys(event.target)) return;
    const onButton = event.target.closest && event.target.closest("button, a, summary");
    const handlers = {
      " ": onButton ? null : actions.togglePlay,
      ArrowRight: () => actions.step(1),
      ArrowLeft: () => actions.step(-1),
      Home: actions.first,
      End: actions.last,
      p: actions.present,
      P: actions.present,
    };
    const handler = handlers[event.key];
    if (!handler) return;
    event.preventDefault();
    handler();
  });
}
