// The people page: the collection at a glance, people (cover, count, search, pages), one person's faces (rename,
// merge, move a face, delete with a confirmation, find similar faces with feedback), and clusters of unknown faces
// to name or merge. Everything goes through the JSON API (static/common.js sends the key under AUTH_READS=key).
// Where it is: the URL's hash, "#person=NAME" or nothing (the list), so that Back and links work.
import { api, ApiError, el, keyForm, showThumb } from "./common.js";

const $ = (id) => document.getElementById(id);
const PAGE = 24;  // people or clusters per page
const enc = encodeURIComponent;
const state = { loaded: false, offset: 0, search: "", view: null, person: null, after: null, clusterOffset: 0,
                clustersOn: false, poll: 0 };
// A key entered: the page loads when it could not yet; otherwise the action it was refused can simply be retried.
const key = keyForm(() => { if (!state.loaded) start(); });

// ------------------------------------------------------------------ messages and the one dialog
function say(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
}

// An API call whose failure is shown (its `detail`); a 401 or 403 shows the key form too. Null when it failed.
async function call(path, options) {
  try {
    return await api(path, options);
  } catch (err) {
    if (!(err instanceof ApiError)) { say(`The service could not be reached: ${err.message}`); return null; }
    if (err.status === 401 || err.status === 403) key.ask(err.status === 401);
    say(err.detail);
    return null;
  }
}

// A real dialog (Enter confirms, Escape or Cancel cancels): resolves to the field's value, true, or null.
function ask({ title, text = "", field = null, choices = null, ok = "OK", danger = false }) {
  const dialog = $("dialog"), input = $("dialog-input"), select = $("dialog-select");
  $("dialog-title").textContent = title;
  $("dialog-text").textContent = text;
  $("dialog-field").hidden = !field;
  $("dialog-choice").hidden = !choices;
  input.required = Boolean(field);
  input.value = "";
  if (field) $("dialog-field").querySelector("span").textContent = field;
  if (choices) {
    $("dialog-choice").querySelector("span").textContent = choices.label;
    select.replaceChildren(...choices.options.map(([value, label]) => el("option", { value, text: label })));
  }
  $("dialog-ok").textContent = ok;
  $("dialog-ok").className = danger ? "danger" : "";
  dialog.returnValue = "";
  dialog.showModal();
  (field ? input : choices ? select : $("dialog-cancel")).focus();  // a destructive question starts on Cancel
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (dialog.returnValue !== "ok") resolve(null);
      else resolve(field ? input.value.trim() : choices ? select.value : true);
    }, { once: true });
  });
}
$("dialog-cancel").addEventListener("click", () => $("dialog").close("cancel"));

// ------------------------------------------------------------------ faces shown as cards
function thumb(url, alt) {
  const img = el("img", { alt, width: 112, height: 112, loading: "lazy" });
  if (url) showThumb(img, url);
  return img;
}

const quality = (face) => {
  const q = face.quality;
  const score = typeof q === "number" ? q : q && typeof q.score === "number" ? q.score : null;
  if (score === null) return null;
  return `quality ${score.toFixed(2)}` + (face.quality_flagged ? " (low: under QUALITY_MIN)" : "");
};

// ------------------------------------------------------------------ the collection at a glance
async function loadOverview() {
  const o = await call("/api/people/overview");
  if (!o) return false;
  for (const dd of document.querySelectorAll("[data-stat]")) {
    const name = dd.dataset.stat;
    if (name === "index") {
      const i = o.index;
      // Faces not in the HNSW index yet are still searched (exactly): "waiting" is not "missing".
      dd.replaceChildren(i.index_building ? "building" : i.status,
        el("small", { text: `${i.indexed_vectors} of ${i.vectors} in the index` }));
    } else {
      dd.textContent = String(o[name]);
    }
  }
  $("overview-empty").hidden = o.faces > 0;
  return true;
}

