// Progressive enhancement: drag-and-drop and in-page results. Without JS the form posts normally.
(() => {
  const form = document.getElementById("search-form");
  const drop = document.getElementById("drop");
  const input = document.getElementById("file");
  const results = document.getElementById("results");
  if (!form || !window.fetch) return;

  // AUTH_READS=key: the page asks for a key once, keeps it for this tab (sessionStorage) and sends it as X-API-Key
  // with each search and thumbnail (fetched, since an <img> cannot send a header).
  const keyForm = document.getElementById("key-form");
  const keyInput = document.getElementById("api-key");
  const needsKey = document.body.dataset.key === "required";
  const storedKey = () => sessionStorage.getItem("oceano-api-key") || "";
  const keyHeaders = () => (storedKey() ? { "X-API-Key": storedKey() } : {});
  function askForKey(message) {
    sessionStorage.removeItem("oceano-api-key");
    keyForm.hidden = false;
    keyInput.focus();
    if (message) results.innerHTML = "<p class='error'>" + message + "</p>";
  }
  if (keyForm) {
    keyForm.addEventListener("submit", (event) => {
      event.preventDefault();
      if (!keyInput.value.trim()) return;
      sessionStorage.setItem("oceano-api-key", keyInput.value.trim());
      keyInput.value = "";
      keyForm.hidden = true;
    });
    if (needsKey && storedKey()) keyForm.hidden = true;
  }

  async function loadThumbnails() {
    if (!storedKey()) return;
    for (const img of results.querySelectorAll("img[src^='/thumbs/']")) {
      const response = await fetch(img.getAttribute("src"), { headers: keyHeaders() });
      if (response.ok) img.src = URL.createObjectURL(await response.blob());
    }
  }

  async function submit() {
    if (!input.files.length) return;
    if (needsKey && !storedKey()) { askForKey("Enter an API key first."); return; }
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
})();
