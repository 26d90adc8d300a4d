"use strict";
// The chat page: send the instruction and settings, show the answer as its pieces arrive (NDJSON events), rate it.
const ask = document.getElementById("ask");
const generateButton = document.getElementById("generate");
const answer = document.getElementById("answer");
const status = document.getElementById("status");
const rateForm = document.getElementById("rate");
const rateStatus = document.getElementById("rate-status");
let answerId = null;

function setStatus(text, state) {
  status.textContent = text;
  status.dataset.state = state;
}

function handle(event) {
  if (event.event === "start") {
    answerId = event.answer_id;
    setStatus(`[${event.answer_id}] generating...`, "streaming");
  } else if (event.event === "text") {
    answer.textContent += event.text;
  } else if (event.event === "done") {
    answer.textContent = event.text;
    const empty = event.text ? "" : " (an empty answer: the model ended at once)";
    setStatus(`[${event.answer_id}] ${event.new_tokens} tokens in ${event.seconds.toFixed(1)} s${empty}`, "done");
    rateForm.reset();
    rateStatus.textContent = "";
    rateForm.hidden = false;
  } else if (event.event === "error") {
    setStatus(`error: ${event.message}`, "error");
  }
}

async function errorMessage(response) {
  try {
    return (await response.json()).error;
  } catch (ignored) {
    return `${response.status} ${response.statusText}`;
  }
}

ask.addEventListener("submit", async (submitEvent) => {
  submitEvent.preventDefault();
  const settings = {};
  for (const control of ask.querySelectorAll(".settings input, .settings select")) {
    settings[control.name] = control.value;
  }
  const body = {
    instruction: document.getElementById("instruction").value,
    input: document.getElementById("input").value,
    settings: settings,
  };
  answer.textContent = "";
  rateForm.hidden = true;
  answerId = null;
  generateButton.disabled = true;
  setStatus("waiting for the model...", "waiting");
  try {
    const response = await fetch("/chat/generate", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    });
    if (!response.ok) {
      setStatus(`error: ${await errorMessage(response)}`, "error");
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        if (line.trim()) handle(JSON.parse(line));
      }
    }
  } catch (error) {
    setStatus(`error: ${error}`, "error");
  } finally {
    generateButton.disabled = false;
  }
});

rateForm.addEventListener("submit", async (submitEvent) => {
  submitEvent.preventDefault();
  const chosen = rateForm.querySelector('input[name="rating"]:checked');
  if (!chosen) {
    rateStatus.textContent = "choose a rating from 1 to 5";
    return;
  }
  const body = {
    answer_id: answerId,
    rating: Number(chosen.value),
    comment: document.getElementById("comment").value,
    annotator: document.getElementById("annotator").value,
  };
  const response = await fetch("/chat/rate", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  });
  if (response.ok) {
    const saved = await response.json();
    rateStatus.textContent = `saved: [${saved.id}] ${saved.rating}/5`;
    rateStatus.dataset.state = "saved";
  } else {
    rateStatus.textContent = `error: ${await errorMessage(response)}`;
    rateStatus.dataset.state = "error";
  }
});