// ------------------------------------------------------------------ people
async function loadPeople() {
  const query = `offset=${state.offset}&limit=${PAGE}` + (state.search ? `&search=${enc(state.search)}` : "");
  const page = await call(`/api/subjects?${query}`);
  if (!page) return;
  const list = $("people");
  list.replaceChildren(...page.subjects.map((s) => el("li", {},
    el("a", { class: "person", href: `#person=${enc(s.name)}` },
      thumb(s.cover_url, `${s.name}'s cover`),
      el("strong", { text: s.name }),
      el("span", { text: `${s.faces} face${s.faces === 1 ? "" : "s"}` })))));
  if (!page.total) {
    list.append(el("li", { class: "empty", text: state.search
      ? `Nobody's name holds "${state.search}".`
      : "No people yet: index photos with a name (subject), or name a cluster below." }));
  }
  showPager("people", page.offset, page.subjects.length, page.total);
}

// A list's pager (`<name>-range`, `<name>-prev`, `<name>-next`): where this page of `shown` items lies.
function showPager(name, offset, shown, total) {
  const last = Math.min(offset + shown, total);
  $(`${name}-range`).textContent = total ? `${offset + 1}–${last} of ${total}` : "";
  $(`${name}-prev`).disabled = offset === 0;
  $(`${name}-next`).disabled = last >= total;
}

async function loadNames() {
  const page = await api("/api/subjects?limit=500").catch(() => null);
  if (page) $("names").replaceChildren(...page.subjects.map((s) => el("option", { value: s.name })));
}

$("people-search").addEventListener("submit", (event) => {
  event.preventDefault();
  state.search = $("people-filter").value.trim();
  state.offset = 0;
  loadPeople();
});
$("people-prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadPeople(); });
$("people-next").addEventListener("click", () => { state.offset += PAGE; loadPeople(); });

// ------------------------------------------------------------------ one person
async function openPerson(name) {
  const person = await call(`/api/subjects/${enc(name)}?limit=60`);
  if (!person) { location.hash = ""; return; }
  state.person = person;
  $("person-title").textContent = person.name;
  $("person-summary").textContent = `${person.faces} face${person.faces === 1 ? "" : "s"}`;
  $("rename-name").value = "";
  $("merge-into").value = "";
  $("similar").hidden = true;
  $("person-faces").replaceChildren();
  showFaces(person.face_list);
  $("person-title").focus();
}

function showFaces(faceList) {
  state.after = faceList.next;
  $("more-faces").hidden = !faceList.next;
  $("person-faces").append(...faceList.faces.map((face) => el("li", { class: "face-card", "data-face": face.id },
    thumb(face.thumb_url, `face from ${face.file || "an upload"}`),
    el("span", { class: "file", title: face.file || "", text: face.file || "(upload)" }),
    quality(face) && el("span", { class: "quality", text: quality(face) }),
    el("button", { type: "button", class: "secondary", text: "Find similar", onclick: () => findSimilar(face) }),
    el("button", { type: "button", class: "secondary", text: "Move…", onclick: () => moveFace(face) }))));
}

$("more-faces").addEventListener("click", async () => {
  const page = await call(`/api/faces?subject=${enc(state.person.name)}&after=${enc(state.after)}&limit=60`);
  if (page) showFaces(page);
});

async function refreshAfterChange(name) {
  await Promise.all([loadOverview(), loadPeople(), loadNames()]);
  if (name === null) location.hash = "";
  else if (location.hash !== `#person=${enc(name)}`) location.hash = `#person=${enc(name)}`;
  else await openPerson(name);
}

$("rename-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("rename-name").value.trim();
  const done = await call(`/api/subjects/${enc(state.person.name)}`, { method: "PATCH", body: { name } });
  if (done) { say(`Renamed ${state.person.name} to ${done.name}.`, "done"); await refreshAfterChange(done.name); }
});

$("merge-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const into = $("merge-into").value.trim();
  const done = await call(`/api/subjects/${enc(into)}/merge`, { method: "POST", body: { from: state.person.name } });
  if (done) { say(`Merged ${state.person.name} into ${done.name}.`, "done"); await refreshAfterChange(done.name); }
});

