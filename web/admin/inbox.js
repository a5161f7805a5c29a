// The support inbox: the conversations of the signed-in staff member's sites, a transcript,
// and the actions on it. Plain DOM, no build step; all text goes in through textContent.
"use strict";
(() => {
  // The site stream says when a conversation changes; this re-read is a safety net only.
  const POLL_MS = 15000;
  const $ = (id) => document.getElementById(id);
  const state = { me: null, filter: "unresolved", openId: null, busy: false, again: false,
    convo: null, typedAt: 0, typingTimer: 0 };
  const STATUS_LABEL = { bot: "assistant", waiting: "waiting", human: "with", resolved: "resolved" };

  async function api(path, options = {}) {
    const headers = { ...(options.headers || {}) };
    if (options.method && options.method !== "GET") headers["X-CSRF-Token"] = state.me ? state.me.csrfToken : "";
    const response = await fetch(path, { credentials: "same-origin", ...options, headers });
    if (response.status === 401) { location.href = "/admin/login"; throw new Error("signed out"); }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((body.error && body.error.message) || "The request failed.");
    return body;
  }

  function statusText(c) {
    return c.status === "human" ? `with ${c.agentName || "an agent"}` : STATUS_LABEL[c.status] || c.status;
  }

  function waited(since) {
    if (!since) return "";
    const minutes = Math.max(0, Math.round((Date.now() - Date.parse(since)) / 60000));
    return minutes < 60 ? `waiting ${minutes} min` : `waiting ${Math.round(minutes / 60)} h`;
  }

  function el(tag, attrs = {}, text = "") {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text) node.textContent = text;
    return node;
  }

  async function loadList() {
    const { conversations } = await api(`/admin/api/conversations?filter=${state.filter}`);
    const list = $("conversations");
    list.replaceChildren(...conversations.map((c) => {
      const item = el("li");
      const link = el("a", { href: `#${c.id}`, "data-conversation": c.id });
      if (c.id === state.openId) link.setAttribute("aria-current", "true");
      const top = el("span", { class: "row-top" });
      top.append(el("span", { class: "status", "data-status": c.status }, statusText(c)),
        el("time", { datetime: c.lastActivityAt }, new Date(c.lastActivityAt).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
      const wait = c.status === "waiting" ? waited(c.waitingSince) : "";
      if (wait) top.append(el("span", { class: "wait" }, wait));
      link.append(top, el("span", { class: "last" }, c.lastMessage ? c.lastMessage.text : "(no messages)"));
      item.append(link);
      return item;
    }));
    $("empty").hidden = conversations.length > 0;
  }

  async function loadConversation() {
    if (!state.openId) return;
    const { conversation, messages } = await api(`/admin/api/conversations/${state.openId}`);
    const status = $("detail-status");
    status.dataset.status = conversation.status;
    status.textContent = statusText(conversation);
    const mine = conversation.status === "human" && conversation.agentId === state.me.id;
    const enabled = {
      takeover: ["bot", "waiting", "resolved"].includes(conversation.status),
      handback: mine, resolve: conversation.status !== "resolved", reopen: conversation.status === "resolved",
    };
    for (const button of document.querySelectorAll("[data-action]")) button.disabled = !enabled[button.dataset.action];
    $("message").disabled = !mine;
    $("reply").querySelector("button").disabled = !mine;
    const who = { user: "Shopper", ai: "Assistant" };
    $("transcript").replaceChildren(...messages.filter((m) => m.text).map((m) => {
      const item = el("li", { "data-sender": m.sender });
      item.append(el("span", { class: "who" }, m.sender === "agent" ? m.agentName || "Agent" : who[m.sender] || m.sender),
        document.createTextNode(m.text));
      // The shopper's vote on an answer (app/feedback.py), with its comment.
      if (m.feedback) item.append(el("span", { class: "rating", "data-rating": m.feedback.rating },
        `${m.feedback.rating === "up" ? "Thumbs up" : "Thumbs down"}${m.feedback.comment ? `: “${m.feedback.comment}”` : ""}`));
      return item;
    }));
    const transcript = $("transcript");
    transcript.scrollTop = transcript.scrollHeight;
  }

  // The open conversation's own stream: the shopper's messages and typing, as they happen.
  function follow(id) {
    if (state.convo) state.convo.close();
    state.convo = id ? new EventSource(`/admin/api/conversations/${id}/stream`) : null;
    if (!state.convo) return;
    state.convo.addEventListener("message", () => refresh());
    state.convo.addEventListener("status", () => refresh());
    state.convo.addEventListener("typing", (event) => {
      const { sender } = JSON.parse(event.data);
      if (sender !== "user") return;
      $("shopper-typing").hidden = false;
      clearTimeout(state.typingTimer);
      state.typingTimer = setTimeout(() => { $("shopper-typing").hidden = true; }, 4000);
    });
  }

  function typing() {
    if (!state.openId || Date.now() - state.typedAt < 3000) return;
    state.typedAt = Date.now();
    api(`/admin/api/conversations/${state.openId}/typing`, { method: "POST" }).catch(() => {});
  }

  function open(id) {
    if (id !== state.openId) follow(id);
    state.openId = id;
    $("detail").hidden = !id;
    $("layout").classList.toggle("open", Boolean(id));
    refresh();
  }

  async function refresh() {
    if (state.busy) { state.again = true; return; } // one more read once this one is done
    state.busy = true;
    try { await Promise.all([loadList(), loadConversation()]); }
    catch (error) { showError(error); }
    finally {
      state.busy = false;
      if (state.again) { state.again = false; refresh(); }
    }
  }

  function showError(error) {
    const box = $("detail-error");
    box.textContent = error ? error.message : "";
    box.hidden = !error;
  }

  async function act(action) {
    showError(null);
    try { await api(`/admin/api/conversations/${state.openId}/${action}`, { method: "POST" }); }
    catch (error) { showError(error); }
    await refresh();
  }

  async function send(event) {
    event.preventDefault();
    const box = $("message");
    const text = box.value;
    if (!text.trim()) return;
    showError(null);
    try {
      await api(`/admin/api/conversations/${state.openId}/messages`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ message: text }),
      });
      box.value = "";
    } catch (error) { showError(error); }
    await refresh();
  }

  async function signOut(everywhere) {
    await api(everywhere ? "/admin/logout-everywhere" : "/admin/logout", { method: "POST" }).catch(() => {});
    location.href = "/admin/login";
  }

  async function start() {
    state.me = await api("/admin/api/me");
    $("who").textContent = `${state.me.name} · ${state.me.sites.map((s) => s.name).join(", ")}`;
    for (const button of document.querySelectorAll("[data-filter]")) {
      button.addEventListener("click", () => {
        state.filter = button.dataset.filter;
        for (const other of document.querySelectorAll("[data-filter]")) other.setAttribute("aria-pressed", String(other === button));
        refresh();
      });
    }
    for (const button of document.querySelectorAll("[data-action]")) button.addEventListener("click", () => act(button.dataset.action));
    $("reply").addEventListener("submit", send);
    $("message").addEventListener("input", typing);
    const inbox = new EventSource("/admin/api/stream");
    inbox.addEventListener("conversation", () => refresh());
    $("back").addEventListener("click", () => { history.replaceState(null, "", "/admin"); open(null); });
    $("sign-out").addEventListener("click", () => signOut(false));
    $("sign-out-everywhere").addEventListener("click", () => signOut(true));
    window.addEventListener("hashchange", () => open(location.hash.slice(1) || null));
    open(location.hash.slice(1) || null);
    setInterval(refresh, POLL_MS);
  }

  start();
})();
