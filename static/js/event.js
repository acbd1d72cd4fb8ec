// The event page (templates/dashboard/event.html): payload view tabs, JSON highlighting with the
// vendored highlight.js (core and the json grammar only, loaded on demand: their URLs are in
// #event's data-hljs-* attributes), and the copy button of the `nats pub` command.
// Event delegation on the document: the payload region is replaced by htmx when the full payload
// is loaded from the stream, and everything keeps working on the new one.

let hljsReady = null;

function loadHighlighter() {
  const page = document.getElementById("event");
  if (!page) return Promise.resolve(null);
  if (!hljsReady) {
    hljsReady = Promise.all([import(page.dataset.hljsCore), import(page.dataset.hljsJson)])
      .then(([core, json]) => {
        const hljs = core.default;
        hljs.registerLanguage("json", json.default);
        return hljs;
      })
      .catch((err) => {
        console.warn("highlight.js did not load; JSON stays plain", err);
        return null;
      });
  }
  return hljsReady;
}

// highlight.js reads the element's text (never its HTML) and writes escaped spans back.
async function highlight(root) {
  const blocks = root.querySelectorAll("code[data-highlight='json']:not([data-highlighted])");
  if (!blocks.length) return;
  const hljs = await loadHighlighter();
  if (!hljs) return;
  for (const block of blocks) hljs.highlightElement(block);
}

function showView(region, view) {
  for (const tab of region.querySelectorAll("[role=tab]")) {
    const on = tab.dataset.view === view;
    tab.setAttribute("aria-selected", on ? "true" : "false");
    if (on) tab.setAttribute("aria-current", "true");
    else tab.removeAttribute("aria-current");
  }
  for (const pane of region.querySelectorAll("[role=tabpanel]")) {
    pane.hidden = pane.id !== `view-${view}`;
  }
  region.dataset.active = view;
  const url = new URL(window.location.href);
  url.searchParams.set("view", view);
  history.replaceState(history.state, "", url);
}

async function copy(button) {
  const source = document.querySelector(button.dataset.copy);
  if (!source) return;
  const label = button.textContent;
  try {
    await navigator.clipboard.writeText(source.textContent);
    button.textContent = "Copied";
  } catch (err) {
    // no clipboard (an insecure origin): select the text for Ctrl-C instead
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    button.textContent = "Selected: press Ctrl-C";
  }
  setTimeout(() => { button.textContent = label; }, 2000);
}

document.addEventListener("click", (event) => {
  const tab = event.target.closest("#payload [role=tab]");
  if (tab) {
    event.preventDefault();
    showView(tab.closest("#payload"), tab.dataset.view);
    return;
  }
  const button = event.target.closest("button[data-copy]");
  if (button) copy(button);
});

document.addEventListener("htmx:afterSwap", () => highlight(document));
highlight(document);
