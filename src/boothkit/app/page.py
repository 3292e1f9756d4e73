"""The page served at `/`: plain HTML + JS, a client of the JSON API (no build step, no external assets)."""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>boothkit</title>
<style>
  :root { --fg:#1d1d1f; --mut:#6b6b70; --line:#dcdce0; --acc:#2f5fd0; --bad:#b3261e; --ok:#1e7b34; }
  * { box-sizing: border-box; }
  body { font: 14px/1.45 system-ui, sans-serif; color: var(--fg); margin: 0; background: #f6f6f8; }
  header { padding: 12px 20px; background: #fff; border-bottom: 1px solid var(--line); display:flex; gap:16px;
           align-items: baseline; }
  header h1 { font-size: 18px; margin: 0; } header span { color: var(--mut); }
  main { display: grid; grid-template-columns: minmax(300px, 1fr) minmax(360px, 1.4fr); gap: 16px; padding: 16px; }
  section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px; }
  h2 { font-size: 15px; margin: 0 0 10px; }
  label { display: block; margin: 8px 0 2px; color: var(--mut); font-size: 12px; }
  input[type=text], input[type=number], textarea, select { width: 100%; padding: 6px 8px; border: 1px solid var(--line);
           border-radius: 5px; font: inherit; }
  textarea { min-height: 56px; resize: vertical; }
  .row { display: flex; gap: 8px; } .row > div { flex: 1; }
  button { margin-top: 10px; padding: 7px 14px; border: 0; border-radius: 5px; background: var(--acc); color: #fff;
           font: inherit; cursor: pointer; }
  button.small { margin: 0 0 0 4px; padding: 3px 8px; font-size: 12px; background: #e8e8ee; color: var(--fg); }
  button:disabled { opacity: .5; cursor: default; }
  .thumbs { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 6px; }
  .thumbs img { width: 64px; height: 64px; object-fit: cover; border: 1px solid var(--line); border-radius: 4px;
                image-rendering: pixelated; }
  .msg { margin-top: 8px; min-height: 1.2em; } .msg.bad { color: var(--bad); } .msg.ok { color: var(--ok); }
  .msg.warn { color: #9a6700; white-space: pre-line; }
  progress { width: 100%; height: 12px; }
  table { width: 100%; border-collapse: collapse; } td, th { text-align: left; padding: 4px; border-bottom: 1px solid
          var(--line); font-size: 13px; } th { color: var(--mut); font-weight: 500; }
  .results { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 10px; }
  figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px; background: #fafafa; }
  figure img { width: 160px; height: 160px; image-rendering: pixelated; display: block; }
  figcaption { font-size: 11px; color: var(--mut); max-width: 160px; word-wrap: break-word; }
  code { background: #eef; padding: 0 3px; border-radius: 3px; }
</style>
</head>
<body>
<header><h1>boothkit</h1><span id="server-info">connecting…</span></header>
<main>
<div>
  <section>
    <h2>1. Make a concept from photos</h2>
    <label for="photos">Reference photos (1-10: PNG, JPEG or WebP)</label>
    <input id="photos" data-testid="photos" type="file" accept="image/png,image/jpeg,image/webp" multiple>
    <div class="thumbs" id="previews" data-testid="previews"></div>
    <div class="row">
      <div><label for="concept-name">Name (a-z 0-9 _ -)</label>
        <input id="concept-name" data-testid="concept-name" type="text" placeholder="bruno"></div>
      <div><label for="class-noun">Class noun</label>
        <input id="class-noun" data-testid="class-noun" type="text" placeholder="dog"></div>
    </div>
    <div class="row">
      <div><label for="method">Method</label><select id="method" data-testid="method"></select></div>
      <div><label for="tune-steps">Training steps (empty: method's default)</label>
        <input id="tune-steps" data-testid="tune-steps" type="number" min="1"></div>
    </div>
    <div class="row">
      <div><label for="identifier">Token (empty: method's default; use different ones to combine concepts)</label>
        <input id="identifier" data-testid="identifier" type="text" placeholder="sks"></div>
      <div><label for="method-config">Method settings (optional JSON)</label>
        <input id="method-config" data-testid="method-config" type="text" placeholder='{"validation_images": 0}'></div>
    </div>
    <button id="create" data-testid="create">Make concept</button>
    <div id="job" data-testid="job" hidden>
      <div id="job-text" data-testid="job-text"></div>
      <progress id="job-progress" data-testid="job-progress" max="1" value="0"></progress>
    </div>
    <div class="msg" id="create-msg" data-testid="create-msg"></div>
    <div class="msg warn" id="create-warnings" data-testid="create-warnings"></div>
  </section>
  <section style="margin-top:16px">
    <h2>Concept library</h2>
    <table><thead><tr><th>Name</th><th>Class</th><th>Method</th><th></th></tr></thead>
      <tbody id="library" data-testid="library"></tbody></table>
    <div class="msg" id="library-msg" data-testid="library-msg"></div>
    <h2 style="margin-top:14px">Jobs</h2>
    <table><thead><tr><th>Concept</th><th>Method</th><th>Status</th><th>Progress</th></tr></thead>
      <tbody id="jobs" data-testid="jobs"></tbody></table>
  </section>
</div>
<div>
  <section>
    <h2>2. Generate</h2>
    <label for="prompt">Prompt — write <code>&lt;name&gt;</code> to use a concept (several are fine;
      <code>&lt;name:0.7&gt;</code> weakens a LoRA or E4T concept)</label>
    <textarea id="prompt" data-testid="prompt">a photo of a dog</textarea>
    <label for="negative">Negative prompt</label>
    <input id="negative" data-testid="negative" type="text">
    <div class="row">
      <div><label for="n">Images</label><input id="n" data-testid="n" type="number" min="1" value="4"></div>
      <div><label for="seed">Seed (empty: random)</label><input id="seed" data-testid="seed" type="number" min="0"
        value="0"></div>
      <div><label for="steps">Steps</label><input id="steps" data-testid="steps" type="number" min="1" value="20"></div>
      <div><label for="guidance">Guidance</label><input id="guidance" data-testid="guidance" type="number" step="0.5"
        value="5"></div>
      <div><label for="scheduler">Sampler</label><select id="scheduler" data-testid="scheduler">
        <option value="">model's own</option></select></div>
      <div><label for="size">Size (empty: native)</label><input id="size" data-testid="size" type="number" step="8"
        min="8"></div>
    </div>
    <button id="generate" data-testid="generate">Generate</button>
    <div class="msg" id="gen-msg" data-testid="gen-msg"></div>
    <div class="results" id="results" data-testid="results"></div>
  </section>
</div>
</main>
<script>
const $ = (id) => document.getElementById(id);
const ENT = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"};
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ENT[c]);
function say(id, text, kind) { const el = $(id); el.textContent = text || ""; el.className = "msg " + (kind || ""); }

async function api(path, opts = {}) {
  const r = await fetch(path, opts);
  if (r.status === 204) return null;
  const body = (r.headers.get("content-type") || "").includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error((body && body.detail) || (r.status + " " + r.statusText));
  return body;
}

async function loadInfo() {
  const [h, m] = await Promise.all([api("/api/health"), api("/api/methods")]);
  $("server-info").textContent = "model " + h.model + " (" + h.family + ") · methods: " + (m.methods.join(", ") || "none installed");
  for (const name of h.schedulers) {
    const o = document.createElement("option"); o.value = o.textContent = name; $("scheduler").appendChild(o);
  }
  const sel = $("method"); sel.innerHTML = "";
  for (const name of m.methods) {
    const o = document.createElement("option"); o.value = name;
    o.textContent = name + (name === m.default ? " (default)" : ""); sel.appendChild(o);
  }
  if (!m.methods.length) {
    $("create").disabled = true;
    say("create-msg", "No personalisation method is installed on this server.", "bad");
  }
}

$("photos").addEventListener("change", () => {
  const box = $("previews"); box.innerHTML = "";
  for (const f of $("photos").files) {
    const img = document.createElement("img"); img.src = URL.createObjectURL(f); img.title = f.name;
    img.onload = () => URL.revokeObjectURL(img.src); box.appendChild(img);
  }
});

$("create").addEventListener("click", async () => {
  const files = $("photos").files;
  const fd = new FormData();
  for (const f of files) fd.append("files", f, f.name);
  fd.append("name", $("concept-name").value.trim());
  fd.append("class_noun", $("class-noun").value.trim());
  if ($("method").value) fd.append("method", $("method").value);
  if ($("tune-steps").value) fd.append("steps", $("tune-steps").value);
  if ($("method-config").value.trim()) fd.append("config", $("method-config").value.trim());
  if ($("identifier").value.trim()) fd.append("identifier", $("identifier").value.trim());
  $("create").disabled = true; say("create-msg", "uploading…"); $("create-warnings").textContent = "";
  try {
    const r = await api("/api/concepts", {method: "POST", body: fd});
    say("create-msg", "job " + r.job.id + " started for <" + r.concept + ">");
    $("create-warnings").textContent = (r.warnings || []).map((w) => "warning: " + w).join("\n");
    await watchJob(r.job.id);
  } catch (e) { say("create-msg", e.message, "bad"); }
  finally { $("create").disabled = false; }
});

async function watchJob(id) {
  $("job").hidden = false;
  for (;;) {
    const j = await api("/api/jobs/" + id);
    $("job-progress").value = j.progress.fraction;
    $("job-text").textContent = j.concept + " (" + j.method + "): " + j.status +
      (j.progress.total ? " · step " + j.progress.step + "/" + j.progress.total : "");
    if (j.status === "done") { say("create-msg", "concept <" + j.concept + "> is ready: use it in a prompt", "ok");
      await Promise.all([loadLibrary(), loadJobs()]); return; }
    if (j.status === "failed") { say("create-msg", "job failed: " + j.error, "bad"); await loadJobs(); return; }
    await new Promise((res) => setTimeout(res, 500));
  }
}

async function loadLibrary() {
  const rows = await api("/api/concepts");
  const tb = $("library"); tb.innerHTML = "";
  if (!rows.length) tb.innerHTML = '<tr><td colspan="4">no concepts yet</td></tr>';
  for (const c of rows) {
    const tr = document.createElement("tr"); tr.dataset.concept = c.name;
    tr.innerHTML = "<td><code>&lt;" + esc(c.name) + "&gt;</code></td><td>" + esc(c.class_noun) + "</td><td>" +
      esc(c.method) + "</td><td style='white-space:nowrap'>" +
      "<button class='small' data-act='use'>use</button><button class='small' data-act='rename'>rename</button>" +
      "<button class='small' data-act='delete'>delete</button><a class='small' href='" + esc(c.artifact_url) +
      "' download>zip</a>" + (c.webui_url ? "<a class='small' data-act='webui' title='LoRA / embedding files for " +
      "AUTOMATIC1111 and ComfyUI' href='" + esc(c.webui_url) + "' download>webui</a>" : "") +
      (c.curves_url ? "<a class='small' data-act='curves' title='training curves: loss and learning rate' " +
      "target='_blank' href='" + esc(c.curves_url) + "'>curves</a>" : "") + "</td>";
    tr.querySelector("[data-act=use]").onclick = () => {
      const p = $("prompt"); if (!p.value.includes(c.prompt_token)) p.value = p.value.trim() + " " + c.prompt_token; };
    tr.querySelector("[data-act=rename]").onclick = async () => {
      const nn = window.prompt("New name for <" + c.name + ">", c.name); if (!nn || nn === c.name) return;
      try { await api("/api/concepts/" + encodeURIComponent(c.name), {method: "PATCH",
              headers: {"content-type": "application/json"}, body: JSON.stringify({name: nn})});
            say("library-msg", "renamed to <" + nn + ">", "ok"); } catch (e) { say("library-msg", e.message, "bad"); }
      loadLibrary(); };
    tr.querySelector("[data-act=delete]").onclick = async () => {
      if (!window.confirm("Delete <" + c.name + "> and its files?")) return;
      try { await api("/api/concepts/" + encodeURIComponent(c.name), {method: "DELETE"});
            say("library-msg", "deleted <" + c.name + ">", "ok"); } catch (e) { say("library-msg", e.message, "bad"); }
      loadLibrary(); };
    tb.appendChild(tr);
  }
}

async function loadJobs() {
  const rows = await api("/api/jobs?limit=10");
  const tb = $("jobs"); tb.innerHTML = "";
  for (const j of rows) {
    const tr = document.createElement("tr");
    tr.innerHTML = "<td>" + esc(j.concept) + "</td><td>" + esc(j.method) + "</td><td title='" +
      esc(j.error || j.note || "") + "'>" + esc(j.status) + (j.error || j.note ? ": " + esc(j.error || j.note) : "") +
      "</td><td>" +
      (j.progress.total ? j.progress.step + "/" + j.progress.total : "") + "</td>";
    tb.appendChild(tr);
  }
}

$("generate").addEventListener("click", async () => {
  const num = (id) => $(id).value === "" ? null : Number($(id).value);
  const size = num("size");
  const body = {prompt: $("prompt").value, negative_prompt: $("negative").value || null, n: num("n") ?? 1,
                seed: num("seed"), steps: num("steps") ?? 20, guidance: num("guidance") ?? 5,
                scheduler: $("scheduler").value || null, width: size, height: size};
  $("generate").disabled = true; say("gen-msg", "generating…");
  try {
    const r = await api("/api/generate", {method: "POST", headers: {"content-type": "application/json"},
                                          body: JSON.stringify(body)});
    const box = $("results");
    for (const im of r.images.reverse()) {
      const fig = document.createElement("figure"); fig.dataset.testid = "result";
      fig.innerHTML = "<a href='" + im.url + "' download='boothkit-" + im.seed + ".png'><img alt='" + esc(im.prompt) +
        "' src='" + im.url + "'></a><figcaption>seed " + im.seed + " · " + im.steps + " steps · guidance " +
        im.guidance + (im.scheduler ? " · " + esc(im.scheduler) : "") + " · " + im.width + "×" + im.height +
        (im.concepts.length ? " · " + esc(im.concepts.join(", ")) : "") +
        "<br>" + esc(im.prompt) + "</figcaption>";
      box.prepend(fig);
    }
    say("gen-msg", r.images.length + " image(s), base seed " + r.seed, "ok");
  } catch (e) { say("gen-msg", e.message, "bad"); }
  finally { $("generate").disabled = false; }
});

loadInfo().catch((e) => say("create-msg", e.message, "bad"));
loadLibrary().catch((e) => say("library-msg", e.message, "bad"));
loadJobs().catch(() => {});
setInterval(() => loadJobs().catch(() => {}), 3000);
</script>
</body>
</html>
"""
