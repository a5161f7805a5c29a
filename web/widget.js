/* Support chat widget: <support-chat>, one custom element in its own shadow root. No build
 * step, so a store can read what it embeds. Options: data-* on the script tag (see README).
 * Model and user text enters the page only as text nodes, never through innerHTML. */
(() => {
"use strict";

// Loading the script twice (two tags, a tag manager) must not define the element twice.
if (customElements.get("support-chat")) return;

const script = document.currentScript || document.querySelector('script[src*="widget.js"]');
const HISTORY_PAGE = 30;
const RESUME_ATTEMPTS = 8;
const STOP_GRACE_MS = 4000;
const PHONE = matchMedia("(max-width:480px)"); // the panel fills the screen (see STYLES)

const STYLES = `
:host{all:initial;display:block;position:fixed;bottom:20px;right:20px;z-index:2147483000;
--sc-accent:#2f5d50;--sc-on-accent:#fff;--sc-bg:#fff;--sc-fg:#1d2327;--sc-muted:#5f6b72;
--sc-ai:#f1f3f4;--sc-line:#dde2e5;--sc-shadow:0 12px 40px rgba(0,0,0,.18);--sc-ring:var(--sc-accent);
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--sc-fg)}
:host([position=left]){right:auto;left:20px}
@media (prefers-color-scheme:dark){:host{--sc-bg:#1e2226;--sc-fg:#e8eaed;--sc-muted:#a4adb3;
--sc-ai:#2c3238;--sc-line:#3a4147;--sc-shadow:0 12px 40px rgba(0,0,0,.55);--sc-ring:#8fd3bf}}
*{box-sizing:border-box}
[hidden]{display:none!important}
button{font:inherit;cursor:pointer}
:focus-visible{outline:3px solid var(--sc-ring);outline-offset:2px}
.launcher{position:relative;width:60px;height:60px;border:0;border-radius:50%;background:var(--sc-accent);
color:var(--sc-on-accent);box-shadow:var(--sc-shadow);display:grid;place-items:center}
.launcher:focus-visible{outline-color:var(--sc-fg)}
.launcher svg{width:28px;height:28px}
.badge{position:absolute;top:-4px;right:-4px;min-width:22px;height:22px;padding:0 6px;border-radius:11px;
background:#d93025;color:#fff;font-size:13px;font-weight:700;line-height:22px}
.panel{position:absolute;bottom:76px;right:0;width:380px;height:min(600px,calc(100vh - 120px));display:flex;
flex-direction:column;background:var(--sc-bg);color:var(--sc-fg);border:1px solid var(--sc-line);
border-radius:16px;box-shadow:var(--sc-shadow);overflow:hidden}
:host([position=left]) .panel{right:auto;left:0}
.head{display:flex;align-items:center;gap:6px;padding:12px;padding-inline:16px 10px;background:var(--sc-accent);
color:var(--sc-on-accent)}
h2{flex:1;margin:0;font-size:17px;font-weight:600;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.icon{width:36px;height:36px;border:0;border-radius:8px;background:none;color:inherit;display:grid;place-items:center}
.icon:hover{background:rgba(255,255,255,.15)}
.icon:focus-visible{outline-color:var(--sc-on-accent);outline-offset:-3px}
.icon svg{width:20px;height:20px}
.hours{margin:0;padding:6px 16px;font-size:13px;color:var(--sc-muted);border-bottom:1px solid var(--sc-line)}
.notice{margin:8px 12px 0;padding:8px 12px;border-radius:8px;background:#fdecea;color:#8a1c12;font-size:14px}
.log{flex:1;overflow-y:auto;overflow-anchor:none;padding:12px;display:flex;flex-direction:column;gap:8px;overscroll-behavior:contain}
.log:focus-visible{outline-offset:-3px}
.older{align-self:center;color:var(--sc-muted);font-size:13px}
.greeting,.msg{max-width:85%;margin:0;padding:9px 13px;border-radius:16px;overflow-wrap:anywhere}
.greeting,.msg[data-sender=ai]{align-self:flex-start;background:var(--sc-ai);border-end-start-radius:4px}
.msg[data-sender=agent]{align-self:flex-start;background:var(--sc-ai);border:1px solid var(--sc-accent)}
.who{font-size:12px;font-weight:600}
.handoff{margin:0 12px 6px;align-self:flex-start;border:1px solid var(--sc-line);border-radius:99px;background:none;color:inherit;padding:4px 12px;font-size:14px}
.msg[data-sender=user]{align-self:flex-end;background:var(--sc-accent);color:var(--sc-on-accent);
border-end-end-radius:4px;white-space:pre-wrap}
.body p{margin:0 0 .5em}.body>:last-child{margin-bottom:0}
.body ul,.body ol{margin:0 0 .5em;padding-inline-start:1.3em}
.body code{font:13px ui-monospace,Menlo,Consolas,monospace;background:rgba(127,127,127,.18);padding:1px 4px;border-radius:4px}
.body a{color:inherit}
.body a,.host,.note,bdi{unicode-bidi:isolate}
.host{color:var(--sc-muted);font-size:13px}
.note{margin-top:4px;font-size:12.5px;color:var(--sc-muted)}
.order{margin:4px 0 6px;padding:8px 10px;border:1px solid #d0d4da;border-radius:8px;background:#fff}.order b{display:block}.order ul{margin:4px 0;padding-left:18px}
.typing{padding:0 16px 6px;color:var(--sc-muted);font-size:13px}
.typing b{font-weight:inherit}.typing span{animation:sc-blink 1.2s infinite}
@keyframes sc-blink{50%{opacity:.2}}
@media (prefers-reduced-motion:reduce){.typing span{animation:none}}
form{display:flex;align-items:flex-end;gap:8px;padding:10px 12px 12px;border-top:1px solid var(--sc-line)}
textarea{flex:1;min-height:42px;max-height:140px;resize:none;padding:9px 12px;border:1px solid var(--sc-line);
border-radius:12px;background:var(--sc-bg);color:var(--sc-fg);font-family:inherit;font-size:16px;line-height:1.4}
textarea:focus-visible{outline-offset:0}
.send,.stop{height:42px;border:0;border-radius:12px;padding:0 14px;font-size:16px;font-weight:600}
.send{background:var(--sc-accent);color:var(--sc-on-accent)}
.send:disabled{opacity:.45;cursor:default}
.stop{background:var(--sc-ai);color:var(--sc-fg);border:1px solid var(--sc-line)}
.rate{display:flex;flex-wrap:wrap;align-items:center;gap:6px;margin-top:6px}.rate button{border:1px solid var(--sc-line);border-radius:99px;background:var(--sc-bg);color:inherit;padding:2px 10px}
.rate svg{width:16px;display:block}.rate [data-rating=down] svg{rotate:180deg}.rate [aria-pressed=true]{background:var(--sc-accent);color:var(--sc-on-accent)}form.why{padding:4px 0 0;border:0;gap:4px}.why input{flex:1;min-width:0;font:inherit;padding:3px 8px}
.ask{flex-wrap:wrap;align-items:center;align-self:stretch;padding:10px;border:1px solid var(--sc-line);border-radius:12px}.ask p{margin:0}
.ask p,.ask label{flex-basis:100%}.ask input{flex:1;min-width:0;font:inherit;padding:7px 10px;border:1px solid var(--sc-line);border-radius:8px;background:var(--sc-bg);color:inherit}.ask .send{height:38px}
.sr-only{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
@media (max-width:480px){.panel{position:fixed;inset:0;width:100%;height:100%;border:0;border-radius:0}
:host([open]) .launcher{display:none}}`;

const svg = (body, attrs) => `<svg viewBox="0 0 24 24" aria-hidden="true" ${attrs}>${body}</svg>`;
const STROKE = 'fill="none" stroke="currentColor" stroke-width="2.2" stroke-linecap="round"';
const THUMB = `<svg viewBox="0 0 24 24" ${STROKE}><path d="M7 11v10H3V11zm0 0 4-8a3 3 0 0 1 3 3v4h5a2 2 0 0 1 2 2.4l-1.5 6.8A2 2 0 0 1 17.5 21H7"/></svg>`;

// Constant markup only: every changing string is set later with textContent.
// data-t names the catalogue key for an element's text, or "attribute=key" pairs for its attributes.
const TEMPLATE = `<style>${STYLES}</style>
<button class="launcher" type="button" data-chat-launcher aria-expanded="false" aria-controls="panel">${svg('<path d="M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4H4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z"/>', 'fill="currentColor"')}<span class="badge" data-chat-unread hidden></span></button>
<section class="panel" id="panel" role="dialog" aria-labelledby="title" hidden>
 <div class="head"><h2 id="title"></h2>
  <button class="icon" type="button" data-chat-new data-t="aria-label=newChat title=newTitle">${svg('<path d="M3 12a9 9 0 1 0 3-6.7L3 8M3 3v5h5"/>', STROKE)}</button>
  <button class="icon" type="button" data-chat-close data-t="aria-label=close title=closeTitle">${svg('<path d="M6 6l12 12M18 6L6 18"/>', STROKE)}</button>
 </div>
 <p class="hours" data-chat-hours hidden></p>
 <div class="notice" role="alert" data-chat-error hidden></div>
 <div class="log" role="log" aria-live="polite" data-t="aria-label=log" tabindex="0">
  <div class="older" data-t="older" hidden></div><p class="greeting" dir="auto"></p>
 </div>
 <div class="typing" data-chat-typing role="status" hidden><b data-t="typing"></b><span>…</span></div>
 <button class="handoff" type="button" data-chat-handoff data-t="handoff" hidden></button>
 <form novalidate>
  <label class="sr-only" for="input" data-t="label"></label>
  <textarea id="input" data-chat-input rows="1" dir="auto" data-t="placeholder=placeholder" autocomplete="off"></textarea>
  <button class="stop" type="button" data-chat-stop data-t="stop" hidden></button>
  <button class="send" type="submit" data-chat-send data-t="send"></button>
 </form>
</section>`;

// EventSource can neither POST nor set headers, so streams are read with fetch and parsed
// here: the part of the SSE format the API uses (event, data, id, comments), any line ending.
async function* readSse(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", event = "", data = [], id = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = /\r\n|\r|\n/.exec(buffer))) {
        // A \r at the very end may be half of a \r\n.
        if (end[0] === "\r" && end.index === buffer.length - 1) break;
        const line = buffer.slice(0, end.index);
        buffer = buffer.slice(end.index + end[0].length);
        if (line === "") {
          if (data.length) yield { event: event || "message", data: data.join("\n"), id };
          event = "";
          data = [];
          id = null;
        } else if (line[0] !== ":") {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + (line[colon + 1] === " " ? 2 : 1));
          if (field === "event") event = text;
          else if (field === "data") data.push(text);
          else if (field === "id") id = text;
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// Groups: 1 code, 2 bold, 3+4 the character before an italic and the italic (no lookbehind,
// which older Safari cannot parse), 5+6 a link's text and address, 7 a bare address.
const INLINE =
  /`([^`\n]+)`|\*\*([^\n]+?)\*\*|(^|[\s(])[*_]([^*_\s](?:[^*_\n]*[^*_\s])?)[*_](?=$|[\s.,;:!?)])|\[([^\]\n]+)\]\(([^)\s]+)\)|(https?:\/\/[^\s<>()]*[^\s<>().,;:!?'"])/g;
const BULLET = /^\s*[-*•]\s+(.*)$/;
const NUMBERED = /^\s*\d+[.)]\s+(.*)$/;

// An order card from a `tool` event: only what the server chose to show the shopper.
function orderCards(tools) {
  const cards = [];
  for (const tool of tools || []) {
    if (!tool || tool.result !== "found") continue;
    for (const order of tool.order ? [tool.order] : tool.orders || []) {
      const card = node("div", "order");
      card.setAttribute("data-chat-order", "");
      card.append(node("b", "", `Order ${order.number}: ${order.status}`));
      const items = node("ul");
      for (const item of order.items || []) items.append(node("li", "", `${item.quantity} × ${item.name}`));
      card.append(items);
      if (order.carrier) card.append(node("div", "", `Carrier: ${order.carrier}`));
      if (/^https?:\/\//.test(order.trackingUrl || "")) {
        const link = node("a", "", "Track the parcel");
        link.href = order.trackingUrl;
        link.target = "_blank";
        link.rel = "noopener noreferrer";
        card.append(link);
      }
      if (order.expectedDelivery) card.append(node("div", "", `Expected: ${order.expectedDelivery}`));
      cards.push(card);
    }
  }
  return cards;
}

function node(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.append(...bidiSafe(text));
  return el;
}

// Explicit direction controls (embeddings, overrides, isolates, their ends, marks). Each one,
// with the rest of its word, goes into its own <bdi>: an unclosed override in a model's or
// shopper's text can reverse at most that word, never the text around it.
const BIDI = /[\u202a-\u202e\u2066-\u2068][^\s\u202c\u2069]*[\u202c\u2069]?|[\u200e\u200f\u061c\u202c\u2069]/g;

function bidiSafe(text) {
  const parts = [];
  let last = 0;
  for (const m of text.matchAll(BIDI)) {
    const bdi = document.createElement("bdi");
    bdi.textContent = m[0];
    parts.push(text.slice(last, m.index), bdi);
    last = m.index + m[0].length;
  }
  parts.push(text.slice(last));
  return parts;
}

// The host a link's text names, when the text looks like an address ("shop.example/help").
function namedHost(text) {
  const t = text.trim();
  if (/\s/.test(t) || !/^(https?:\/\/)?[^/?#]+\.[^/?#.\d][^/?#.]+([/?#:]|$)/i.test(t)) return null;
  try { return new URL(/^https?:\/\//i.test(t) ? t : `https://${t}`).hostname; } catch { return null; }
}

