// Progressive enhancement: drag-and-drop and in-page results. Without JS the form posts normally.
(() => {
  const form = document.getElementById("search-form");
  const drop = document.getElementById("drop");
  const input = document.getElementById("file");
  const results = document.getElementById("results");
  if (!form || !window.fetch) return;

  async function submit() {
    if (!input.files.length) return;
    const button = form.querySelector("button");
    button.disabled = true;
    results.innerHTML = "<p class='summary'>Searching…</p>";
    try {
      const response = await fetch(form.action, { method: "POST", body: new FormData(form),
                                                   headers: { Accept: "text/html" } });
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("results");
      results.innerHTML = fresh ? fresh.innerHTML : "<p class='error'>Unexpected answer (" + response.status + ")</p>";
    } catch (err) {
      results.innerHTML = "<p class='error'>Search failed: " + err + "</p>";
    } finally {
      button.disabled = false;
    }
  }

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
