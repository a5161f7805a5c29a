// The support inbox: the conversations of the signed-in staff member's sites, a transcript,
// and the actions on it. Plain DOM, no build step; all text goes in through textContent.
"use strict";
(() => {
  // The site stream says when a conversation changes; this re-read is a safety net only.
  const POLL_MS = 15000;
  // Rows per page; "Load more" asks for the next page after the last row (keyset, not offset).
  const PAGE = 50;
  const $ = (id) => document.getElementById(id);
  const state = { me: null, filter: "unresolved", openId: null, busy: false, again: false,
    convo: null, typedAt: 0, typingTimer: 0, q: "", pages: 1, next: null, language: "" };
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

  // The conversation's language (of its newest question), by the name the API gives it.
  function languageName(code) {
    const known = state.me && state.me.languages.find((l) => l.code === code);
    return known ? known.name : code || "";
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

  function listUrl(limit, after) {
    const params = new URLSearchParams({ filter: state.filter, limit: String(limit) });
    if (state.q) params.set("q", state.q);
    if (state.language) params.set("language", state.language);
    if (after) params.set("after", after);
    return `/admin/api/conversations?${params}`;
  }

  // The pages loaded so far, read again from the top (a live change may reorder them).
  async function loadList() {
    const { conversations, nextCursor } = await api(listUrl(Math.min(PAGE * state.pages, 200)));
    $("conversations").replaceChildren(...conversations.map(row));
    state.next = nextCursor;
    $("more").hidden = !nextCursor;
    $("empty").hidden = conversations.length > 0;
  }

  async function loadMore() {
    if (!state.next) return;
    const { conversations, nextCursor } = await api(listUrl(PAGE, state.next));
    $("conversations").append(...conversations.map(row));
    state.pages += 1;
    state.next = nextCursor;
    $("more").hidden = !nextCursor;
  }

  function row(c) {
    const item = el("li");
    const link = el("a", { href: `#${c.id}`, "data-conversation": c.id });
    if (c.id === state.openId) link.setAttribute("aria-current", "true");
    const top = el("span", { class: "row-top" });
    top.append(el("span", { class: "status", "data-status": c.status }, statusText(c)),
      el("time", { datetime: c.lastActivityAt }, new Date(c.lastActivityAt).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
    const wait = c.status === "waiting" ? waited(c.waitingSince) : "";
    if (wait) top.append(el("span", { class: "wait" }, wait));
    if (c.language) top.firstChild.after(el("abbr", { class: "lang", title: languageName(c.language) }, c.language.toUpperCase()));
    link.append(top, el("span", { class: "last" }, c.lastMessage ? c.lastMessage.text : "(no messages)"));
    if (c.customer) link.append(el("span", { class: "last" }, `Signed in: ${c.customer.email || c.customer.id}`));
    if (c.shopperEmail) link.append(el("span", { class: "last" }, `Email for replies: ${c.shopperEmail}`));
    item.append(link);
    return item;
  }

  async function loadConversation() {
    if (!state.openId) return;
    const { conversation, messages, notes } = await api(`/admin/api/conversations/${state.openId}`);
    const customer = $("customer");
    customer.hidden = !conversation.customer;
    // Signed by the store's server (the identity token), so it is who the shop says it is.
    if (conversation.customer) customer.textContent = `Signed-in customer: ${conversation.customer.id}${conversation.customer.email ? ` · ${conversation.customer.email}` : ""}`;
    // Left by the shopper out of hours: an agent's reply they miss is emailed there.
    const replyTo = $("reply-email");
    replyTo.hidden = !conversation.shopperEmail;
    replyTo.textContent = conversation.shopperEmail ? `Replies are emailed to ${conversation.shopperEmail} when the shopper has left.` : "";
    $("note-count").textContent = String(notes.length);
    $("notes").replaceChildren(...notes.map((n) => {
      const item = el("li");
      item.append(el("span", { class: "who" }, `${n.staffName || "Staff"} · ${new Date(n.createdAt).toLocaleString()}`),
        document.createTextNode(n.text));
      return item;
    }));
    const status = $("detail-status");
    status.dataset.status = conversation.status;
    status.textContent = statusText(conversation);
    $("detail-language").textContent = conversation.language ? `in ${languageName(conversation.language)}` : "";
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
    state.convo.addEventListener("message", (event) => {
      // The shopper's message is what they were typing: the indicator ends with it, not 4 s later.
      if (JSON.parse(event.data).sender === "user") {
        clearTimeout(state.typingTimer);
        $("shopper-typing").hidden = true;
      }
      refresh();
    });
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

  async function addNote(event) {
    event.preventDefault();
    const box = $("note");
    if (!box.value.trim()) return;
    showError(null);
    try {
      await api(`/admin/api/conversations/${state.openId}/notes`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ note: box.value }),
      });
      box.value = "";
    } catch (error) { showError(error); }
    await refresh();
  }

  async function invite(event) {
    event.preventDefault();
    const result = $("invite-result");
    try {
      const body = await api("/admin/api/invites", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ email: $("invite-email").value }),
      });
      result.textContent = body.emailed ? `Invitation sent to ${body.email}.`
        : `Send ${body.email} this link (it works once, for 3 days): ${body.inviteUrl}`;
    } catch (error) { result.textContent = error.message; }
  }

  async function signOut(everywhere) {
    await api(everywhere ? "/admin/logout-everywhere" : "/admin/logout", { method: "POST" }).catch(() => {});
    location.href = "/admin/login";
  }

  async function start() {
    state.me = await api("/admin/api/me");
    $("analytics-link").hidden = state.me.role !== "owner";
    $("who").textContent = `${state.me.name} · ${state.me.sites.map((s) => s.name).join(", ")}`;
    for (const button of document.querySelectorAll("[data-filter]")) {
      button.addEventListener("click", () => {
        state.filter = button.dataset.filter;
        state.pages = 1;
        for (const other of document.querySelectorAll("[data-filter]")) other.setAttribute("aria-pressed", String(other === button));
        refresh();
      });
    }
    for (const button of document.querySelectorAll("[data-action]")) button.addEventListener("click", () => act(button.dataset.action));
    const languages = $("language-filter");
    languages.append(...state.me.languages.map((l) => el("option", { value: l.code }, l.name)));
    languages.addEventListener("change", () => { state.language = languages.value; state.pages = 1; refresh(); });
    $("reply").addEventListener("submit", send);
    $("message").addEventListener("input", typing);
    $("note-form").addEventListener("submit", addNote);
    $("more").addEventListener("click", () => loadMore().catch(showError));
    $("search").addEventListener("submit", (event) => {
      event.preventDefault();
      state.q = $("q").value.trim();
      state.pages = 1;
      refresh();
    });
    // One stream per site: a shopper on any of the member's sites appears at once.
    for (const site of state.me.sites) {
      const inbox = new EventSource(`/admin/api/stream?site=${site.id}`);
      inbox.addEventListener("conversation", () => refresh());
      inbox.addEventListener("note", (event) => {
        if (JSON.parse(event.data).conversationId === state.openId) refresh();
      });
    }
    if (state.me.role === "owner") {
      $("invite").hidden = false;
      $("invite").addEventListener("click", () => { $("invite-result").textContent = ""; $("invite-dialog").showModal(); });
      $("invite-form").addEventListener("submit", invite);
      $("invite-close").addEventListener("click", () => $("invite-dialog").close());
    }
    $("back").addEventListener("click", () => { history.replaceState(null, "", "/admin"); open(null); });
    $("sign-out").addEventListener("click", () => signOut(false));
    $("sign-out-everywhere").addEventListener("click", () => signOut(true));
    window.addEventListener("hashchange", () => open(location.hash.slice(1) || null));
    open(location.hash.slice(1) || null);
    setInterval(refresh, POLL_MS);
  }

  start();
})();
