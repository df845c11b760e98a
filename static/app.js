// Progressive enhancement: drag-and-drop and in-page results. Without JS the form posts normally.
import { keyForm, keyHeaders, showThumb, storedKey } from "./common.js";

const form = document.getElementById("search-form");
const drop = document.getElementById("drop");
const input = document.getElementById("file");
const results = document.getElementById("results");

// AUTH_READS=key: the page asks for a key once, keeps it for this tab and sends it with each search and thumbnail.
const key = keyForm();
function askForKey(message) {
  key.ask();
  if (message) results.innerHTML = "<p class='error'>" + message + "</p>";
}

async function loadThumbnails() {
  if (!storedKey()) return;
  for (const img of results.querySelectorAll("img[src^='/thumbs/']")) await showThumb(img, img.getAttribute("src"));
}

async function submit() {
  if (!input.files.length) return;
  if (key.missing()) { askForKey("Enter an API key first."); return; }
  const button = form.querySelector("button");
  button.disabled = true;
  results.innerHTML = "<p class='summary'>Searching…</p>";
  try {
    const response = await fetch(form.action, { method: "POST", body: new FormData(form),
                                                 headers: { Accept: "text/html", ...keyHeaders() } });
    if (response.status === 401) { askForKey("The API key was refused: enter a valid one."); return; }
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("results");
    results.innerHTML = fresh ? fresh.innerHTML : "<p class='error'>Unexpected answer (" + response.status + ")</p>";
    await loadThumbnails();
  } catch (err) {
    results.innerHTML = "<p class='error'>Search failed: " + err + "</p>";
  } finally {
    button.disabled = false;
  }
}

// Thumbs up / down on a match: POST /api/feedback (the query face's ref from the answer, the match's id).
results.addEventListener("click", async (event) => {
  const button = event.target.closest(".feedback button");
  if (!button) return;
  const box = button.parentElement;
  const body = { query: box.dataset.query, match_id: box.dataset.match, same_person: button.dataset.same === "true" };
  const response = await fetch("/api/feedback", { method: "POST", body: JSON.stringify(body),
                                                  headers: { "Content-Type": "application/json", ...keyHeaders() } });
  box.classList.toggle("failed", !response.ok);
  box.querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", String(b === button && response.ok)));
});

form.addEventListener("submit", (event) => { event.preventDefault(); submit(); });
input.addEventListener("change", submit);
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (event) => {
  if (!event.dataTransfer.files.length) return;
  input.files = event.dataTransfer.files;
  submit();
});