$("delete-person").addEventListener("click", async () => {
  const { name, faces } = state.person;
  const sure = await ask({
    title: `Delete ${name}?`,
    text: `This erases ${name}'s ${faces} face${faces === 1 ? "" : "s"} and their thumbnails from the collection, ` +
          "and the feedback about them. It cannot be undone.",
    ok: "Delete",
    danger: true,
  });
  if (!sure) return;
  const done = await call(`/api/subjects/${enc(name)}`, { method: "DELETE" });
  if (done) { say(`Deleted ${name} (${done.deleted.length} faces erased).`, "done"); await refreshAfterChange(null); }
});

async function moveFace(face) {
  const to = await ask({ title: "Move this face", text: `Give this face (from ${face.file || "an upload"}) to another person.`,
                         field: "To person", ok: "Move" });
  if (!to) return;
  const done = await call(`/api/faces/${enc(face.id)}/subject`, { method: "POST", body: { subject: to } });
  if (!done) return;
  say(`Moved the face to ${done.subject}.`, "done");
  const left = state.person.faces - 1;
  await refreshAfterChange(left > 0 ? state.person.name : null);
}

async function findSimilar(face) {
  const found = await call(`/api/faces/${enc(face.id)}/similar?limit=12`);
  if (!found) return;
  $("similar").hidden = false;
  $("similar-matches").replaceChildren(...found.matches.map((m) => {
    const judge = (same) => async (event) => {
      const box = event.currentTarget.parentElement;
      const done = await call("/api/feedback", { method: "POST", body: { query: face.id, match_id: m.id, same_person: same } });
      box.classList.toggle("failed", !done);
      box.querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", String(done !== null && b === event.target)));
    };
    return el("li", { class: m.same_person ? "face-card same" : "face-card below" },
      thumb(m.thumb_url, `match ${m.subject || m.file || ""}`),
      el("span", { class: "score", text: m.score.toFixed(3) }),
      el("span", { class: "file", title: m.file || "", text: m.subject || m.file || "unknown" }),
      el("span", { class: "feedback" },
        el("button", { type: "button", "aria-pressed": "false", text: "✓ same", "aria-label": "same person", onclick: judge(true) }),
        el("button", { type: "button", "aria-pressed": "false", text: "✗ not", "aria-label": "someone else", onclick: judge(false) })));
  }));
  if (!found.matches.length) $("similar-matches").append(el("li", { class: "empty", text: "No other face is stored yet." }));
  $("similar-title").focus();
}

