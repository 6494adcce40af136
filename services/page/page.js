// The service's page: upload a file or record from the microphone, show the N-best.
// Everything the server sends is shown with textContent (never parsed as HTML).
"use strict";

const $ = (id) => document.getElementById(id);

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function setStatus(state, message) {
  $("status").dataset.state = state;
  $("status").textContent = message;
}

// The one-line `detail` of our errors; Ray Serve's own refusals (503 past its proxy's queue)
// are plain text, shown as their first line.
async function errorText(response) {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return text.split("\n")[0] || response.statusText;
  }
}

// A 503 means "busy, come back": the upload is sent again this many more times, each after at
// least the server's Retry-After and an exponential backoff with jitter (so pages refused
// together do not all return together), at most 30 s.
const RETRIES = 4;

function retryDelay(response, attempt) {
  const hint = Number(response.headers.get("Retry-After"));
  const backoff = 0.5 * 2 ** attempt * (0.5 + Math.random() / 2);
  return Math.min(30, Math.max(Number.isFinite(hint) ? hint : 0, backoff));
}

async function postWithRetries(form, filename) {
  for (let attempt = 0; ; attempt++) {
    const response = await fetch("v1/transcribe", { method: "POST", body: form, headers: authHeaders() });
    if (response.status !== 503 || attempt === RETRIES) return response;
    const wait = retryDelay(response, attempt);
    setStatus("retrying", `${filename}: the service is busy; trying again in ${wait.toFixed(1)} s ` +
              `(attempt ${attempt + 2} of ${RETRIES + 1})\u2026`);
    await new Promise((resolve) => setTimeout(resolve, wait * 1000));
  }
}

async function loadModel() {
  const response = await fetch("v1/model", { headers: authHeaders() });
  if (!response.ok) {
    $("model").textContent = response.status === 401
      ? "This service needs a token: enter it under Options."
      : `model information unavailable: ${await errorText(response)}`;
    return;
  }
  const info = await response.json();
  $("model").textContent =
    `${info.name} (${info.form}, ${info.params.toLocaleString("en")} parameters, id ${info.model})`;
  $("model").dataset.name = info.name;
}

function cell(value, className) {
  const td = document.createElement("td");
  td.textContent = String(value);
  if (className) td.className = className;
  return td;
}

function show(answer) {
  $("text").textContent = answer.text || "(nothing recognised)";
  const rows = answer.nbest.map((hyp, i) => {
    const tr = document.createElement("tr");
    tr.dataset.logp = String(hyp.logp);
    tr.dataset.tokens = JSON.stringify(hyp.tokens);
    tr.append(cell(i + 1), cell(hyp.text, "hyp"), cell(hyp.logp.toFixed(3), "logp"), cell(hyp.tokens.length));
    return tr;
  });
  $("nbest-table").tBodies[0].replaceChildren(...rows);
  $("stats").textContent =
    `${answer.duration_s.toFixed(2)} s of audio, real-time factor ${answer.rtf.toFixed(4)}, model ${answer.model}`;
  $("result").hidden = false;
}

async function transcribe(blob, filename) {
  const form = new FormData();
  form.append("file", blob, filename);
  for (const name of ["beam", "nbest", "ctc_weight"]) form.append(name, $(name).value);
  setStatus("busy", `transcribing ${filename}\u2026`);
  $("result").hidden = true;
  try {
    const response = await postWithRetries(form, filename);
    if (!response.ok) {
      const gaveUp = response.status === 503 ? ` (still busy after ${RETRIES + 1} attempts: try later)` : "";
      setStatus("error", `${filename}: ${response.status} ${await errorText(response)}${gaveUp}`);
      return;
    }
    show(await response.json());
    setStatus("done", filename);
  } catch (error) {
    setStatus("error", `${filename}: ${error.message}`);
  }
}

let recorder = null;

async function toggleRecording() {
  if (recorder) {
    recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    setStatus("error", "recording needs a browser with MediaRecorder, on https:// or localhost");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    setStatus("error", `microphone: ${error.message}`);
    return;
  }
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (event) => chunks.push(event.data);
  recorder.onstop = () => {
    stream.getTracks().forEach((track) => track.stop());
    const type = recorder.mimeType || "audio/webm";   // webm/opus (Chromium) or ogg/opus (Firefox)
    recorder = null;
    $("record").textContent = "\u25CF Record";
    transcribe(new Blob(chunks, { type }), `recording.${type.includes("ogg") ? "ogg" : "webm"}`);
  };
  recorder.start();
  $("record").textContent = "\u25A0 Stop";
  setStatus("recording", "recording\u2026 press Stop to transcribe");
}

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) transcribe(file, file.name);
});
$("record").addEventListener("click", toggleRecording);
$("token").addEventListener("change", loadModel);
loadModel();
