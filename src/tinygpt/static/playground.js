// tinygpt playground: streams /v1/completions (server-sent events) into the page.
// Stop aborts the request; the server sees the disconnect and drops the generation.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  form: $("form"), prompt: $("prompt"), temperature: $("temperature"), topP: $("top-p"),
  maxTokens: $("max-tokens"), seed: $("seed"), generate: $("generate"), stop: $("stop"),
  story: $("story"), storyPrompt: $("story-prompt"), output: $("output"), status: $("status"), speed: $("speed"),
};
let model = null;       // the id the server answers to
let controller = null;  // aborts the running request

function setStatus(text, isError = false) {
  els.status.textContent = text;
  els.status.classList.toggle("error", isError);
}

function formatCount(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(2) + "B";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e3) return Math.round(n / 1e3) + "k";
  return String(n);
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models");
    const card = (await response.json()).data[0];
    const info = card.tinygpt;
    model = card.id;
    $("model-name").textContent = card.id;
    $("model-size").textContent = `${formatCount(info.parameters)} parameters (${info.family})`;
    $("model-tokenizer").textContent = `${info.tokenizer} tokenizer, ${info.vocab_size.toLocaleString()} tokens`;
    $("model-context").textContent = `context ${info.context_length}`;
    els.maxTokens.max = info.max_tokens;
    if (Number(els.maxTokens.value) > info.max_tokens) els.maxTokens.value = info.max_tokens;
  } catch (err) {
    setStatus(`cannot reach the server: ${err.message}`, true);
  }
}

function showSpeed(tokens, seconds) {
  if (tokens > 0 && seconds > 0) els.speed.textContent = `${(tokens / seconds).toFixed(1)} tok/s`;
}

function setRunning(running) {
  els.generate.disabled = running;
  els.stop.disabled = !running;
  els.story.classList.toggle("running", running);
}

// Split a growing buffer of server-sent events into complete `data:` payloads.
function takeEvents(buffer) {
  const events = [];
  let end;
  while ((end = buffer.indexOf("\n\n")) >= 0) {
    const block = buffer.slice(0, end);
    buffer = buffer.slice(end + 2);
    const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
    if (data) events.push(data);
  }
  return [events, buffer];
}

async function generate() {
  const seed = els.seed.value.trim();
  const body = {
    model,
    prompt: els.prompt.value,
    max_tokens: Number(els.maxTokens.value),
    temperature: Number(els.temperature.value),
    top_p: Number(els.topP.value),
    stream: true,
    stream_options: { include_usage: true },
  };
  if (seed !== "") body.seed = Number(seed);

  els.storyPrompt.textContent = body.prompt;
  els.output.textContent = "";
  els.story.classList.remove("empty");
  setStatus("waiting for the model…");
  setRunning(true);
  controller = new AbortController();

  const started = performance.now();
  let first = null, pieces = 0, finish = null;
  try {
    const response = await fetch("/v1/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({ error: { message: response.statusText } }));
      throw new Error(error.error.message);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      let events;
      [events, buffer] = takeEvents(buffer + decoder.decode(value, { stream: true }));
      for (const data of events) {
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) {  // exact count; the rate runs from the first token, so it counts the others
          if (first !== null) showSpeed(chunk.usage.completion_tokens - 1, (performance.now() - first) / 1000);
          continue;
        }
        const choice = chunk.choices[0];
        if (choice.text) {
          if (first === null) {
            first = performance.now();
            setStatus(`generating… first token after ${Math.round(first - started)} ms`);
          }
          els.output.append(choice.text);
          pieces += 1;
          if (pieces % 8 === 0) showSpeed(pieces - 1, (performance.now() - first) / 1000);  // a piece is about a token
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    setStatus(finish === "length" ? "done: reached max tokens" : "done: the story ended");
  } catch (err) {
    if (err.name === "AbortError") {
      if (first !== null) showSpeed(pieces - 1, (performance.now() - first) / 1000);
      setStatus("stopped");
    } else {
      setStatus(err.message, true);
    }
  } finally {
    controller = null;
    setRunning(false);
    $("inspect-story").hidden = !els.output.textContent;  // the Inspect view takes it from here
  }
}

function syncOutputs() {
  $("temperature-value").textContent = Number(els.temperature.value).toFixed(2);
  $("top-p-value").textContent = Number(els.topP.value).toFixed(2);
}

els.form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (!controller) generate();
});
els.stop.addEventListener("click", () => controller && controller.abort());
els.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) els.form.requestSubmit();
});
els.temperature.addEventListener("input", syncOutputs);
els.topP.addEventListener("input", syncOutputs);
els.story.classList.add("empty");
syncOutputs();
loadModel();
