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

async function errorText(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return response.statusText;
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
    const response = await fetch("v1/transcribe", { method: "POST", body: form, headers: authHeaders() });
    if (!response.ok) {
      setStatus("error", `${filename}: ${response.status} ${await errorText(response)}`);
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
