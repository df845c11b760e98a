// What the pages share: the API key (AUTH_READS=key) asked once and kept for the tab in sessionStorage, sent as
// X-API-Key with each request; JSON calls whose errors carry the answer's `detail`; thumbnails fetched with the
// key (an <img> cannot send a header) and shown from blob: URLs.
export const KEY_ITEM = "oceano-api-key";
export const storedKey = () => sessionStorage.getItem(KEY_ITEM) || "";
export const keyHeaders = () => (storedKey() ? { "X-API-Key": storedKey() } : {});

// Wires #key-form: shown when the page needs a key and none is kept, or when ask() is called (a 401 or 403);
// onKey runs once a key is entered.
export function keyForm(onKey = () => {}) {
  const form = document.getElementById("key-form");
  const input = document.getElementById("api-key");
  const needed = document.body.dataset.key === "required";
  form.hidden = !needed || Boolean(storedKey());
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_ITEM, key);
    input.value = "";
    form.hidden = true;
    onKey();
  });
  return {
    needed,
    missing: () => needed && !storedKey(),
    // refused: the kept key is unknown (401) and forgotten; else (403, a key without the scope) it is kept for
    // reading until another is entered.
    ask(refused = true) {
      if (refused) sessionStorage.removeItem(KEY_ITEM);
      form.hidden = false;
      input.focus();
    },
  };
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

// One JSON call: the parsed answer, or an ApiError with the answer's `detail` (the API's error body).
export async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json", ...keyHeaders() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const detail = data && typeof data.detail === "string" ? data.detail : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, detail);
  }
  return data;
}

// Show a thumbnail: straight from its URL, or (a key is kept) fetched with the key into a blob: URL.
export async function showThumb(img, url) {
  if (!storedKey()) { img.src = url; return; }
  const response = await fetch(url, { headers: keyHeaders() });
  if (response.ok) img.src = URL.createObjectURL(await response.blob());
}

// A small element builder: el("li", { class: "x", text: "y" }, child, ...).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}
