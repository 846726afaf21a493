/**
 * The prompt picker: a button that opens a list of the bundle's prompts, grouped as a
 * main prompt and its variants. Hovering (or arrowing to) a prompt previews its images;
 * a click or Enter commits it; Escape or a click elsewhere closes the list.
 *
 * Usage: d3.select(host).datum({groups: [{id, title, options: [{id, text}]}], selected, previewed})
 *          .call(promptPicker().on("commit", id => ...).on("preview", id => ...).on("unpreview", ...))
 */
import { d3 } from "../lib.js";

let uid = 0;

export function promptPicker() {
  const listeners = d3.dispatch("commit", "preview", "unpreview");
  const listId = `prompt-list-${++uid}`;
  let expanded = false; // whether the list is open: this view's own transient UI state
  let active = null;    // the option the keyboard is on while the list is open
  let host = null;
  let buttonText = "Choose a prompt ▾";

  function options() {
    return host.selectAll("[role=option]").data();
  }

  function setExpanded(value, { focusButton = false } = {}) {
    expanded = value;
    if (!value) {
      active = null;
      listeners.call("unpreview", null);
    }
    host.call(view);
    if (focusButton) host.select("button.picker-button").node().focus();
  }

  function move(delta) {
    const all = options();
    if (!all.length) return;
    const i = all.findIndex((o) => o.id === active);
    const next = all[Math.max(0, Math.min(all.length - 1, i < 0 ? 0 : i + delta))];
    active = next.id;
    listeners.call("preview", null, active);
    host.call(view);
    const node = host.select(`[data-id="${CSS.escape(active)}"]`).node();
    if (node) node.scrollIntoView({ block: "nearest" });
  }

  function onKey(event) {
    if (!expanded && (event.key === "ArrowDown" || event.key === "ArrowUp")) {
      event.preventDefault();
      event.stopPropagation();
      active = host.datum().selected;
      setExpanded(true);
      move(0);
      return;
    }
    if (!expanded) return;
    const handled = {
      ArrowDown: () => move(1),
      ArrowUp: () => move(-1),
      Home: () => { active = null; move(0); },
      End: () => move(options().length),
      Enter: () => { if (active) listeners.call("commit", null, active); setExpanded(false, { focusButton: true }); },
      Escape: () => setExpanded(false, { focusButton: true }),
      Tab: () => setExpanded(false),
    }[event.key];
    if (!handled) return;
    if (event.key !== "Tab") event.preventDefault();
    event.stopPropagation();
    handled();
  }

  function view(selection) {
    host = selection;
    const d = selection.datum();
    const current = d.groups.flatMap((g) => g.options).find((o) => o.id === d.selected);

    selection.selectAll("button.picker-button").data([null]).join((enter) => enter.append("button")
      .attr("type", "button")
      .attr("class", "picker-button")
      .attr("role", "combobox")
      .attr("aria-haspopup", "listbox")
      .attr("aria-controls", listId)
      .on("click", () => setExpanded(!expanded))
      .on("keydown", onKey))
      .attr("aria-expanded", String(expanded))
      .attr("aria-activedescendant", expanded && active ? `${listId}-${active}` : null)
      .attr("aria-label", `Prompt: ${current ? current.text : ""}. Choose another prompt`)
      .text(buttonText);

    const list = selection.selectAll("ul.picker-list").data([null]).join("ul")
      .attr("class", "picker-list")
      .attr("id", listId)
      .attr("role", "listbox")
      .attr("aria-label", "Prompts")
      .property("hidden", !expanded)
      .on("pointerleave", () => listeners.call("unpreview", null));

    const groups = list.selectAll("li.picker-group")
      .data(d.groups, (g) => g.id)
      .join((enter) => {
        const li = enter.append("li").attr("class", "picker-group").attr("role", "group");
        li.append("ul").attr("class", "picker-group-options").attr("role", "presentation");
        return li;
      })
      .attr("aria-label", (g) => g.title);

    groups.select("ul").selectAll("li.picker-option")
      .data((g) => g.options, (o) => o.id)
      .join((enter) => enter.append("li")
        .attr("class", "picker-option")
        .attr("role", "option")
        .on("pointerenter", (event, o) => listeners.call("preview", null, o.id))
        .on("click", (event, o) => {
          listeners.call("commit", null, o.id);
          setExpanded(false, { focusButton: true });
        }))
      .attr("id", (o) => `${listId}-${o.id}`)
      .attr("data-id", (o) => o.id)
      .attr("aria-selected", (o) => String(o.id === d.selected))
      .classed("is-active", (o) => o.id === active)
      .classed("is-variant", (o, i) => i > 0)
      .text((o) => o.text || "(empty prompt)");
  }

  // A click anywhere outside the picker closes its list.
  document.addEventListener("click", (event) => {
    if (expanded && host && !host.node().contains(event.target)) setExpanded(false);
  });

  view.on = (type, fn) => {
    listeners.on(type, fn);
    return view;
  };
  view.isOpen = () => expanded;
  /** The button's text (default "Choose a prompt ▾"). */
  view.buttonText = (text) => {
    buttonText = text;
    return view;
  };
  return view;
}
