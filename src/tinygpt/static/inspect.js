// tinygpt playground, Inspect view: a text's tokens coloured by surprisal (POST /v1/inspect),
// the alternatives on hover, and on click the attention from a token and the logit lens there
// (a second POST with {"position": i}). Also the run's samples timeline (GET /v1/samples).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const els = {
    tabGenerate: $("tab-generate"), tabInspect: $("tab-inspect"),
    generateView: $("generate-view"), inspectView: $("inspect-view"),
    form: $("inspect-form"), text: $("inspect-text"), run: $("inspect-run"), fromStory: $("inspect-story"),
    summary: $("inspect-summary"), count: $("token-count"), bpb: $("inspect-bpb"), windows: $("inspect-windows"),
    tokens: $("tokens"), legend: $("legend"), status: $("inspect-status"), tip: $("token-tip"),
    detail: $("token-detail"), card: $("detail-card"), detailToken: $("detail-token"),
    grid: $("attention-grid"), attentionNote: $("attention-note"), lens: $("lens-table"), nearest: $("nearest"),
    timeline: $("timeline"), timelineNote: $("timeline-note"),
  };
  let answer = null;      // the first answer: tokens with surprisal, top-5, lens ranks
  let sentText = "";      // the text that answer is about (the position requests send it again)
  let selected = null;    // index of the clicked token
  let detail = null;      // the answer about it
  let painted = null;     // [layer, head] whose attention paints the text
  let pinned = null;      // the head cell clicked: it paints the text until clicked again

  // ------------------------------------------------------------ small helpers

  function setStatus(text, isError = false) {
    els.status.textContent = text;
    els.status.classList.toggle("error", isError);
  }

  function pieceText(piece) {  // a token as it reads; bytes of a partial character as ‹e2 80›
    return piece.text !== undefined ? piece.text : `‹${piece.bytes}›`;
  }

  function label(piece) {  // a token with its spaces and newlines visible
    return pieceText(piece).replace(/ /g, "␣").replace(/\n/g, "⏎").replace(/\t/g, "⇥") || "∅";
  }

  function percent(p) {
    if (p >= 0.995) return "100%";
    if (p >= 0.01) return `${(p * 100).toFixed(p >= 0.1 ? 0 : 1)}%`;
    return p >= 1e-4 ? `${(p * 100).toFixed(2)}%` : `${p.toExponential(0)}`;
  }

  // Surprisal in bits -> a background: none under 1 bit (p > 1/2), then yellow to red by 14 bits.
  function surprisalColour(bits) {
    if (bits < 1) return "transparent";
    const t = Math.min((bits - 1) / 13, 1);
    return `hsla(${Math.round(50 - 50 * t)}, 95%, 55%, ${(0.18 + 0.62 * t).toFixed(2)})`;
  }

  function node(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  async function post(body) {
    const response = await fetch("/v1/inspect", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const data = await response.json().catch(() => ({ error: { message: response.statusText } }));
    if (!response.ok) throw new Error(data.error ? data.error.message : response.statusText);
    return data;
  }

  // ------------------------------------------------------------ tabs

  function showView(name) {
    const inspect = name === "inspect";
    els.generateView.hidden = inspect;
    els.inspectView.hidden = !inspect;
    els.tabGenerate.setAttribute("aria-selected", String(!inspect));
    els.tabInspect.setAttribute("aria-selected", String(inspect));
    if (inspect) loadTimeline();
  }

  // ------------------------------------------------------------ the first answer

  async function inspect() {
    const text = els.text.value;
    els.run.disabled = true;
    setStatus("reading…");
    try {
      answer = await post({ text });
      sentText = text;
      selected = detail = painted = pinned = null;
      els.detail.hidden = true;
      renderTokens();
      setStatus("");
    } catch (err) {
      setStatus(err.message, true);
    } finally {
      els.run.disabled = false;
    }
  }

  function renderTokens() {
    els.tokens.replaceChildren();
    els.tokens.classList.remove("empty");
    const start = node("span", "token context", "start");
    start.title = "start of text: the end-of-text token the text is read after";
    start.dataset.i = "-1";
    els.tokens.append(start);
    answer.tokens.forEach((token, i) => {
      const span = node("span", token.text === undefined ? "token bytes" : "token", pieceText(token));
      span.dataset.i = String(i);
      span.tabIndex = 0;
      span.style.background = surprisalColour(token.bits);
      els.tokens.append(span);
    });
    const n = answer.n_tokens;
    els.count.textContent = `${n.toLocaleString()} token${n === 1 ? "" : "s"}`;
    els.bpb.textContent = `${answer.bpb.toFixed(3)} bits per byte (${(answer.bits / n).toFixed(2)} bits per token)`;
    els.windows.textContent = answer.windows > 1 ? `${answer.windows} windows of ${answer.block_size}: each starts afresh` : "";
    els.summary.hidden = false;
    els.legend.hidden = false;
  }

  function tokenCard(i) {  // what the hover tip and the detail panel show about one token
    const token = answer.tokens[i];
    const card = document.createDocumentFragment();
    const head = node("p", "card-head");
    head.append(node("code", "piece", label(token)), node("span", "figures",
      ` p ${percent(token.prob)} · ${token.bits.toFixed(2)} bits · rank ${token.rank.toLocaleString()} · entropy ${token.entropy.toFixed(2)} bits`));
    card.append(head, node("p", "card-label", "the model expected:"));
    const list = node("ol", "alternatives");
    for (const alt of token.top) {
      const item = node("li", alt.id === token.id ? "came" : "");
      const bar = node("span", "bar");
      bar.style.width = `${Math.max(2, Math.round(alt.prob * 100))}%`;
      item.append(node("code", "piece", label(alt)), bar, node("span", "prob", percent(alt.prob)));
      list.append(item);
    }
    card.append(list);
    if (token.lens) {
      const ranks = token.lens.map(([rank], layer) => `${layer}: ${rank.toLocaleString()}`).join(" → ");
      card.append(node("p", "card-lens", `rank of ${label(token)} after each layer: ${ranks}`));
    }
    return card;
  }

  // ------------------------------------------------------------ hover

  function showTip(span) {
    const i = Number(span.dataset.i);
    if (!answer || i < 0) return;
    els.tip.replaceChildren(tokenCard(i));
    els.tip.hidden = false;
    const box = span.getBoundingClientRect();
    const width = els.tip.offsetWidth;
    const left = Math.min(Math.max(8, box.left + window.scrollX), window.scrollX + document.documentElement.clientWidth - width - 8);
    els.tip.style.left = `${left}px`;
    els.tip.style.top = `${box.bottom + window.scrollY + 6}px`;
  }

  function hideTip() {
    els.tip.hidden = true;
  }

  // ------------------------------------------------------------ click: attention and lens at one token

  async function selectToken(i) {
    if (!answer || i < 0) return;
    hideTip();
    selected = i;
    for (const span of els.tokens.querySelectorAll(".token.selected")) span.classList.remove("selected");
    els.tokens.querySelector(`[data-i="${i}"]`).classList.add("selected");
    setStatus(`looking at token ${i}…`);
    try {
      const found = await post({ text: sentText, position: i });
      if (selected !== i) return;  // another token was clicked meanwhile
      detail = found;
      renderDetail();
      setStatus("");
    } catch (err) {
      setStatus(err.message, true);
    }
  }

  function keyLabel(j) {  // key j of the detail's attention: a sequence position
    const p = detail.key_start + j;
    return p === 0 ? "start" : label(detail.keys[j]);
  }

  function renderDetail() {
    els.card.replaceChildren(tokenCard(selected));
    els.detailToken.textContent = label(detail.token);
    els.grid.replaceChildren();
    const heads = detail.heads.length;
    els.grid.style.gridTemplateColumns = `auto repeat(${heads}, minmax(0, 1fr))`;
    els.grid.append(node("span", "grid-label"));
    for (const h of detail.heads) els.grid.append(node("span", "grid-label", `head ${h}`));
    detail.layers.forEach((layer, li) => {
      els.grid.append(node("span", "grid-label", `layer ${layer}`));
      detail.heads.forEach((head, hi) => {
        const weights = detail.attention[li][hi];
        let best = 0;
        weights.forEach((w, j) => { if (w > weights[best]) best = j; });
        const cell = node("button", "head-cell");
        cell.type = "button";
        cell.dataset.layer = String(li);
        cell.dataset.head = String(hi);
        cell.style.setProperty("--weight", weights[best].toFixed(3));
        cell.title = `layer ${layer}, head ${head}: most on ${keyLabel(best)} (${percent(weights[best])})`;
        cell.append(node("code", "piece", keyLabel(best)), node("span", "prob", percent(weights[best])));
        els.grid.append(cell);
      });
    });
    els.attentionNote.textContent = detail.key_start > 0
      ? `This token is in a later window: it sees the text from token ${detail.key_start - 1} on.` : "";
    renderLens();
    const near = Object.entries(detail.nearest).map(([kind, list]) =>
      `nearest to ${label(detail.token)} by ${kind} embedding: ${list.map((t) => `${label(t)} ${t.cosine.toFixed(2)}`).join(", ")}`);
    els.nearest.textContent = near.join(" · ");
    els.detail.hidden = false;
    pinned = null;
    paint(null);
  }

  function renderLens() {
    els.lens.replaceChildren();
    const head = node("tr");
    const nextNote = detail.next ? `rank of ${label(detail.next)}, which came next` : "nothing came next";
    head.append(node("th", "", "after"), node("th", "", "likeliest next tokens"), node("th", "", nextNote));
    els.lens.append(head);
    detail.lens.forEach((layer, l) => {
      const row = node("tr");
      const guesses = node("td", "guesses");
      for (const t of layer.top.slice(0, 3)) guesses.append(node("code", "piece", label(t)), node("span", "prob", percent(t.prob)));
      const rank = layer.next_rank !== undefined ? `${layer.next_rank.toLocaleString()} (${percent(layer.next_prob)})` : "–";
      row.append(node("th", "", `layer ${l}${l === detail.lens.length - 1 ? " (output)" : ""}`), guesses, node("td", "rank", rank));
      els.lens.append(row);
    });
  }

  // Paint the text by one head's attention from the selected token (null: back to surprisal).
  function paint(cell) {
    for (const c of els.grid.querySelectorAll(".head-cell.on")) c.classList.remove("on");
    painted = cell ? [Number(cell.dataset.layer), Number(cell.dataset.head)] : null;
    const spans = els.tokens.querySelectorAll(".token");
    els.tokens.classList.toggle("attention", painted !== null);
    els.legend.classList.toggle("painting", painted !== null);
    if (!painted) {
      for (const span of spans) {
        const i = Number(span.dataset.i);
        span.style.background = i < 0 ? "" : surprisalColour(answer.tokens[i].bits);
      }
      return;
    }
    cell.classList.add("on");
    $("painting").textContent = `attention from ${label(detail.token)}, layer ${detail.layers[painted[0]]} head ${detail.heads[painted[1]]}: the bluer, the more weight`;
    const weights = detail.attention[painted[0]][painted[1]];
    for (const span of spans) {
      const j = Number(span.dataset.i) + 1 - detail.key_start;  // token i sits at sequence position i + 1
      const w = j >= 0 && j < weights.length ? weights[j] : 0;
      span.style.background = w > 0.005 ? `rgba(47, 111, 235, ${(0.12 + 0.88 * w).toFixed(2)})` : "transparent";
    }
  }

  // ------------------------------------------------------------ the samples timeline

  let timelineLoaded = false;

  async function loadTimeline() {
    if (timelineLoaded) return;
    timelineLoaded = true;
    try {
      const response = await fetch("/v1/samples");
      const data = await response.json();
      if (!response.ok) throw new Error(data.error ? data.error.message : response.statusText);
      els.timelineNote.textContent = data.note || "";
      for (const sample of data.data) {
        const item = node("li");
        const meta = node("p", "meta", `step ${sample.step.toLocaleString()} · validation ${sample.val_bpb.toFixed(3)} bits per byte`);
        const use = node("button", "small", "Inspect");
        use.type = "button";
        use.addEventListener("click", () => { els.text.value = sample.text; inspect(); els.text.scrollIntoView({ behavior: "smooth" }); });
        meta.append(use);
        const text = node("p", "sample", sample.text);
        text.title = "click to show it all";
        text.addEventListener("click", () => text.classList.toggle("open"));
        item.append(meta, text);
        els.timeline.append(item);
      }
    } catch (err) {
      els.timelineNote.textContent = `no samples timeline: ${err.message}`;
    }
  }

  // ------------------------------------------------------------ wiring

  els.tabGenerate.addEventListener("click", () => showView("generate"));
  els.tabInspect.addEventListener("click", () => showView("inspect"));
  els.form.addEventListener("submit", (event) => { event.preventDefault(); inspect(); });
  els.text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) els.form.requestSubmit();
  });
  els.fromStory.addEventListener("click", () => {
    els.text.value = $("story-prompt").textContent + $("output").textContent;
    showView("inspect");
    inspect();
  });
  els.tokens.addEventListener("mouseover", (event) => {
    const span = event.target.closest(".token");
    if (span) showTip(span);
  });
  els.tokens.addEventListener("mouseleave", hideTip);
  els.tokens.addEventListener("focusin", (event) => { if (event.target.matches(".token")) showTip(event.target); });
  els.tokens.addEventListener("focusout", hideTip);
  els.tokens.addEventListener("click", (event) => {
    const span = event.target.closest(".token");
    if (span) selectToken(Number(span.dataset.i));
  });
  els.tokens.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && event.target.matches(".token")) selectToken(Number(event.target.dataset.i));
  });
  els.grid.addEventListener("mouseover", (event) => { const cell = event.target.closest(".head-cell"); if (cell) paint(cell); });
  els.grid.addEventListener("click", (event) => {
    const cell = event.target.closest(".head-cell");
    if (!cell) return;
    pinned = pinned === cell ? null : cell;
    paint(pinned);
  });
  els.grid.addEventListener("mouseleave", () => paint(pinned));
  for (const swatch of els.legend.querySelectorAll(".swatch")) swatch.style.background = surprisalColour(Number(swatch.dataset.bits));
})();