function link(text, url) {
  let parsed = null;
  try {
    parsed = new URL(url);
  } catch { /* not an address: shown as text */ }
  if (!parsed || (parsed.protocol !== "https:" && parsed.protocol !== "http:")) return text;
  // "https://shop.example@evil.example" goes to evil.example: show that, and drop the user part.
  const misleading = parsed.username || parsed.password || namedHost(text) !== null && namedHost(text) !== parsed.hostname;
  parsed.username = parsed.password = "";
  const a = node("a", "", text);
  a.href = parsed.href;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  if (!misleading) return a;
  const host = document.createDocumentFragment();
  host.append(a, node("span", "host", ` (${parsed.hostname})`));
  return host;
}

function appendInline(parent, text) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    parent.append(...bidiSafe(text.slice(last, m.index)));
    last = m.index + m[0].length;
    if (m[1] !== undefined) parent.append(node("code", "", m[1]));
    else if (m[2] !== undefined) parent.append(appendInline(node("strong"), m[2]));
    else if (m[4] !== undefined) parent.append(m[3], appendInline(node("em"), m[4]));
    else if (m[5] !== undefined) parent.append(link(m[5], m[6]));
    else parent.append(link(m[7], m[7]));
  }
  parent.append(...bidiSafe(text.slice(last)));
  return parent;
}