// ------------------------------------------------------------------ clusters (hidden when the service has none)
async function loadClusters() {
  let page;
  try {
    page = await api(`/api/clusters?offset=${state.clusterOffset}&limit=${PAGE}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) { $("clusters").hidden = true; return; }
    say(err.message);
    return;
  }
  state.clustersOn = true;
  $("clusters").hidden = Boolean(state.view);
  showJob(page.job);
  const others = page.clusters.map((c) => [c.id, `${c.size} faces (${c.id.slice(0, 8)})`]);
  $("cluster-list").replaceChildren(...page.clusters.map((c) => clusterCard(c, others.filter(([id]) => id !== c.id))));
  if (!page.total) {
    $("cluster-list").append(el("li", { class: "empty", text: page.unclustered
      ? `${page.unclustered} unknown faces are in no cluster: "Find clusters" groups them.`
      : "No clusters to name: every face has a name, or none was indexed yet." }));
  }
  showPager("clusters", page.offset, page.clusters.length, page.total);
}

function clusterCard(cluster, others) {
  const faces = el("ul", { class: "cluster-faces", hidden: true });
  const input = el("input", { name: "name", list: "names", required: true, maxlength: 128, autocomplete: "off" });
  const name = async (event) => {
    event.preventDefault();
    const done = await call(`/api/clusters/${enc(cluster.id)}/name`, { method: "POST", body: { name: input.value.trim() } });
    if (done) { say(`Named ${cluster.size} faces ${done.name}.`, "done"); await Promise.all([loadOverview(), loadPeople(), loadNames(), loadClusters()]); }
  };
  const merge = async () => {
    const into = await ask({ title: "Merge this cluster", text: "Its faces join the cluster you choose.",
                             choices: { label: "Into", options: others }, ok: "Merge" });
    if (!into) return;
    const done = await call(`/api/clusters/${enc(cluster.id)}/merge`, { method: "POST", body: { into } });
    if (done) { say(`Merged: the cluster holds ${done.size} faces now.`, "done"); await Promise.all([loadOverview(), loadClusters()]); }
  };
  const show = async (event) => {
    if (!faces.hidden) { faces.hidden = true; event.target.textContent = "Show faces"; return; }
    const detail = await call(`/api/clusters/${enc(cluster.id)}`);
    if (!detail) return;
    faces.replaceChildren(...detail.faces.map((f) => el("li", { class: "face-card" },
      thumb(f.thumbnail || f.thumb_url, `face from ${f.file || "an upload"}`),
      el("span", { class: "file", title: f.file || "", text: f.file || "(upload)" }),
      quality(f) && el("span", { class: "quality", text: quality(f) }),
      el("button", { type: "button", class: "secondary", text: "Take out", onclick: async () => {
        const after = await call(`/api/clusters/${enc(cluster.id)}/faces/${enc(f.id)}`, { method: "DELETE" });
        if (after) { say("Taken out of the cluster.", "done"); await Promise.all([loadOverview(), loadClusters()]); }
      } }))));
    faces.hidden = false;
    event.target.textContent = "Hide faces";
  };
  return el("li", { class: "cluster", "data-cluster": cluster.id },
    el("div", { class: "samples" }, ...cluster.samples.slice(0, 4).map((s) => thumb(s.thumbnail || s.thumb_url, "a face of the cluster"))),
    el("span", { text: `${cluster.size} faces` + (cluster.cohesion == null ? "" : ` · cohesion ${cluster.cohesion.toFixed(2)}`) }),
    el("form", { class: "name-cluster", onsubmit: name },
      el("label", {}, "Name ", input),
      el("button", { type: "submit", text: "Name" })),
    el("div", { class: "buttons" },
      others.length ? el("button", { type: "button", class: "secondary", text: "Merge…", onclick: merge }) : null,
      el("button", { type: "button", class: "secondary", text: "Show faces", "aria-expanded": "false",
                     onclick: (e) => show(e).then(() => e.target.setAttribute("aria-expanded", String(!faces.hidden))) })),
    faces);
}

function showJob(job) {
  clearTimeout(state.poll);
  const running = job && (job.status === "pending" || job.status === "processing");
  $("cluster-run").disabled = Boolean(running);
  $("cluster-job").textContent = !job ? "" : running ? `clustering: ${job.status}…` : `last run: ${job.status}`;
  if (running) state.poll = setTimeout(() => Promise.all([loadClusters(), loadOverview()]), 2000);
}

$("cluster-run").addEventListener("click", async () => {
  const job = await call("/api/clusters", { method: "POST" });
  if (job) showJob(job);
});
$("clusters-prev").addEventListener("click", () => { state.clusterOffset = Math.max(0, state.clusterOffset - PAGE); loadClusters(); });
$("clusters-next").addEventListener("click", () => { state.clusterOffset += PAGE; loadClusters(); });

// ------------------------------------------------------------------ where the page is
async function route() {
  const match = /^#person=(.+)$/.exec(location.hash);
  const name = match ? decodeURIComponent(match[1]) : null;
  const was = state.view;
  state.view = name;
  $("person").hidden = !name;
  $("people-list").hidden = Boolean(name);
  $("overview").hidden = Boolean(name);
  $("clusters").hidden = Boolean(name) || !state.clustersOn;
  if (name) await openPerson(name);
  else if (was) $("people-title").focus();
}

async function start() {
  if (key.missing()) { say("Enter an API key (search scope) to see the collection."); key.ask(); return; }
  [state.loaded] = await Promise.all([loadOverview(), loadPeople(), loadNames(), loadClusters()]);
  await route();
}

// A message stays until the next action (a click on a button or link, or a form sent).
const dismiss = (event) => { if (event.type === "submit" || event.target.closest("button, a")) say(""); };
document.addEventListener("click", dismiss, true);
document.addEventListener("submit", dismiss, true);
$("back").addEventListener("click", (event) => { event.preventDefault(); location.hash = ""; });
window.addEventListener("hashchange", route);
start();
