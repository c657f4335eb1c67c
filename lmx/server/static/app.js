// Document chat for `lmx serve`: upload a document, then ask; answers stream from /v1/chat/completions (SSE).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, sessionLen: 0, document: null, history: [], busy: false };

function headers(json = true) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || JSON.stringify(body);
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

function setStatus(id, text, isError = false) {
  $(id).textContent = text;
  $(id).classList.toggle("error", isError);
}

function reserveTokens() {
  return Math.max(1, parseInt($("max-tokens").value, 10) || 256) + 128; // the answer, the question, the template
}

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers(false) });
  if (!response.ok) return setStatus("chat-status", await errorText(response), true);
  const card = (await response.json()).data[0];
  state.model = card.id;
  state.sessionLen = card.max_model_len;
  $("model-info").textContent = `${card.id} · session length ${card.max_model_len.toLocaleString()} tokens`;
}

async function upload() {
  const file = $("file").files[0];
  if (!file) return;
  state.document = null;
  setStatus("doc-status", `Reading ${file.name}…`);
  const form = new FormData();
  form.append("file", file);
  form.append("reserve", String(reserveTokens()));
  form.append("truncate", $("truncate").checked ? "true" : "false");
  const response = await fetch("/v1/documents", { method: "POST", body: form, headers: headers(false) });
  const meter = $("doc-meter");
  if (!response.ok) {
    meter.style.width = "100%";
    meter.classList.add("over");
    return setStatus("doc-status", await errorText(response), true);
  }
  const doc = await response.json();
  state.document = doc;
  state.history = [];
  meter.classList.remove("over");
  meter.style.width = Math.min(100, (100 * doc.kept_tokens) / doc.session_len) + "%";
  let text = `${doc.filename}: ${doc.num_tokens.toLocaleString()} tokens of ${doc.session_len.toLocaleString()}`;
  if (doc.truncated) text += ` — middle-truncated to ${doc.kept_tokens.toLocaleString()}`;
  setStatus("doc-status", text);
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "message " + role;
  div.textContent = text;
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function buildMessages(question) {
  // As InternLM's doc-chat demo: the document goes in front of the first question.
  const messages = state.history.slice();
  let content = question;
  if (state.document && messages.length === 0) {
    content = `${state.document.text}\n\n${question}`;
  }
  messages.push({ role: "user", content });
  return messages;
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question || state.busy) return;
  state.busy = true;
  $("ask").disabled = true;
  addMessage("user", question);
  const answerDiv = addMessage("assistant", "");
  const messages = buildMessages(question);
  setStatus("chat-status", "Reading the document and thinking…");
  const body = {
    model: state.model, messages, stream: true,
    temperature: parseFloat($("temperature").value),
    repetition_penalty: parseFloat($("repetition-penalty").value),
    max_tokens: parseInt($("max-tokens").value, 10),
  };
  let answer = "";
  try {
    const response = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!response.ok) throw new Error(await errorText(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const choice = chunk.choices[0];
        if (choice && choice.delta && choice.delta.content) {
          answer += choice.delta.content;
          answerDiv.textContent = answer;
          answerDiv.scrollIntoView({ block: "end" });
        }
      }
    }
    messages.push({ role: "assistant", content: answer });
    state.history = messages;
    $("question").value = "";
    setStatus("chat-status", "Done.");
  } catch (e) {
    answerDiv.remove();
    setStatus("chat-status", String(e.message || e), true);
  } finally {
    state.busy = false;
    $("ask").disabled = false;
  }
}

$("file").addEventListener("change", upload);
$("truncate").addEventListener("change", upload);
$("ask-form").addEventListener("submit", ask);
$("question").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) ask(e);
});
$("clear").addEventListener("click", () => {
  state.history = [];
  $("messages").textContent = "";
  setStatus("chat-status", "");
});
$("api-key").addEventListener("change", loadModel);
loadModel();