// A model cites its numbered sources as "[1]" so the server can list only those under the
// answer ("From: …"); the shopper sees that list, not the bare markers.
const CITATION = /[ \t]?\[\d{1,2}\](?!\()/g;

function renderMarkdown(text) {
  const root = node("div", "body");
  for (const block of text.replace(/\r\n?/g, "\n").replace(CITATION, "").split(/\n\s*\n/)) {
    const lines = block.split("\n").filter((line) => line.trim());
    let i = 0;
    while (i < lines.length) {
      const kind = BULLET.test(lines[i]) ? BULLET : NUMBERED.test(lines[i]) ? NUMBERED : null;
      if (kind) {
        const list = node(kind === BULLET ? "ul" : "ol");
        for (; i < lines.length && kind.test(lines[i]); i++) {
          list.append(appendInline(node("li"), lines[i].match(kind)[1]));
        }
        root.append(list);
      } else {
        const para = node("p");
        for (let first = true; i < lines.length && !BULLET.test(lines[i]) && !NUMBERED.test(lines[i]); i++) {
          if (!first) para.append(node("br"));
          appendInline(para, lines[i].replace(/^#{1,6}\s+/, ""));
          first = false;
        }
        root.append(para);
      }
    }
  }
  return root;
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
});

const untilOnline = (signal) => new Promise((resolve) => {
  const done = () => { removeEventListener("online", done); resolve(); };
  addEventListener("online", done);
  signal.addEventListener("abort", done, { once: true });
});

function parseJson(text) {
  try { return JSON.parse(text); } catch { return null; }
}

function storage() {
  try { return localStorage; } catch { return null; } // blocked in some sandboxed frames
}

// The English catalogue. Every string the widget shows or announces comes from here, or from
// web/locales/<language>.json (same keys), fetched only for the language in use, or from the
// store's own overrides (data-strings, SupportChat.setStrings). {name} is filled in.
const EN = {
  open: "Open chat", close: "Close chat", closeTitle: "Close",
  unreadOne: "Open chat, 1 unread answer", unreadMany: "Open chat, {n} unread answers",
  newChat: "Start a new conversation", newTitle: "New conversation",
  heading: "Support", greeting: "Hi! How can we help you today?", log: "Conversation",
  older: "Loading earlier messages…", handoff: "Talk to a person", typing: "Agent is typing", label: "Your message",
  placeholder: "Type your message…", stop: "Stop", send: "Send",
  stopped: "Stopped", interrupted: "This answer was interrupted.", from: "From: {title}",
  offline: "You're offline. We'll reconnect when your connection is back.",
  offlineKept: "You're offline. Your message is kept here: send it when you're back online.",
  unreachable: "We couldn't reach support. Please try again.",
  tooFast: "You're sending messages too quickly.", waitFor: "Please wait {time} and try again.",
  waitMoment: "Please wait a moment and try again.",
  second: "1 second", seconds: "{n} seconds", minutes: "{n} minutes",
  unavailable: "Our assistant is unavailable right now. Please try again in a minute.",
  notSent: "Your message couldn't be sent: {reason}",
  failed: "Something went wrong on our side. Please try again.",
  lost: "The connection dropped and we couldn't reconnect.",
  unfinished: "Sorry, the assistant couldn't finish this answer. Please try again.",
  onlineNow: "We're online now", opensAt: "A person can reply from {time} your time",
  asked: "We've asked a person to join.", hoursAre: "Support hours: {hours}.", joined: "{name} joined the conversation.",
  aPerson: "A person", agent: "Agent", agentTyping: "{name} is typing", back: "The assistant is back.",
  helpful: "Helpful", notHelpful: "Not helpful", whatWrong: "What was missing? (optional)",
  emailAsk: "Nobody can reply right now. Leave your email and we'll send you the reply.", emailLabel: "Your email",
  emailSave: "Email me", emailSaved: "Thanks! We'll email {email} when someone replies.",
  linkExpired: "This link has expired or is not valid. Please start a new conversation.",
  thanks: "Thanks for your feedback.", solved: "Did we solve your problem?", yes: "Yes, thanks", no: "Not really",
};
// Catalogues served at /locales/<language>.json; any other language reads English.
const SHIPPED = ["de", "es", "fr", "hi"];
const RTL = /^(ar|he|fa|ur|ps|yi|dv|ckb)(-|$)/i;
const NOTES = { cancelled: "stopped", error: "interrupted", interrupted: "interrupted" };
const primary = (tag) => String(tag).toLowerCase().split(/[-_]/)[0];

// data-locale if set, else the first of the browser's languages the widget has strings for,
// else the site's default (data-default-locale), else English.
function chooseLocale(asked, siteDefault) {
  if (asked) return asked;
  const browser = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language];
  return browser.find((tag) => tag && (primary(tag) === "en" || SHIPPED.includes(primary(tag))))
    || siteDefault || "en";
}

async function fetchStrings(url) {
  try {
    const response = await fetch(url);
    const strings = response.ok ? await response.json() : null;
    return strings && typeof strings === "object" ? strings : {};
  } catch { return {}; } // English (or the catalogue) stays: the widget works without them
}

class SupportChat extends HTMLElement {
  #root;
  #el;
  #sessionId = null;
  #convo = null;
  #convoAt = null; // the conversation stream's last event id seen (null: history not read yet)
  #involved = false; // a person is asked for or involved
  #typedAt = 0;
  #typingTimer = 0;
  #turn = null; // the answer in flight: at most one at a time
  #oldestId = null;
  #hasMore = false;
  #loadingOlder = false;
  #stickToBottom = true;
  #lastScrollTop = 0;
  #unread = 0;
  #noticeTimer = 0;
  #noticeKind = "";
  #historyLoaded = null;
  #checkedAt = 0;
  #hours = null; // GET /chat/hours, asked for when the panel opens (at most once a minute)
  #hoursAt = -Infinity;
  #nobody = false; // askEmail: nobody can reply soon
  #layers = [{}, {}, {}]; // the language's catalogue, data-strings, setStrings: later ones win

  // A string from the catalogues, {name} replaced by vars[name].
  #t(key, vars = {}) {
    let text = EN[key];
    for (const layer of this.#layers) if (typeof layer[key] === "string") text = layer[key];
    return text.replace(/\{(\w+)\}/g, (all, name) => (name in vars ? String(vars[name]) : all));
  }

  setStrings(strings, layer = 2) {
    if (!strings || typeof strings !== "object") return;
    this.#layers[layer] = { ...this.#layers[layer], ...strings };
    if (this.#el) this.#applyStrings();
  }

  #applyStrings() {
    for (const el of this.#root.querySelectorAll("[data-t]")) {
      for (const part of el.dataset.t.split(" ")) {
        const [attr, key] = part.includes("=") ? part.split("=") : [null, part];
        if (attr) el.setAttribute(attr, this.#t(key));
        else el.textContent = this.#t(key);
      }
    }
    this.#root.querySelector("h2").textContent = this.getAttribute("heading") || this.#t("heading");
    this.#el.greeting.textContent = this.getAttribute("greeting") || this.#t("greeting");
    this.#renderBadge();
    this.#renderHours();
  }

  async #loadHours() {
    if (performance.now() - this.#hoursAt < 60000) return;
    this.#hoursAt = performance.now();
    try {
      const response = await fetch(this.#url("/chat/hours", {}));
      if (response.ok) this.#hours = await response.json();
    } catch { /* hours are a courtesy: nothing is shown without them */ }
    this.#renderHours();
  }

  // The store's hours in the shopper's own time zone (the browser's), in their language.
  #renderHours() {
    const hours = this.#hours, el = this.#root.querySelector(".hours");
    const opens = hours && hours.known && new Date(hours.opensAt);
    // Never "online now" beside "Nobody can reply" (#askEmail).
    el.hidden = !hours || !hours.known || (hours.open ? this.#nobody : !(opens > 0));
    if (el.hidden) return;
    if (hours.open) { el.textContent = this.#t("onlineNow"); return; }
    const today = opens.toDateString() === new Date().toDateString();
    const time = new Intl.DateTimeFormat(this.#el.panel.lang || undefined,
      { weekday: today ? undefined : "short", hour: "numeric", minute: "2-digit" }).format(opens);
    el.textContent = this.#t("opensAt", { time });
  }

  async #loadStrings() {
    const locale = chooseLocale(this.getAttribute("locale"), this.getAttribute("default-locale"));
    const { panel } = this.#el;
    const language = primary(locale);
    // lang names the strings' language: English where there is no catalogue and no store file.
    panel.lang = SHIPPED.includes(language) || this.getAttribute("strings") ? locale : "en";
    panel.dir = RTL.test(locale) ? "rtl" : "ltr";
    const [catalogue, custom] = await Promise.all([
      SHIPPED.includes(language) ? fetchStrings(this.#url(`/locales/${language}.json`)) : {},
      this.getAttribute("strings") ? fetchStrings(new URL(this.getAttribute("strings"), document.baseURI)) : {},
    ]);
    this.setStrings(catalogue, 0);
    this.setStrings(custom, 1);
    this.dataset.locale = locale; // the strings are in: tests and stores can wait for this
  }

  connectedCallback() {
    if (this.#root) return;
    this.#root = this.attachShadow({ mode: "open" });
    this.#root.innerHTML = TEMPLATE; // constant markup, no data in it
    const q = (sel) => this.#root.querySelector(sel);
    const el = (this.#el = {
      launcher: q("[data-chat-launcher]"), badge: q(".badge"), panel: q(".panel"),
      notice: q(".notice"), log: q(".log"), older: q(".older"), greeting: q(".greeting"),
      typing: q(".typing"), input: q("textarea"), send: q(".send"), stop: q(".stop"),
      handoff: q(".handoff"),
    });
    this.#applyStrings();
    this.#loadStrings();
    const accent = this.getAttribute("accent");
    if (accent && CSS.supports("color", accent)) this.style.setProperty("--sc-accent", accent);

    el.launcher.onclick = () => (this.hasAttribute("open") ? this.close() : this.open());
    q("[data-chat-close]").onclick = () => this.close();
    q("[data-chat-new]").onclick = () => this.reset();
    q("[data-chat-handoff]").onclick = () => this.#handoff();
    el.stop.onclick = () => this.#stop();
    q("form").onsubmit = (e) => { e.preventDefault(); this.#send(); };
    this.#root.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && this.hasAttribute("open")) { e.preventDefault(); this.close(); }
    });
    el.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); this.#send(); }
    });
    el.input.addEventListener("input", () => { this.#autogrow(); this.#typing(); });
    el.log.addEventListener("scroll", () => {
      const log = el.log;
      // Only the shopper moves the view up. The log shrinking (the typing line, a notice, a
      // taller message box) leaves a gap but moves nothing, so it never counts as scrolling away.
      if (log.scrollHeight - log.clientHeight - log.scrollTop <= 24) this.#stickToBottom = true;
      else if (log.scrollTop < this.#lastScrollTop) this.#stickToBottom = false;
      this.#lastScrollTop = log.scrollTop;
      if (log.scrollTop < 40) this.#loadOlder();
    });
    new ResizeObserver(() => this.#scrollToBottom()).observe(el.log);
    // Where the panel fills the screen it is modal: Tab goes round inside it.
    el.panel.addEventListener("keydown", (e) => { if (e.key === "Tab" && PHONE.matches) this.#trapTab(e); });
    PHONE.addEventListener("change", () => el.panel.setAttribute("aria-modal", String(PHONE.matches)));
    addEventListener("offline", () =>
      this.#notice(this.#t("offline"), 0, "offline"));
    addEventListener("online", () => { if (this.#noticeKind === "offline") this.#clearNotice(); });
    document.addEventListener("visibilitychange", () => this.#stream());

    // A reply email's link (app/shopper_email.py): the token leaves the address bar at once.
    const reopen = /^#chat-reopen=([\w-]{20,100})$/.exec(location.hash);
    if (reopen) history.replaceState(history.state, "", location.pathname + location.search);
    this.#sessionId = storage()?.getItem(this.#storageKey()) || null;
    if (reopen) this.#historyLoaded = this.#reopen(reopen[1]);
    else if (this.#sessionId) this.#historyLoaded = this.#loadHistory();
    document.addEventListener("visibilitychange", () => { if (!document.hidden && this.hasAttribute("open")) this.#checkResolved(); });
    const openAtLoad = this.getAttribute("open-at-load");
    if (openAtLoad !== null && openAtLoad !== "false") this.open();
  }

  open() {
    this.setAttribute("open", "");
    this.#el.panel.hidden = false;
    this.#el.panel.setAttribute("aria-modal", String(PHONE.matches));
    this.#el.launcher.setAttribute("aria-expanded", "true");
    this.#unread = 0;
    this.#renderBadge();
    this.#scrollToBottom(true);
    this.#el.input.focus();
    this.#fillIfShort();
    this.#loadHours();
    this.#checkResolved();
    this.#stream();
  }

  close() {
    const hadFocus = this.#root.activeElement !== null;
    this.removeAttribute("open");
    this.#el.panel.hidden = true;
    this.#el.launcher.setAttribute("aria-expanded", "false");
    this.#renderBadge();
    this.#stream();
    if (hadFocus) this.#el.launcher.focus();
  }

  // The store's signed customer token (data-customer-token, SupportChat.identify); null: anonymous.
  identify(token) {
    if (token) this.setAttribute("customer-token", token);
    else this.removeAttribute("customer-token");
  }

  reset() {
    const turn = this.#turn;
    if (turn) { // a new conversation: this answer is no longer wanted
      if (turn.messageId) this.#requestCancel(turn);
      turn.abort.abort();
      this.#endTurn();
    }
    this.#sessionId = this.#oldestId = null;
    this.#follow(false);
    this.#hasMore = false;
    storage()?.removeItem(this.#storageKey());
    for (const old of this.#el.log.querySelectorAll("[data-chat-message],:scope>.note,.csat,[data-chat-offer]")) old.remove();
    this.#clearNotice();
    this.#stickToBottom = true;
    if (this.hasAttribute("open")) this.#el.input.focus();
  }

  #url(path, params) {
    const base = (this.getAttribute("api") || location.origin).replace(/\/+$/, "");
    const site = this.getAttribute("site");
    if (params && site) params = { ...params, siteKey: site };
    return `${base}${path}${params ? `?${new URLSearchParams(params)}` : ""}`;
  }

  #storageKey() {
    return `support-chat:${this.getAttribute("api") || location.origin}:sessionId`;
  }

  #rememberSession(id) {
    if (!id || id === this.#sessionId) return;
    this.#sessionId = id;
    this.#convoAt = 0; // a conversation new to this widget: its stream from the start
    storage()?.setItem(this.#storageKey(), id);
    this.#follow(false);
  }

  // A person is asked for: the conversation becomes `waiting` and its stream opens.
  async #handoff() {
    if (!this.#sessionId) return;
    const response = await fetch(this.#url(`/chat/conversations/${encodeURIComponent(this.#sessionId)}/handoff`, {}), { method: "POST" }).catch(() => null);
    if (!response || !response.ok) return response ? this.#httpNotice(response) : this.#networkNotice();
    const { supportHours, askEmail } = await response.json();
    this.#say(this.#t("asked") + (supportHours ? " " + this.#t("hoursAre", { hours: supportHours }) : ""));
    this.#follow(true);
    if (askEmail) this.#askEmail();
  }

  async #reopen(token) {
    const response = await fetch(this.#url("/chat/reopen", {}), { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token }) }).catch(() => null);
    const found = response?.ok && (await response.json()).sessionId;
    if (found) {
      this.#sessionId = found;
      storage()?.setItem(this.#storageKey(), found);
      await this.#loadHistory();
    }
    this.open();
    if (!found) this.#notice(this.#t("linkExpired"));
  }

  // Nobody can reply soon: the shopper may leave an address for the reply (once per widget).
  #askEmail() {
    this.#nobody = true;
    this.#renderHours();
    if (this.#root.querySelector("[data-chat-email]")) return;
    const form = node("form", "ask"), input = document.createElement("input");
    const label = node("label", "", this.#t("emailLabel"));
    form.setAttribute("data-chat-email", "");
    Object.assign(input, { type: "email", required: true, autocomplete: "email", id: "email" });
    label.htmlFor = "email";
    const save = node("button", "send", this.#t("emailSave"));
    form.append(node("p", "", this.#t("emailAsk")), label, input, save);
    form.onsubmit = async (e) => {
      e.preventDefault();
      const email = input.value.trim();
      if (await this.#post(`/chat/conversations/${encodeURIComponent(this.#sessionId)}/email`, {}, { email, pageUrl: location.href })) form.replaceChildren(node("p", "", this.#t("emailSaved", { email })));
    };
    this.#el.log.append(form);
    this.#scrollToBottom();
  }

  #say(text) {
    this.#el.log.append(node("p", "note", text));
    this.#scrollToBottom();
  }

  // The conversation's own stream: open while a person is asked for or involved, and while the
  // panel is open in a visible tab, so an agent who steps in appears at once; else closed, so an
  // idle widget holds no connection. It reopens from the last event id seen (at first the
  // history's streamEventId): nothing is missed or shown twice. EventSource resumes by itself.
  #follow(on) {
    this.#involved = on;
    this.#el.handoff.hidden = on || !this.#sessionId;
    if (on) for (const offer of this.#el.log.querySelectorAll("[data-chat-offer]")) offer.remove();
    this.#stream();
  }

  #stream() {
    if (!this.#sessionId || this.#convoAt === null || !(this.#involved || this.hasAttribute("open") && !document.hidden)) {
      this.#convo?.close();
      this.#convo = null;
      return;
    }
    if (this.#convo) return;
    const source = this.#convo = new EventSource(this.#url(`/chat/conversations/${encodeURIComponent(this.#sessionId)}/stream`, this.#convoAt ? { lastEventId: this.#convoAt } : {}));
    const on = (kind, handle) => source.addEventListener(kind, (e) => {
      this.#convoAt = Math.max(this.#convoAt, Number(e.lastEventId) || 0);
      handle(parseJson(e.data) || {});
    });
    on("message", (m) => {
      if (m.sender !== "agent" || this.#el.log.querySelector(`[data-message-id="${CSS.escape(m.id)}"]`)) return;
      this.#el.typing.hidden = true;
      this.#addMessage("agent", m.text || "", m);
      this.#scrollToBottom();
    });
    on("status", ({ status, agentName, askEmail }) => {
      if (askEmail) this.#askEmail();
      if (status === "human") this.#say(this.#t("joined", { name: agentName || this.#t("aPerson") }));
      if (status === "human" || status === "waiting") this.#follow(true);
      if (status === "bot" || status === "resolved") { if (this.#involved) this.#say(this.#t("back")); this.#follow(false); } // back from a person only
      if (status === "resolved") this.#askSolved();
    });
    on("typing", ({ sender, agentName }) => {
      if (sender !== "agent" || this.#turn) return;
      const { typing } = this.#el;
      typing.firstChild.textContent = this.#t("agentTyping", { name: agentName || this.#t("agent") });
      typing.hidden = false;
      clearTimeout(this.#typingTimer);
      this.#typingTimer = setTimeout(() => {
        typing.firstChild.textContent = this.#t("typing");
        if (!this.#turn) typing.hidden = true;
      }, 4000);
    });
  }

  #typing() {
    if (!this.#involved || Date.now() - this.#typedAt < 3000) return;
    this.#typedAt = Date.now();
    fetch(this.#url(`/chat/conversations/${encodeURIComponent(this.#sessionId)}/typing`, {}), { method: "POST" }).catch(() => {});
  }

  async #send() {
    const { input } = this.#el;
    const text = input.value.trim();
    if (!text || this.#turn) return;
    await this.#historyLoaded; // so the new message lands below the old ones
    if (this.#turn) return;
    this.#clearNotice();
    input.value = "";
    this.#autogrow();
    const userEl = this.#addMessage("user", text);
    this.#stickToBottom = true;
    this.#scrollToBottom();
    const turn = this.#beginTurn();

    // Whenever the server did not take the message, the typed text goes back into the box.
    const giveBack = (explain) => {
      if (turn !== this.#turn) return; // reset() or the stop timer already ended this turn
      userEl.remove();
      input.value = input.value ? `${text}\n${input.value}` : text;
      this.#endTurn(); // first: without the Stop button the box is wider, and measures so
      explain?.();
    };

    let response;
    try {
      const body = { message: text };
      if (this.#sessionId) body.sessionId = this.#sessionId;
      if (this.hasAttribute("site")) body.siteKey = this.getAttribute("site");
      if (this.hasAttribute("customer-token")) body.customerToken = this.getAttribute("customer-token");
      response = await fetch(this.#url("/chat/stream"), {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify(body),
        signal: turn.abort.signal,
      });
    } catch {
      return giveBack(turn.abort.signal.aborted ? null : () => this.#networkNotice());
    }
    if (!response.ok) return giveBack(() => this.#httpNotice(response));

    let outcome = await this.#consume(response, turn);
    // Cut before the server said which answer this is: there is nothing to resume.
    if (outcome === "dropped" && !turn.messageId) return giveBack(() => this.#networkNotice());
    if (outcome === "dropped") outcome = await this.#resume(turn);
    this.#settle(turn, outcome);
  }

  #beginTurn() {
    const turn = { lastEventId: 0, text: "", abort: new AbortController() };
    this.#turn = turn;
    this.#el.send.disabled = true;
    this.#el.typing.hidden = false;
    this.#el.stop.hidden = this.#el.stop.disabled = false;
    return turn;
  }

  #endTurn() {
    const { stop, input } = this.#el;
    const stopHadFocus = this.#root.activeElement === stop;
    this.#turn = null;
    this.#el.typing.hidden = stop.hidden = true;
    this.#el.send.disabled = false;
    if (stopHadFocus) input.focus(); // not <body>: the shopper is still in the chat
    this.#autogrow();
  }

  // Reads one SSE response into the turn: "done", "error", "aborted", or "dropped" when it
  // ended or broke before the answer finished (so it can be resumed).
  async #consume(response, turn) {
    try {
      for await (const frame of readSse(response.body)) {
        if (turn !== this.#turn) return "aborted";
        const data = parseJson(frame.data) || {};
        if (frame.event === "meta") {
          this.#rememberSession(data.sessionId);
          turn.messageId = data.messageId || turn.messageId;
          if (turn.stopRequested) this.#requestCancel(turn);
        } else if (frame.event === "token") {
          const id = Number(frame.id);
          // The server sends only tokens after Last-Event-ID; this keeps text single anyway.
          if (id && id <= turn.lastEventId) continue;
          if (id) turn.lastEventId = id;
          if (turn.replaceText) { turn.text = turn.replaceText = ""; turn.live = null; }
          turn.text += typeof data.text === "string" ? data.text : "";
          this.#el.typing.hidden = true;
          this.#renderLive(turn);
        } else if (frame.event === "tool") {
          const id = Number(frame.id);
          if (id && id <= turn.lastEventId) continue;
          if (id) turn.lastEventId = id;
          (turn.tools ||= []).push(data);
          this.#el.typing.hidden = true;
          this.#renderLive(turn);
        } else if (frame.event === "done") {
          if (typeof data.text === "string") turn.text = data.text;
          turn.status = data.status || "complete";
          turn.sources = Array.isArray(data.sources) ? data.sources : [];
          turn.offer = data.offerPerson === true;
          return "done";
        } else if (frame.event === "error") {
          // The instance writing it stopped, or this one lost the shared log: follow it again.
          if ((data.code === "interrupted" || data.code === "unavailable") && data.retryable) return "dropped";
          turn.error = data;
          return "error";
        }
      }
    } catch { /* a broken connection: same as an early end */ }
    return turn.abort.signal.aborted ? "aborted" : "dropped";
  }

  // Picks an answer up from the last token seen: after a dropped connection, or after a
  // reload while the answer was still being written (then from 0, replacing its text).
  async #resume(turn) {
    const { signal } = turn.abort;
    for (let attempt = 0; attempt < RESUME_ATTEMPTS; attempt++) {
      if (!navigator.onLine) await untilOnline(signal);
      else if (attempt) await sleep(Math.min(500 * 2 ** attempt, 8000), signal);
      if (signal.aborted || turn.stopRequested) return "aborted";
      let response;
      try {
        const lastEventId = String(turn.lastEventId);
        response = await fetch(
          this.#url(`/chat/stream/${encodeURIComponent(turn.messageId)}`, { sessionId: this.#sessionId || "", lastEventId }),
          { headers: { Accept: "text/event-stream", "Last-Event-ID": lastEventId }, signal },
        );
      } catch {
        continue;
      }
      if (response.status === 404) {
        turn.error = { code: "not_found" };
        return "error";
      }
      if (!response.ok) continue;
      const before = turn.lastEventId;
      const outcome = await this.#consume(response, turn);
      if (outcome !== "dropped") return outcome;
      if (turn.lastEventId > before) attempt = -1; // it made progress: count afresh
    }
    turn.error = { code: "connection_lost" };
    return "error";
  }

  #settle(turn, outcome) {
    if (turn !== this.#turn) return; // reset() or the stop timer got here first
    clearTimeout(turn.stopTimer);
    if (outcome === "error") turn.status = "error";
    if (outcome === "aborted") turn.status = "cancelled";
    this.#finishMessage(turn);
    if (outcome === "error") this.#streamErrorNotice(turn.error || {});
    this.#endTurn();
    if (!this.hasAttribute("open")) {
      this.#unread += 1;
      this.#renderBadge();
    }
  }

  #stop() {
    const turn = this.#turn;
    if (!turn || turn.stopRequested) return;
    turn.stopRequested = true;
    this.#el.stop.disabled = true;
    this.#el.input.focus(); // a disabled, then hidden, button would drop focus to <body>
    if (turn.messageId) this.#requestCancel(turn); // else as soon as meta names the answer
    // If the server never confirms, stop listening anyway and keep what has arrived.
    turn.stopTimer = setTimeout(() => {
      turn.abort.abort();
      this.#settle(turn, "aborted");
    }, STOP_GRACE_MS);
  }

  #requestCancel(turn) {
    if (turn.cancelSent) return;
    turn.cancelSent = true;
    const url = this.#url(`/chat/messages/${encodeURIComponent(turn.messageId)}/cancel`, { sessionId: this.#sessionId || "" });
    fetch(url, { method: "POST" }).catch(() => {});
  }

  #addMessage(sender, text, { id, status, sources, agentName, tools, feedback } = {}, before = null) {
    const el = node("div", "msg");
    el.dir = "auto"; // Arabic or Hebrew reads right to left, whatever the page's direction
    el.setAttribute("data-chat-message", "");
    el.dataset.sender = sender;
    if (id) el.dataset.messageId = id;
    if (sender === "agent") el.append(node("div", "who", agentName || this.#t("agent")));
    if (sender === "ai") this.#fillAnswer(el, text, status || "complete", Array.isArray(sources) ? sources : [], Array.isArray(tools) ? tools : [], feedback);
    else el.append(...bidiSafe(text));
    if (sender === "agent") this.#rateBar(el, feedback);
    this.#el.log.insertBefore(el, before);
    return el;
  }

  #fillAnswer(el, text, status, sources = [], tools = [], feedback = null) {
    el.dataset.status = status;
    el.replaceChildren(...orderCards(tools), renderMarkdown(text));
    for (const title of new Set(sources.map((s) => s && s.title).filter(Boolean))) {
      el.append(node("div", "note", this.#t("from", { title })));
    }
    if (NOTES[status]) el.append(node("div", "note", this.#t(NOTES[status])));
    if (status === "complete") this.#rateBar(el, feedback);
  }

  // Under a finished answer (the assistant's or a person's): one vote, changeable; a thumbs
  // down may say in a line what was missing.
  #rateBar(el, feedback) {
    const id = el.dataset.messageId;
    if (!id) return;
    const bar = node("div", "rate");
    let why;
    const vote = async (rating, comment) => {
      if (!await this.#post(`/chat/messages/${id}/feedback`, { sessionId: this.#sessionId }, { rating, comment })) return;
      for (const b of bar.children) b.ariaPressed = b.dataset.rating === rating;
      why?.remove();
      if (comment !== undefined) return el.append(node("span", "note", this.#t("thanks")));
      if (rating !== "down") return;
      // Made on demand: hidden text would count as the answer's.
      const box = node("input");
      why = node("form", "why");
      box.maxLength = 500;
      box.ariaLabel = box.placeholder = this.#t("whatWrong");
      why.append(box, node("button", "", this.#t("send")));
      why.onsubmit = (e) => { e.preventDefault(); vote("down", box.value); };
      el.append(why);
      box.focus();
    };
    for (const rating of ["up", "down"]) {
      const b = node("button");
      b.innerHTML = THUMB; // constant markup
      b.dataset.rating = rating;
      b.ariaLabel = this.#t(rating === "up" ? "helpful" : "notHelpful");
      b.ariaPressed = feedback?.rating === rating;
      b.onclick = () => vote(rating);
      bar.append(b);
    }
    el.append(bar);
  }

  async #post(path, params, body) {
    const response = await fetch(this.#url(path, params), { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }).catch(() => null);
    if (!response || !response.ok) return response ? this.#httpNotice(response) : this.#networkNotice();
    return true;
  }

  // Once a person resolved the conversation: "Did we solve your problem?", asked once.
  #askSolved() {
    const key = `${this.#storageKey()}:csat:${this.#sessionId}`;
    if (!this.#sessionId || this.#root.querySelector(".csat") || storage()?.getItem(key)) return;
    storage()?.setItem(key, "1");
    const box = node("div", "rate csat", this.#t("solved"));
    box.role = "group";
    for (const answer of ["yes", "no"]) {
      const b = node("button", "", this.#t(answer));
      b.onclick = async () => {
        if (await this.#post(`/chat/conversations/${encodeURIComponent(this.#sessionId)}/csat`, {}, { solved: answer === "yes" })) box.replaceChildren(this.#t("thanks"));
      };
      box.append(b);
    }
    this.#el.log.append(box);
    this.#scrollToBottom();
  }

  // Tokens arrive faster than frames: draw at most once per frame, whatever came meanwhile.
  #renderLive(turn) {
    turn.frame ||= requestAnimationFrame(() => {
      turn.frame = 0;
      if (turn === this.#turn) this.#paintLive(turn);
    });
  }

  // Blocks before the last blank line are final: they are parsed and drawn once, and only the
  // open block after it is redrawn, so a long answer costs its length, not length x tokens.
  // While an answer streams its text is hidden from the live region, so a screen reader
  // hears the finished answer once (when #finishMessage puts it in), not every token.
  #paintLive(turn) {
    turn.el ||= this.#addMessage("ai", "", { id: turn.messageId });
    if (!turn.live) {
      turn.el.dataset.status = "streaming";
      turn.live = node("div", "body");
      turn.live.setAttribute("aria-hidden", "true");
      turn.cards = node("div");
      turn.cardsFor = 0;
      turn.el.replaceChildren(turn.cards, turn.live);
      turn.settled = 0;
      turn.tail = [];
    }
    const { text } = turn;
    if (turn.tools && turn.cardsFor !== turn.tools.length) {
      turn.cardsFor = turn.tools.length;
      turn.cards.replaceChildren(...orderCards(turn.tools));
    }
    for (const old of turn.tail) old.remove();
    const blankLine = text.lastIndexOf("\n\n");
    if (blankLine >= turn.settled) {
      turn.live.append(...renderMarkdown(text.slice(turn.settled, blankLine + 2)).childNodes);
      turn.settled = blankLine + 2;
    }
    turn.tail = [...renderMarkdown(text.slice(turn.settled)).childNodes];
    turn.live.append(...turn.tail);
    this.#scrollToBottom();
  }

  #finishMessage(turn) {
    cancelAnimationFrame(turn.frame);
    if (!turn.el && !turn.text && turn.status === "error") return; // the notice says it all
    if (turn.status === "forwarded") return turn.el?.remove(); // a person answers, not the assistant
    turn.el ||= this.#addMessage("ai", "", { id: turn.messageId });
    if (turn.messageId) turn.el.dataset.messageId = turn.messageId;
    this.#fillAnswer(turn.el, turn.text, turn.status || "complete", turn.sources, turn.tools);
    if (turn.offer) this.#offer(turn.el);
    this.#scrollToBottom();
  }

  // The assistant could not help, or a person was asked for in words: offer one (app/person_offer.py).
  #offer(el) {
    if (this.#involved || !el) return;
    for (const old of this.#el.log.querySelectorAll("[data-chat-offer]")) old.remove();
    const button = node("button", "handoff", this.#t("handoff"));
    button.type = "button";
    button.setAttribute("data-chat-offer", "");
    button.onclick = () => this.#handoff();
    el.after(button);
  }

  // Staff may resolve a conversation no person joined, while the widget holds no stream for it:
  // its status is read again when the shopper comes back (opens the panel, returns to the tab).
  async #checkResolved() {
    if (!this.#sessionId || this.#convo || this.#turn || Date.now() - this.#checkedAt < 5000) return;
    this.#checkedAt = Date.now();
    const page = await this.#fetchHistory(null, 1).catch(() => null);
    if (page?.status === "resolved") this.#askSolved();
  }

  async #fetchHistory(before, limit = HISTORY_PAGE) {
    const params = { limit: String(limit) };
    if (before) params.before = before;
    const response = await fetch(this.#url(`/chat/history/${encodeURIComponent(this.#sessionId)}`, params));
    if (response.status === 404) return null;
    if (!response.ok) throw new Error(`history: HTTP ${response.status}`);
    return response.json();
  }

  #addPage(page, before) {
    const messages = (page && page.messages) || [];
    for (const m of messages) this.#addMessage(m.sender, m.text || "", m, before);
    if (messages.length) this.#oldestId = messages[0].id;
    this.#hasMore = Boolean(page && page.hasMore && messages.length);
    return messages;
  }

  async #loadHistory() {
    const { log } = this.#el;
    log.setAttribute("aria-busy", "true"); // a page of old messages is not news to announce
    try {
      this.#checkedAt = Date.now();
      const page = await this.#fetchHistory(null);
      if (!page) { // the server no longer knows this session: start afresh
        this.#sessionId = null;
        storage()?.removeItem(this.#storageKey());
        return;
      }
      const messages = this.#addPage(page, null);
      this.#convoAt = page.streamEventId || 0;
      this.#follow(page.status === "waiting" || page.status === "human");
      if (page.status === "waiting") this.#say(this.#t("asked"));
      if (page.askEmail) this.#askEmail();
      const last = messages[messages.length - 1];
      if (last?.offerPerson && page.status === "bot") this.#offer(log.querySelector(`[data-message-id="${CSS.escape(last.id)}"]`));
      if (page.status === "resolved") this.#askSolved();
      this.#scrollToBottom(true);
      this.#fillIfShort();
      if (last && last.sender === "ai" && last.status === "streaming" && !this.#turn) this.#pickUp(last);
    } catch { /* history is a convenience; chatting still works */ } finally {
      log.removeAttribute("aria-busy");
    }
  }

  // An answer still being written when the page loaded: replay it from its first token.
  async #pickUp(message) {
    const turn = this.#beginTurn();
    turn.messageId = message.id;
    turn.el = this.#el.log.lastElementChild;
    turn.text = message.text || "";
    turn.replaceText = true;
    if (turn.text) this.#el.typing.hidden = true;
    this.#settle(turn, await this.#resume(turn));
  }

  async #loadOlder() {
    if (!this.#hasMore || this.#loadingOlder) return;
    this.#loadingOlder = true;
    const { log, older, greeting } = this.#el;
    older.hidden = false;
    log.setAttribute("aria-busy", "true");
    try {
      const page = await this.#fetchHistory(this.#oldestId);
      const heightBefore = log.scrollHeight;
      this.#addPage(page, greeting.nextElementSibling);
      // Keep what the shopper is reading in place while older messages appear above it.
      log.scrollTop += log.scrollHeight - heightBefore;
    } catch { /* tried again on the next scroll */ } finally {
      this.#loadingOlder = false;
      older.hidden = true;
      log.removeAttribute("aria-busy");
    }
    this.#fillIfShort();
  }

  // Older pages load on scrolling up, which a list too short to scroll never does.
  #fillIfShort() {
    const { log } = this.#el;
    if (this.#hasMore && this.hasAttribute("open") && log.scrollHeight <= log.clientHeight) this.#loadOlder();
  }

  #notice(text, clearAfterMs = 0, kind = "") {
    clearTimeout(this.#noticeTimer);
    this.#noticeKind = kind;
    this.#el.notice.textContent = text;
    this.#el.notice.hidden = false;
    if (clearAfterMs) this.#noticeTimer = setTimeout(() => this.#clearNotice(), clearAfterMs);
  }

  #clearNotice() {
    clearTimeout(this.#noticeTimer);
    this.#el.notice.hidden = true;
    this.#el.notice.textContent = "";
  }

  #networkNotice() {
    this.#notice(this.#t(navigator.onLine ? "unreachable" : "offlineKept"));
  }

  async #httpNotice(response) {
    const body = parseJson(await response.text().catch(() => "")) || {};
    const reason = body.error && typeof body.error.message === "string" ? body.error.message : "";
    const status = response.status;
    if (status === 429) {
      const wait = Math.ceil(Number(response.headers.get("Retry-After")));
      const time = wait > 90 ? this.#t("minutes", { n: Math.ceil(wait / 60) })
        : this.#t(wait === 1 ? "second" : "seconds", { n: wait });
      this.#notice(`${this.#t("tooFast")} ${wait > 0 ? this.#t("waitFor", { time }) : this.#t("waitMoment")}`,
        Math.max(wait, 5) * 1000);
    } else if (status === 503) {
      this.#notice(this.#t("unavailable"));
    } else if (status < 500 && reason) {
      this.#notice(this.#t("notSent", { reason }));
    } else {
      this.#notice(this.#t("failed"));
    }
  }

  #streamErrorNotice(error) {
    this.#notice(this.#t(error.code === "connection_lost" ? "lost" : "unfinished"));
  }

  #trapTab(e) {
    const items = [...this.#el.panel.querySelectorAll("button, textarea, a[href], [tabindex]")]
      .filter((item) => !item.disabled && item.tabIndex >= 0 && item.getClientRects().length);
    const active = this.#root.activeElement;
    const [first, last] = [items[0], items[items.length - 1]];
    if (e.shiftKey ? active === first : active === last) {
      e.preventDefault();
      (e.shiftKey ? last : first).focus();
    }
  }

  #renderBadge() {
    const { badge, launcher } = this.#el;
    const unread = this.#unread;
    badge.hidden = !unread;
    badge.textContent = unread ? String(unread) : "";
    launcher.setAttribute("aria-label", this.#t(this.hasAttribute("open") ? "close"
      : unread ? (unread === 1 ? "unreadOne" : "unreadMany") : "open", { n: unread }));
  }

  #autogrow() {
    const { input } = this.#el;
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight + 2, 140)}px`;
  }

  #scrollToBottom(force = false) {
    const { log } = this.#el;
    if (force || this.#stickToBottom) log.scrollTop = log.scrollHeight;
  }
}

customElements.define("support-chat", SupportChat);

// The script tag configures the one widget on the page; a page may also place
// <support-chat> itself, with the same options as attributes.
let widget = document.querySelector("support-chat");
if (!widget) {
  widget = document.createElement("support-chat");
  const options = script ? script.dataset : {};
  const api = options.api || (script && script.src ? new URL(script.src, document.baseURI).origin : "");
  const attributes = { api, site: options.site, "customer-token": options.customerToken, heading: options.title, greeting: options.greeting,
    accent: options.accent, locale: options.locale, "default-locale": options.defaultLocale, strings: options.strings };
  if (options.position === "left") attributes.position = "left";
  if (options.open !== undefined) attributes["open-at-load"] = options.open || "true";
  for (const [name, value] of Object.entries(attributes)) if (value) widget.setAttribute(name, value);
  (document.body || document.documentElement).append(widget);
}

window.SupportChat = {
  open: () => widget.open(),
  close: () => widget.close(),
  reset: () => widget.reset(),
  setStrings: (strings) => widget.setStrings(strings),
  identify: (token) => widget.identify(token),
};
})();
