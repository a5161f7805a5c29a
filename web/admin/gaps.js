// Knowledge gaps: the questions the knowledge base could not answer, grouped, and the curated
// answers an owner writes from them. Plain DOM, no build step; all text goes in through textContent.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  // gap: the group an answer is being written from; editing: the published answer being edited.
  const state = { me: null, site: null, days: 30, gap: null, editing: null };
  const REASONS = { not_found: "not found", fallback: "fallback", thumbs_down: "thumbs down", handoff: "handed to a person" };

  async function api(path, options = {}) {
    const headers = { ...(options.headers || {}) };
    if (options.method && options.method !== "GET") headers["X-CSRF-Token"] = state.me ? state.me.csrfToken : "";
    if (options.body) headers["Content-Type"] = "application/json";
    const response = await fetch(path, { credentials: "same-origin", ...options, headers });
    if (response.status === 401) { location.href = "/admin/login"; throw new Error("signed out"); }
    if (response.status === 204) return {};
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((body.error && body.error.message) || "The request failed.");
    return body;
  }

  function el(tag, attrs = {}, text = "") {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text) node.textContent = text;
    return node;
  }

  const when = (iso) => new Date(iso).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
  const isOwner = () => state.me && state.me.role === "owner";

  function gapCard(gap) {
    const item = el("li", { "data-gap": gap.key });
    item.append(el("h3", {}, gap.articleTitle ? `Matched “${gap.articleTitle}”` : gap.label));
    const meta = el("div", { class: "meta" });
    meta.append(el("span", {}, `${gap.count} ${gap.count === 1 ? "question" : "questions"}`),
      el("time", { datetime: gap.latestAt }, `latest ${when(gap.latestAt)}`));
    for (const [reason, count] of Object.entries(gap.reasons)) {
      if (count) meta.append(el("span", { class: "reason", "data-reason": reason }, `${REASONS[reason] || reason} ${count}`));
    }
    const questions = el("ul");
    questions.append(...gap.questions.map((q) => el("li", {}, q)));
    item.append(meta, questions);
    for (const comment of gap.comments) item.append(el("p", { class: "hint" }, `“${comment}”`));
    const links = el("div", { class: "form-actions" });
    if (isOwner()) {
      const write = el("button", { type: "button" }, "Write an answer");
      write.addEventListener("click", () => edit(gap));
      links.append(write);
    }
    if (gap.conversationIds[0]) links.append(el("a", { href: `/admin#${gap.conversationIds[0]}` }, "Open the latest conversation"));
    item.append(links);
    return item;
  }

  function answerCard(answer) {
    const item = el("li", { "data-curated": String(answer.id) });
    item.append(el("h3", {}, answer.title), el("p", {}, answer.answer));
    const meta = el("div", { class: "meta" });
    meta.append(el("span", {}, `Asked as: ${answer.questions.join(" · ")}`),
      el("time", { datetime: answer.updatedAt }, `updated ${when(answer.updatedAt)}`));
    item.append(meta);
    if (isOwner()) {
      const change = el("button", { type: "button" }, "Edit");
      change.setAttribute("aria-label", `Edit “${answer.title}”`);
      change.addEventListener("click", () => openEditor({ title: answer.title, questions: answer.questions,
        answer: answer.answer }, null, answer));
      item.append(change, " ");
      const withdraw = el("button", { type: "button" }, "Withdraw");
      withdraw.setAttribute("aria-label", `Withdraw “${answer.title}”`);
      withdraw.addEventListener("click", async () => {
        try {
          await api(`/admin/api/curated-answers/${answer.id}`, { method: "DELETE" });
          say(`Withdrawn: ${answer.title}`);
        } catch (error) { say(error.message); }
        load();
      });
      item.append(withdraw);
    }
    return item;
  }

  // The editor opens prefilled from the group: its questions as the examples shoppers used.
  function edit(gap) {
    openEditor({ title: gap.articleTitle || gap.label, questions: gap.questions, answer: "" }, gap, null);
  }

  // One editor for a new answer (from a gap) and for a published one (PUT replaces it).
  function openEditor(draft, gap, editing) {
    Object.assign(state, { gap, editing });
    $("editor").hidden = false;
    $("editor-title").textContent = editing ? `Edit “${editing.title}”` : "Write a curated answer";
    $("save").textContent = editing ? "Save changes" : "Publish";
    $("title").value = draft.title;
    $("questions").value = draft.questions.join("\n");
    $("answer").value = draft.answer;
    $("editor-error").hidden = true;
    $("editor").scrollIntoView({ block: "start" });
    $("answer").focus();
  }

  function closeEditor() {
    $("editor").hidden = true;
    Object.assign(state, { gap: null, editing: null });
  }

  async function publish(event) {
    event.preventDefault();
    const questions = $("questions").value.split("\n").map((q) => q.trim()).filter(Boolean);
    const draft = { title: $("title").value, questions, answer: $("answer").value };
    try {
      if (state.editing) {
        await api(`/admin/api/curated-answers/${state.editing.id}`, { method: "PUT", body: JSON.stringify(draft) });
        say(`Saved: shoppers asking “${questions[0]}” get the new answer now.`);
      } else {
        await api("/admin/api/curated-answers", {
          method: "POST", body: JSON.stringify({ ...draft, siteId: state.site, gapKey: state.gap ? state.gap.key : null }),
        });
        say(`Published: shoppers asking “${questions[0]}” get this answer now.`);
      }
      closeEditor();
      load();
    } catch (error) {
      $("editor-error").textContent = error.message;
      $("editor-error").hidden = false;
    }
  }

  // Said at the top of the page, brought into view: after a publish the editor is gone.
  function say(text) { $("status").textContent = text; $("status").scrollIntoView({ block: "nearest" }); }

  async function load() {
    const query = `site=${state.site}`;
    const [{ gaps }, { answers }] = await Promise.all([
      api(`/admin/api/gaps?${query}&days=${state.days}`), api(`/admin/api/curated-answers?${query}`)]);
    $("gaps").replaceChildren(...gaps.map(gapCard));
    $("gaps-empty").hidden = gaps.length > 0;
    $("published").replaceChildren(...answers.map(answerCard));
    $("published-empty").hidden = answers.length > 0;
  }

  async function start() {
    state.me = await api("/admin/api/me");
    const sites = $("site");
    sites.replaceChildren(...state.me.sites.map((s) => el("option", { value: String(s.id) }, s.name)));
    state.site = state.me.sites.length ? state.me.sites[0].id : null;
    sites.addEventListener("change", () => { state.site = Number(sites.value); closeEditor(); load(); });
    $("days").addEventListener("change", () => { state.days = Number($("days").value); load(); });
    $("curated").addEventListener("submit", publish);
    $("cancel").addEventListener("click", closeEditor);
    if (state.site !== null) await load();
  }

  start().catch((error) => say(error.message));
})();
