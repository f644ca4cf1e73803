// AnimeLens video timeline page: POSTs a video to /api/v1/videos/recognise and draws which
// character is on screen when (a coloured bar and a table), with CSV and WebVTT downloads.
"use strict";

const $ = (id) => document.getElementById(id);
const clock = (t) => `${Math.floor(t / 60)}:${(t % 60).toFixed(1).padStart(4, "0")}`;
const colour = (name) => {
  if (!name) return "#9a98a8";
  let h = 0;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h} 55% 45%)`;
};

async function recognise(file, format) {
  const res = await fetch(`/api/v1/videos/recognise?format=${format}&filename=${encodeURIComponent(file.name)}`, {
    method: "POST", headers: { "content-type": file.type || "application/octet-stream" }, body: file,
  });
  if (!res.ok) {
    const body = await res.json().catch(() => null);
    throw new Error(body && body.error ? body.error : `HTTP ${res.status}`);
  }
  return format === "json" ? res.json() : res.text();
}

function draw(r) {
  const total = r.duration || (r.segments.length ? r.segments[r.segments.length - 1].to : 1);
  $("timeline").replaceChildren(...r.segments.map((s) => {
    const d = document.createElement("div");
    d.style.flex = String(Math.max(s.to - s.from, 0.01) / total);
    d.style.background = colour(s.character);
    d.textContent = s.character || "unknown";
    d.title = `${clock(s.from)}–${clock(s.to)} ${s.character || "unknown"}`;
    return d;
  }));
  $("segments").replaceChildren(...r.segments.map((s) => {
    const tr = document.createElement("tr");
    for (const text of [clock(s.from), clock(s.to), s.character || "unknown", s.confidence.toFixed(2)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    return tr;
  }));
  $("video-status").textContent =
    `${r.segments.length} segments · ${r.frames} frames decoded, ${r.scenes} scenes recognised at ${r.frames_per_sec.toFixed(0)} frames/s`;
}

function link(text, name, type) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  a.textContent = name;
  return a;
}

$("video-input").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file) return;
  $("video-error").hidden = true;
  $("video-status").textContent = "Recognising…";
  try {
    const r = await recognise(file, "json");
    draw(r);
    const [csv, vtt] = await Promise.all([recognise(file, "csv"), recognise(file, "vtt")]);
    $("video-links").replaceChildren("Download: ", link(csv, "timeline.csv", "text/csv"), " · ",
      link(vtt, "timeline.vtt", "text/vtt"));
  } catch (err) {
    $("video-status").textContent = "";
    $("video-error").textContent = String(err.message || err);
    $("video-error").hidden = false;
  }
});
