// The front page: status from /health, call snippets, and a streaming chat playground.
// Every URL is relative: on Hugging Face this page runs inside an iframe on the Space's own host.
"use strict";

(function () {
  const KEY_STORAGE = "spaceserve.apiKey";
  // Only while the model loads (or the server is unreachable): a page left open must not keep a
  // sleeping Space awake, so a ready page is refreshed by hand or after each reply.
  const LOADING_POLL_MS = 2000;
  const KEY_PLACEHOLDER = "YOUR_API_KEY";

  const $ = (id) => document.getElementById(id);
  let pollTimer = null;
  let controller = null;
  let modelTouched = false;

  function sessionStore() {
    // Storage can be blocked in a third-party iframe; the key field then simply is not remembered.
    try {
      return window.sessionStorage;
    } catch (err) {
      return null;
    }
  }

  function baseUrl() {
    return new URL(".", window.location.href).href.replace(/\/$/, "");
  }

  // -- status ------------------------------------------------------------------------------

  const STATES = {
    ok: "Ready",
    loading: "Loading the model…",
    error: "Failed",
    degraded: "Degraded",
    unavailable: "Unavailable",
    unreachable: "Unreachable",
  };

  function setText(id, value) {
    $(id).textContent = value === undefined || value === null || value === "" ? "–" : String(value);
  }

  function showState(state, label, reason) {
    const el = $("state");
    el.dataset.state = state;
    el.textContent = label;
    const reasonEl = $("reason");
    reasonEl.hidden = !reason;
    reasonEl.textContent = reason || "";
  }

  async function refreshHealth() {
    clearTimeout(pollTimer);
    pollTimer = null;
    let body;
    try {
      const response = await fetch("health", { cache: "no-store", headers: { Accept: "application/json" } });
      body = await response.json();
    } catch (err) {
      showState("unreachable", STATES.unreachable, "The server did not answer; trying again.");
      pollTimer = setTimeout(refreshHealth, LOADING_POLL_MS);
      return;
    }
    renderHealth(body || {});
  }

  function renderHealth(body) {
    const status = typeof body.status === "string" ? body.status : "unknown";
    const label = STATES[status] || status.charAt(0).toUpperCase() + status.slice(1);
    const reason = status === "error" ? body.reason || "No reason was given." : body.reason || "";
    showState(status, label, reason);
    if (status === "loading") {
      pollTimer = setTimeout(refreshHealth, LOADING_POLL_MS);
    }

    const upstreams = Array.isArray(body.upstreams) ? body.upstreams : null;
    $("details").hidden = upstreams !== null || status !== "ok";
    $("upstreams").hidden = upstreams === null;
    if (upstreams) {
      renderUpstreams(upstreams);
    } else {
      setText("d-model", body.model);
      setText("d-context", body.context_size);
      setText("d-threads", body.threads);
      setText("d-active", body.active);
      setText("d-queued", body.queued);
    }

    const model = body.model || (Array.isArray(body.models) ? body.models[0] : "") || "";
    if (model) {
      if (!modelTouched) $("model").value = model;
      renderSnippets(model);
    }
  }

  // The proxy's /health rows, in the order the proxy tries the upstreams. A column shows when some
  // row has a value for it, so an older or newer proxy still gets a sensible table.
  const UPSTREAM_COLUMNS = [
    { label: "Upstream", value: (u) => u.name },
    // Only worth a column when some tier is a group of replicas (a lone upstream is its own tier).
    { label: "Tier", value: (u) => u.tier, show: (rows) => rows.some((u) => u.tier !== undefined && u.tier !== u.name) },
    { label: "State", value: (u) => u.state, state: true },
    { label: "In flight", value: (u) => u.in_flight },
    { label: "Requests", value: (u) => (u.counters || {}).attempts },
    { label: "Failures", value: (u) => (u.counters || {}).failures },
    { label: "Cooldown left", value: (u) => u.cooldown_seconds, format: (s) => (s > 0 ? s.toFixed(1) + " s" : "–") },
    { label: "Last error", value: (u) => u.last_error },
  ];

  function cellText(value, format) {
    if (value === undefined || value === null || value === "") return "–";
    if (format && typeof value === "number") return format(value);
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function renderUpstreams(upstreams) {
    const rows = upstreams.map((u) => (u && typeof u === "object" ? u : {}));
    const columns = UPSTREAM_COLUMNS.filter((column, i) =>
      column.show ? column.show(rows) : i === 0 || rows.some((u) => column.value(u) !== undefined),
    );
    const head = $("upstreams-head");
    head.replaceChildren();
    for (const column of columns) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = column.label;
      head.appendChild(th);
    }
    const bodyEl = $("upstreams-body");
    bodyEl.replaceChildren();
    for (const upstream of rows) {
      const tr = document.createElement("tr");
      columns.forEach((column, i) => {
        const cell = document.createElement(i === 0 ? "th" : "td");
        if (i === 0) cell.scope = "row";
        const value = column.value(upstream);
        if (column.state) cell.dataset.state = String(value || "");
        cell.textContent = cellText(value, column.format);
        tr.appendChild(cell);
      });
      bodyEl.appendChild(tr);
    }
  }

  // -- how to call it -----------------------------------------------------------------------

  function renderSnippets(model) {
    const base = baseUrl();
    $("base-url").textContent = base + "/v1";
    $("usage-model").textContent = model;
    const payload = JSON.stringify({ model: model, messages: [{ role: "user", content: "Hello!" }], max_tokens: 64 });
    // The key is never read from the form here: snippets get copied into chats and tickets.
    $("curl-snippet").textContent = [
      "curl " + base + "/v1/chat/completions \\",
      '  -H "Authorization: Bearer ' + KEY_PLACEHOLDER + '" \\',
      '  -H "Content-Type: application/json" \\',
      "  -d '" + payload.replace(/'/g, "'\\''") + "'",
    ].join("\n");
    $("python-snippet").textContent = [
      "from openai import OpenAI",
      "",
      "client = OpenAI(base_url=" + JSON.stringify(base + "/v1") + ', api_key="' + KEY_PLACEHOLDER + '")',
      "stream = client.chat.completions.create(",
      "    model=" + JSON.stringify(model) + ",",
      '    messages=[{"role": "user", "content": "Hello!"}],',
      "    max_tokens=64,",
      "    stream=True,",
      ")",
      "for chunk in stream:",
      '    print(chunk.choices[0].delta.content or "", end="", flush=True)',
    ].join("\n");
  }

  async function copySnippet(event) {
    const target = $(event.currentTarget.dataset.copy);
    const note = $("copy-note");
    try {
      await navigator.clipboard.writeText(target.textContent);
      note.textContent = "Copied.";
    } catch (err) {
      // The Space's iframe may not grant clipboard access: select the text instead.
      const range = document.createRange();
      range.selectNodeContents(target);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      note.textContent = "Selected: press Ctrl+C (⌘C on a Mac) to copy.";
    }
  }

  // -- playground ---------------------------------------------------------------------------

  function showError(sentence) {
    const el = $("error");
    el.hidden = !sentence;
    el.textContent = sentence || "";
  }

  function retryAfterSeconds(response) {
    const header = response.headers.get("Retry-After");
    if (!header) return null;
    const seconds = Number(header);
    if (Number.isFinite(seconds)) return Math.max(0, Math.ceil(seconds));
    const when = Date.parse(header);
    return Number.isNaN(when) ? null : Math.max(0, Math.ceil((when - Date.now()) / 1000));
  }

  async function describeFailure(response) {
    let message = "";
    let code = "";
    try {
      const body = await response.json();
      message = (body && body.error && body.error.message) || "";
      code = (body && body.error && body.error.code) || "";
    } catch (err) {
      // Not an OpenAI error body (a proxy in between, for instance): the status says enough.
    }
    const retry = retryAfterSeconds(response);
    const wait = retry === null ? "in a few seconds" : "in " + retry + " s";
    switch (response.status) {
      case 401:
        return "The API key was refused: it is wrong or missing. Enter the key this Space was given.";
      case 429:
        return "The server is busy with other requests. Try again " + wait + ".";
      case 413:
        return "The request is too large for this server. Shorten the prompts.";
      case 503:
        if (code === "model_loading") {
          refreshHealth();
          return "The model is still loading. Try again " + wait + ".";
        }
        return "The service is unavailable" + (message ? ": " + message : ".");
      default:
        return "The server could not answer (HTTP " + response.status + ")" + (message ? ": " + message : ".");
    }
  }

  function figures(state) {
    setText("f-ttft", state.firstAt === null ? null : ((state.firstAt - state.startedAt) / 1000).toFixed(2) + " s");
    const decodeSeconds = state.firstAt === null ? 0 : (state.lastAt - state.firstAt) / 1000;
    // The first token's time belongs to prompt processing; the rate counts the ones after it.
    const rate = state.tokens > 1 && decodeSeconds > 0 ? ((state.tokens - 1) / decodeSeconds).toFixed(1) : null;
    setText("f-tps", rate);
    setText("f-tokens", state.tokens || null);
    setText("f-finish", state.finish);
  }

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
    $("reply").setAttribute("aria-busy", busy ? "true" : "false");
    if (!busy && document.activeElement === $("stop")) $("send").focus();
  }

  class StreamError extends Error {}

  function handleEvent(data, state, text) {
    if (data === "[DONE]") return true;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new StreamError(chunk.error.message || "the server reported an error");
    const choice = (chunk.choices || [])[0];
    if (choice) {
      const content = choice.delta && choice.delta.content;
      if (content) {
        state.lastAt = performance.now();
        if (state.firstAt === null) state.firstAt = state.lastAt;
        state.tokens += 1;
        text.appendData(content);
      }
      if (choice.finish_reason) state.finish = choice.finish_reason;
    }
    if (chunk.usage && typeof chunk.usage.completion_tokens === "number") {
      state.usageTokens = chunk.usage.completion_tokens;
    }
    return false;
  }

  async function readStream(response, state, text) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data && handleEvent(data, state, text)) {
          await reader.cancel();
          return;
        }
        figures(state);
      }
    }
  }

  function readNumber(id, min, max, integer) {
    const raw = $(id).value.trim();
    const value = Number(raw);
    if (raw === "" || !Number.isFinite(value) || value < min || value > max || (integer && !Number.isInteger(value))) {
      return null;
    }
    return value;
  }

  async function send(event) {
    event.preventDefault();
    if (controller) return;
    showError("");
    const message = $("message").value.trim();
    const maxTokens = readNumber("max-tokens", 1, 8192, true);
    const temperature = readNumber("temperature", 0, 2, false);
    const model = $("model").value.trim();
    if (!message) return invalid("message", "Write a message first.");
    if (maxTokens === null) return invalid("max-tokens", "Max tokens must be a whole number from 1 to 8192.");
    if (temperature === null) return invalid("temperature", "Temperature must be a number from 0 to 2.");
    if (!model) return invalid("model", "Enter a model id; the status section shows the one this server serves.");

    const key = $("api-key").value.trim();
    const store = sessionStore();
    if (store) key ? store.setItem(KEY_STORAGE, key) : store.removeItem(KEY_STORAGE);

    const messages = [];
    const system = $("system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push({ role: "user", content: message });
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    if (key) headers.Authorization = "Bearer " + key;

    const reply = $("reply");
    const text = document.createTextNode("");
    reply.replaceChildren(text);
    reply.dataset.state = "streaming";
    const state = { startedAt: performance.now(), firstAt: null, lastAt: null, tokens: 0, usageTokens: null, finish: null };
    figures(state);
    controller = new AbortController();
    setBusy(true);
    try {
      const response = await fetch("v1/chat/completions", {
        method: "POST",
        headers: headers,
        cache: "no-store",
        signal: controller.signal,
        body: JSON.stringify({
          model: model,
          messages: messages,
          max_tokens: maxTokens,
          temperature: temperature,
          stream: true,
          stream_options: { include_usage: true },
        }),
      });
      if (!response.ok) {
        showError(await describeFailure(response));
        reply.dataset.state = "failed";
        return;
      }
      await readStream(response, state, text);
      if (state.usageTokens !== null) state.tokens = state.usageTokens;
      reply.dataset.state = "done";
    } catch (err) {
      if (err && err.name === "AbortError") {
        state.finish = "stopped";
        reply.dataset.state = "stopped";
      } else if (err instanceof StreamError) {
        showError("The reply broke off: " + err.message);
        reply.dataset.state = "failed";
      } else {
        showError("The connection to the server failed. Check that the Space is running and try again.");
        reply.dataset.state = "failed";
      }
    } finally {
      figures(state);
      controller = null;
      setBusy(false);
      refreshHealth();
    }
  }

  function invalid(id, sentence) {
    showError(sentence);
    $(id).focus();
  }

  function stop() {
    if (controller) controller.abort();
  }

  // -- start --------------------------------------------------------------------------------

  function start() {
    const store = sessionStore();
    const saved = store && store.getItem(KEY_STORAGE);
    if (saved) $("api-key").value = saved;
    renderSnippets("MODEL_ID");
    $("model").addEventListener("input", () => {
      modelTouched = true;
    });
    $("chat-form").addEventListener("submit", send);
    $("stop").addEventListener("click", stop);
    $("refresh").addEventListener("click", refreshHealth);
    for (const button of document.querySelectorAll("button.copy")) button.addEventListener("click", copySnippet);
    $("message").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("chat-form").requestSubmit();
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && controller) stop();
    });
    refreshHealth();
  }

  start();
})();
