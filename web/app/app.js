// @ts-check
// The web inbox: WhatsApp Web for the people who answer a business's
// customers. Live over Socket.IO (resuming from `lastSeq`), REST for the
// rest. See shared/CONTRACT.md "The web inbox" for the names tests rely on.
import { html, render, useEffect, useReducer, useRef, useState } from "./vendor/preact-htm-3.1.1.js";
import { io } from "./vendor/socket.io-client-4.8.4.js";
import { ApiFailure, Unauthorized, post, query, request, setToken, token } from "./api.js";
import { Chat } from "./chat.js";
import { Composer, templateBody } from "./composer.js";
import { listTime, numberLabel, phoneOf } from "./format.js";
import { ChatIcon, NewChatIcon, SearchIcon } from "./icons.js";
import { ConversationList, displayName } from "./list.js";
import { NewChat, NumberSwitcher } from "./numbers.js";
import {
  applyStatus,
  conversationsWithMessage,
  conversationsWithStatus,
  mergeConversations,
  mergeMessages,
  ofNumber,
  upsertMessage,
  windowOpen,
} from "./state.js";

/** @typedef {import("./types.js").Conversation} Conversation */
/** @typedef {import("./types.js").Message} Message */
/** @typedef {import("./types.js").StatusUpdate} StatusUpdate */
/** @typedef {import("./types.js").BusinessNumber} BusinessNumber */
/** @typedef {import("./composer.js").Template} Template */

const PAGE = 50;
/** Most messages kept per conversation: a busier chat drops its oldest (paged in again on scroll). */
const KEPT = 1000;

/**
 * A chat's messages capped at the newest `KEPT` (`more` then: older ones can be paged in).
 * @param {State} s @param {string} id @param {Message[]} list
 * @returns {Pick<State, "messages" | "moreMessages">}
 */
function keep(s, id, list) {
  if (list.length <= KEPT) return { messages: { ...s.messages, [id]: list }, moreMessages: s.moreMessages };
  return {
    messages: { ...s.messages, [id]: list.slice(list.length - KEPT) },
    moreMessages: { ...s.moreMessages, [id]: true },
  };
}
const TITLE = "WhatsApp clone · Inbox";
/** The business number chosen in the switcher, kept for the browser tab (sessionStorage). */
const NUMBER_KEY = "inbox.phoneNumberId";

/** @returns {string} */
function storedNumber() {
  try {
    return sessionStorage.getItem(NUMBER_KEY) ?? "";
  } catch {
    return "";
  }
}

/** @param {string} id */
function storeNumber(id) {
  try {
    if (id) sessionStorage.setItem(NUMBER_KEY, id);
    else sessionStorage.removeItem(NUMBER_KEY);
  } catch {
    // Storage refused: the choice lasts until the page closes.
  }
}

/**
 * The numbers' unread counts after `delta` more (or fewer) for one of them.
 * @param {BusinessNumber[]} numbers @param {string | undefined} id @param {number} delta
 */
function numbersWithUnread(numbers, id, delta) {
  if (!id || delta === 0) return numbers;
  return numbers.map((n) => (n.phoneNumberId === id ? { ...n, unreadCount: Math.max(0, n.unreadCount + delta) } : n));
}

/**
 * @typedef {object} State
 * @property {Conversation[]} conversations newest first
 * @property {boolean} moreConversations
 * @property {string | null} selected
 * @property {Record<string, Message[]>} messages per conversation, oldest first
 * @property {Record<string, boolean>} moreMessages
 * @property {"connecting" | "online" | "offline"} connection
 * @property {boolean} needToken
 * @property {string} notice an error to show for a moment
 * @property {BusinessNumber[]} numbers the deployment's business numbers (the switcher shows with two or more)
 * @property {string} number the business number the list is narrowed to ("": all)
 * @property {boolean} newChat the "new chat" form is open
 */

/** @type {State} */
const initial = {
  conversations: [],
  moreConversations: false,
  selected: null,
  messages: {},
  moreMessages: {},
  connection: "connecting",
  needToken: false,
  notice: "",
  numbers: [],
  number: storedNumber(),
  newChat: false,
};

/**
 * @typedef {{type: "conversations", list: Conversation[], more?: boolean, number?: string, replace?: boolean}
 *   | {type: "messages", id: string, list: Message[], more?: boolean}
 *   | {type: "newMessage", message: Message, countUnread: boolean}
 *   | {type: "status", update: StatusUpdate}
 *   | {type: "local", message: Message}
 *   | {type: "select", id: string | null}
 *   | {type: "read", id: string}
 *   | {type: "connection", state: State["connection"]}
 *   | {type: "needToken", value: boolean}
 *   | {type: "notice", text: string}
 *   | {type: "numbers", list: BusinessNumber[]}
 *   | {type: "number", id: string}
 *   | {type: "newChat", open: boolean}
 *   | {type: "batch", actions: Action[]}} Action
 */

/** @param {State} s @param {Action} a @returns {State} */
function reducer(s, a) {
  switch (a.type) {
    case "conversations":
      // An answer for the number shown before the switcher changed: dropped.
      if (a.number !== undefined && a.number !== s.number) return s;
      return {
        ...s,
        conversations: mergeConversations(a.replace ? [] : s.conversations, a.list),
        moreConversations: a.more ?? s.moreConversations,
      };
    case "messages":
      return {
        ...s,
        messages: { ...s.messages, [a.id]: mergeMessages(s.messages[a.id] || [], a.list) },
        moreMessages: a.more === undefined ? s.moreMessages : { ...s.moreMessages, [a.id]: a.more },
      };
    case "newMessage": {
      const m = a.message;
      const loaded = s.messages[m.conversationId];
      return {
        ...s,
        conversations: ofNumber(m, s.number) ? conversationsWithMessage(s.conversations, m, a.countUnread) : s.conversations,
        numbers: a.countUnread ? numbersWithUnread(s.numbers, m.phoneNumberId, 1) : s.numbers,
        ...(loaded ? keep(s, m.conversationId, upsertMessage(loaded, m)) : {}),
      };
    }
    case "local": {
      const m = a.message;
      return {
        ...s,
        conversations: ofNumber(m, s.number) ? conversationsWithMessage(s.conversations, m, false) : s.conversations,
        ...keep(s, m.conversationId, upsertMessage(s.messages[m.conversationId] || [], m)),
      };
    }
    case "status": {
      const u = a.update;
      const loaded = s.messages[u.conversationId];
      return {
        ...s,
        conversations: conversationsWithStatus(s.conversations, u),
        messages: loaded ? { ...s.messages, [u.conversationId]: applyStatus(loaded, u) } : s.messages,
      };
    }
    case "select":
      return { ...s, selected: a.id };
    case "read": {
      const c = s.conversations.find((x) => x.conversationId === a.id);
      return {
        ...s,
        conversations: s.conversations.map((x) => (x.conversationId === a.id ? { ...x, unreadCount: 0 } : x)),
        numbers: c ? numbersWithUnread(s.numbers, c.phoneNumberId, -Math.max(0, c.unreadCount)) : s.numbers,
      };
    }
    case "numbers":
      return { ...s, numbers: a.list };
    case "number":
      return a.id === s.number ? s : { ...s, number: a.id, conversations: [], moreConversations: false };
    case "newChat":
      return { ...s, newChat: a.open };
    case "connection":
      return { ...s, connection: a.state };
    case "needToken":
      return { ...s, needToken: a.value };
    case "notice":
      return { ...s, notice: a.text };
    case "batch":
      return a.actions.reduce(reducer, s);
  }
}

/** A random id (`crypto.randomUUID` needs a secure context; this does not). */
function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `web-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** @param {{onToken: (t: string) => void, wrong: boolean}} props */
function TokenForm({ onToken, wrong }) {
  const [value, setValue] = useState("");
  return html`<div class="token-screen">
    <form
      class="token-form"
      aria-label="Sign in"
      onSubmit=${(/** @type {Event} */ e) => {
        e.preventDefault();
        if (value.trim()) onToken(value.trim());
      }}
    >
      <${ChatIcon} />
      <h1>Inbox</h1>
      <p>This server needs an access token (one of its <code>API_TOKENS</code>). It is kept for this browser tab only.</p>
      ${wrong ? html`<p class="form-error" role="alert">That token was not accepted.</p>` : null}
      <label>Access token
        <input type="password" name="token" autocomplete="current-password" required value=${value}
          onInput=${(/** @type {any} */ e) => setValue(e.currentTarget.value)} />
      </label>
      <button type="submit" class="primary">Open the inbox</button>
    </form>
  </div>`;
}

function App() {
  const [state, dispatch] = useReducer(reducer, initial);
  const [search, setSearch] = useState("");
  const [results, setResults] = useState(/** @type {Message[] | null} */ (null));
  /** The message a search hit opened: scrolled to and marked. */
  const [found, setFound] = useState(/** @type {{conversationId: string, messageId: string} | null} */ (null));
  const [triedToken, setTriedToken] = useState(false);
  /** Current state for the socket's handlers. */
  const now = useRef(state);
  now.current = state;
  /** @type {{current: import("./vendor/socket.io-client-4.8.4.js").Socket | null}} */
  const socketRef = useRef(null);
  const loadingMore = useRef(false);
  /** Whether the server has `GET /api/search` (its OpenAPI document says; asked once). */
  const searchAvailable = useRef(/** @type {Promise<boolean> | null} */ (null));
  /** Whether the next chat opened should focus the composer (not when moving through the list by keyboard). */
  const focusComposer = useRef(true);

  /** A failure shown to the user (a 401 asks for the token instead). @param {unknown} e */
  const fail = (e) => {
    if (e instanceof Unauthorized) {
      dispatch({ type: "needToken", value: true });
      return;
    }
    dispatch({ type: "notice", text: e instanceof Error ? e.message : String(e) });
  };

  /** @param {string} id */
  const markRead = (id) => {
    dispatch({ type: "read", id });
    post(`/api/conversations/${encodeURIComponent(id)}/read`, {}).catch(fail);
  };

  /** The newest page of a conversation's messages. @param {string} id */
  const loadMessages = async (id) => {
    const list = /** @type {Message[]} */ (await request(`/api/conversations/${encodeURIComponent(id)}/messages${query({ limit: String(PAGE) })}`));
    dispatch({ type: "messages", id, list, more: list.length >= PAGE });
  };

  /** The business numbers (none from a server without `GET /api/numbers`). */
  const loadNumbers = async () => {
    try {
      const list = /** @type {BusinessNumber[]} */ (await request("/api/numbers"));
      return Array.isArray(list) ? list : [];
    } catch (e) {
      if (e instanceof ApiFailure && e.status === 404) return [];
      throw e;
    }
  };

  /** The newest page of the list, for one number ("": all). @param {string} number */
  const loadConversations = async (number) => {
    const list = /** @type {Conversation[]} */ (
      await request(`/api/conversations${query({ limit: String(PAGE), phoneNumberId: number })}`)
    );
    dispatch({ type: "conversations", list, more: list.length >= PAGE, number, replace: true });
  };

  /** Everything shown, again from REST (first load, resync, a resume without `lastSeq`). */
  const reload = async () => {
    try {
      const number = now.current.number;
      const [numbers, listed] = await Promise.all([
        loadNumbers(),
        loadConversations(number).then(
          () => true,
          (e) => {
            if (number && e instanceof ApiFailure && (e.status === 400 || e.status === 404)) return false;
            throw e;
          },
        ),
      ]);
      dispatch({ type: "needToken", value: false });
      dispatch({ type: "numbers", list: numbers });
      // A number kept from before that is gone (or not this token's, or the
      // only one left): back to all of them.
      if (number && (!listed || numbers.length < 2 || !numbers.some((n) => n.phoneNumberId === number))) {
        chooseNumber("");
      }
      const open = now.current.selected;
      if (open) await loadMessages(open);
    } catch (e) {
      fail(e);
    }
  };

  /** Narrows the list to one business number ("": all). @param {string} id */
  const chooseNumber = (id) => {
    storeNumber(id);
    if (id === now.current.number) return;
    dispatch({ type: "number", id });
    loadConversations(id).catch(fail);
  };

  /** The numbers again, a moment after an event from a number not known yet. */
  const numbersRefresh = useRef(0);
  const refreshNumbersSoon = () => {
    if (numbersRefresh.current) return;
    numbersRefresh.current = setTimeout(async () => {
      try {
        dispatch({ type: "numbers", list: await loadNumbers() });
      } catch (e) {
        fail(e);
      }
      // At most every few seconds, however many such events come.
      setTimeout(() => (numbersRefresh.current = 0), 5000);
    }, 300);
  };

  const moreConversations = async () => {
    const s = now.current;
    const last = s.conversations[s.conversations.length - 1];
    if (loadingMore.current || !s.moreConversations || !last || search) return;
    loadingMore.current = true;
    try {
      const number = s.number;
      const list = /** @type {Conversation[]} */ (
        await request(
          `/api/conversations${query({ limit: String(PAGE), before: last.lastTimestamp, beforeId: last.lastMessageId, phoneNumberId: number })}`,
        )
      );
      dispatch({ type: "conversations", list, more: list.length >= PAGE, number });
    } catch (e) {
      fail(e);
    } finally {
      loadingMore.current = false;
    }
  };

  /** @param {string} id */
  const olderMessages = async (id) => {
    const oldest = (now.current.messages[id] || [])[0];
    if (!oldest) return;
    try {
      const list = /** @type {Message[]} */ (
        await request(
          `/api/conversations/${encodeURIComponent(id)}/messages${query({ limit: String(PAGE), before: oldest.timestamp, beforeId: oldest.messageId })}`,
        )
      );
      dispatch({ type: "messages", id, list, more: list.length >= PAGE });
    } catch (e) {
      fail(e);
    }
  };

  // The live connection first, then REST: nothing falls in between.
  useEffect(() => {
    // WebSocket first, long-polling only where it fails: a session the
    // client closes (signing in, leaving) has no poll left hanging to be
    // answered 400, and connecting takes one round trip less.
    const socket = io({
      auth: { token: token() },
      reconnectionDelayMax: 3000,
      transports: ["websocket", "polling"],
      tryAllTransports: true,
    });
    socketRef.current = socket;
    let loaded = false;
    /** @param {{seq?: number}} event */
    const track = (event) => {
      const seq = event?.seq;
      const last = /** @type {number | undefined} */ (socket.auth.lastSeq);
      if (typeof seq === "number" && (last === undefined || seq > last)) socket.auth.lastSeq = seq;
    };
    // Without a connection in a moment, show what REST has (and ask for a token on a 401).
    const fallback = setTimeout(() => {
      if (!loaded) {
        loaded = true;
        reload();
      }
    }, 2500);
    socket.on("connect", () => {
      dispatch({ type: "connection", state: "online" });
      // A reconnect with `lastSeq` resumes where it stopped; without one it
      // starts at the head, so whatever happened meanwhile comes from REST.
      if (!loaded || socket.auth.lastSeq === undefined) {
        loaded = true;
        reload();
      }
    });
    socket.on("disconnect", (/** @type {string} */ reason) => {
      dispatch({ type: "connection", state: "offline" });
      if (reason === "io server disconnect") socket.connect();
    });
    socket.on("connect_error", (/** @type {Error} */ err) => {
      dispatch({ type: "connection", state: "offline" });
      if (/unauthori[sz]ed/i.test(err.message)) {
        dispatch({ type: "needToken", value: true });
      } else if (!socket.active) {
        setTimeout(() => socket.connect(), 2000);
      }
    });
    // Events are applied in batches, one render per batch: a burst of
    // hundreds of messages costs a few renders, not hundreds.
    /** @type {Action[]} */
    let queue = [];
    let flush = 0;
    /** @param {Action} action */
    const enqueue = (action) => {
      queue.push(action);
      if (!flush) {
        flush = setTimeout(() => {
          flush = 0;
          const actions = queue;
          queue = [];
          dispatch({ type: "batch", actions });
        }, 16);
      }
    };
    /** Marks a chat read once a burst of its messages is over. @type {Map<string, number>} */
    const reading = new Map();
    /** @param {string} id */
    const readSoon = (id) => {
      if (!reading.has(id)) {
        reading.set(
          id,
          setTimeout(() => {
            reading.delete(id);
            markRead(id);
          }, 500),
        );
      }
    };
    socket.on("newMessage", (/** @type {Message} */ m) => {
      track(m);
      const s = now.current;
      const looking = s.selected === m.conversationId && document.visibilityState === "visible";
      // A number not known yet (the second one ever, say): the switcher may have to show.
      if (m.phoneNumberId && !s.numbers.some((n) => n.phoneNumberId === m.phoneNumberId)) {
        refreshNumbersSoon();
      }
      enqueue({ type: "newMessage", message: m, countUnread: m.direction === "inbound" && !looking });
      if (looking && m.direction === "inbound") readSoon(m.conversationId);
    });
    socket.on("statusUpdate", (/** @type {StatusUpdate} */ u) => {
      track(u);
      enqueue({ type: "status", update: u });
    });
    socket.on("resync", () => {
      delete socket.auth.lastSeq;
      reload();
    });
    return () => {
      clearTimeout(fallback);
      clearTimeout(flush);
      reading.forEach((t) => clearTimeout(t));
      socket.disconnect();
    };
  }, []);

  // Unread count in the title while the tab is hidden; reading on return.
  useEffect(() => {
    const update = () => {
      const s = now.current;
      // With the list narrowed to one number, the other numbers' unread count too.
      const unread =
        s.numbers.length >= 2
          ? s.numbers.reduce((n, x) => n + Math.max(0, x.unreadCount), 0)
          : s.conversations.reduce((n, c) => n + (c.unreadCount > 0 ? c.unreadCount : 0), 0);
      document.title = document.visibilityState === "hidden" && unread > 0 ? `(${unread}) ${TITLE}` : TITLE;
    };
    update();
    const onVisible = () => {
      update();
      const s = now.current;
      const open = s.conversations.find((c) => c.conversationId === s.selected);
      if (document.visibilityState === "visible" && open && open.unreadCount > 0) markRead(open.conversationId);
    };
    document.addEventListener("visibilitychange", onVisible);
    return () => document.removeEventListener("visibilitychange", onVisible);
  }, [state.conversations, state.numbers]);

  // Esc closes the chat.
  useEffect(() => {
    /** @param {KeyboardEvent} e */
    const onKey = (e) => {
      if (e.key === "Escape" && now.current.selected) dispatch({ type: "select", id: null });
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, []);

  // A notice goes away by itself.
  useEffect(() => {
    if (!state.notice) return;
    const t = setTimeout(() => dispatch({ type: "notice", text: "" }), 6000);
    return () => clearTimeout(t);
  }, [state.notice]);

  // Messages found by `GET /api/search`, where the server has it.
  useEffect(() => {
    const q = search.trim();
    setResults(null);
    if (q.length < 2) return;
    let live = true;
    const t = setTimeout(async () => {
      try {
        searchAvailable.current ??= request("/api/openapi.json").then(
          (doc) => !!doc?.paths?.["/api/search"],
          () => false,
        );
        if (!(await searchAvailable.current)) return;
        const r = await request(`/api/search${query({ q, limit: "20" })}`);
        if (live) setResults(Array.isArray(r?.results) ? r.results : []);
      } catch (e) {
        if (!(e instanceof ApiFailure && e.status === 400)) fail(e);
      }
    }, 250);
    return () => {
      live = false;
      clearTimeout(t);
    };
  }, [search]);

  /** @param {string | null} id @param {boolean} [byKeyboard] */
  const select = (id, byKeyboard = false) => {
    focusComposer.current = !byKeyboard;
    setFound(null);
    dispatch({ type: "select", id });
    if (!id) return;
    loadMessages(id).catch(fail);
    markRead(id);
  };

  /**
   * Opens a search hit's conversation at that message: older pages are
   * read until it is there (a bounded number of them).
   * @param {Message} hit
   */
  const openHit = async (hit) => {
    const id = hit.conversationId;
    focusComposer.current = false;
    dispatch({ type: "select", id });
    markRead(id);
    setFound({ conversationId: id, messageId: hit.messageId });
    try {
      await loadMessages(id);
      const has = () => (now.current.messages[id] || []).some((m) => m.messageId === hit.messageId || m._id === hit._id);
      // A macrotask between pages: the state the page rendered is what `has` reads.
      const rendered = () => new Promise((resolve) => setTimeout(resolve, 0));
      await rendered();
      for (let page = 0; page < 40 && !has() && now.current.moreMessages[id]; page++) {
        await olderMessages(id);
        await rendered();
      }
    } catch (e) {
      fail(e);
    }
  };

  /**
   * Sends a message: shown at once as pending, then as the API and the
   * status events say.
   * @param {string} conversationId
   * @param {Record<string, unknown>} fields what goes in the body besides the conversation
   * @param {Partial<Message>} shown the pending bubble
   */
  const send = async (conversationId, fields, shown) => {
    const clientMessageId = newId();
    const number = now.current.conversations.find((c) => c.conversationId === conversationId)?.phoneNumberId;
    /** @type {Message} */
    const pending = {
      _id: `tmp:${clientMessageId}`,
      messageId: clientMessageId,
      clientMessageId,
      conversationId,
      timestamp: new Date().toISOString(),
      type: "text",
      body: "",
      status: "pending",
      userName: "Business",
      direction: "outbound",
      // The list narrowed to one number leaves out another number's chat.
      ...(number ? { phoneNumberId: number } : {}),
      ...shown,
    };
    dispatch({ type: "local", message: pending });
    try {
      const stored = /** @type {Message} */ (
        await post("/api/messages", { conversationId, clientMessageId, ...fields }, { "Idempotency-Key": clientMessageId })
      );
      dispatch({ type: "local", message: { ...stored, clientMessageId } });
    } catch (e) {
      if (e instanceof Unauthorized) fail(e);
      const text = e instanceof Error ? e.message : String(e);
      dispatch({
        type: "local",
        message: {
          ...pending,
          status: "failed",
          errors: [{ title: text }],
          retry: () => {
            dispatch({ type: "local", message: { ...pending, status: "failed", retried: true } });
            send(conversationId, fields, shown);
          },
        },
      });
    }
  };

  /** @param {Message} m */
  const retry = (m) => {
    if (m.retry) {
      m.retry();
      return;
    }
    // Failed at WhatsApp: the same again, as a new message.
    dispatch({ type: "local", message: { ...m, retried: true } });
    if (m.type === "text") send(m.conversationId, { message: m.body }, { body: m.body });
    else dispatch({ type: "notice", text: "Only a text can be sent again: attach the file again." });
  };

  /** @param {string} text */
  const sendText = (text) => {
    const id = now.current.selected;
    if (id) send(id, { message: text }, { body: text });
  };

  /** @param {File} file @param {string} caption */
  const sendFile = async (file, caption) => {
    const id = now.current.selected;
    if (!id) return;
    const kind = file.type.startsWith("image/")
      ? "image"
      : file.type.startsWith("video/")
        ? "video"
        : file.type.startsWith("audio/")
          ? "audio"
          : "document";
    const preview = kind === "image" ? URL.createObjectURL(file) : undefined;
    try {
      const form = new FormData();
      form.append("file", file, file.name);
      const uploaded = /** @type {{id: string}} */ (await request("/api/media", { method: "POST", body: form }));
      /** @type {Record<string, unknown>} */
      const media = { id: uploaded.id };
      if (caption && kind !== "audio") media.caption = caption;
      if (kind === "document") media.filename = file.name;
      await send(id, { [kind]: media }, {
        type: kind,
        body: caption || (kind === "document" ? `[Document: ${file.name}]` : `[${kind[0].toUpperCase()}${kind.slice(1)}]`),
        content: media,
        localPreview: preview,
      });
    } catch (e) {
      fail(e);
    }
  };

  /** @param {Template} t */
  const sendTemplate = (t) => {
    const id = now.current.selected;
    if (!id) return;
    send(id, { template: templateBody(t) }, { type: "template", body: `[Template: ${t.name}]` });
  };

  /**
   * Starts a chat with a template, through the number chosen; the new
   * conversation opens (in the list shown: the number it is with, or all).
   * @param {import("./numbers.js").NewChatRequest} r
   */
  const startChat = async (r) => {
    const clientMessageId = newId();
    const stored = /** @type {Message} */ (
      await post(
        "/api/messages",
        { to: r.to, ...(r.phoneNumberId ? { phoneNumberId: r.phoneNumberId } : {}), clientMessageId, template: templateBody(r.template) },
        { "Idempotency-Key": clientMessageId },
      )
    );
    const number = stored.phoneNumberId || r.phoneNumberId;
    if (number && now.current.number && now.current.number !== number) chooseNumber(number);
    dispatch({ type: "newChat", open: false });
    dispatch({ type: "local", message: { ...stored, clientMessageId } });
    select(stored.conversationId);
  };

  /** @param {string} value */
  const signIn = (value) => {
    setToken(value);
    setTriedToken(true);
    const socket = socketRef.current;
    if (socket) {
      socket.auth.token = value;
      socket.disconnect();
      delete socket.auth.lastSeq;
      socket.connect();
    }
    reload();
  };

  if (state.needToken) return html`<${TokenForm} onToken=${signIn} wrong=${triedToken} />`;

  const q = search.trim().toLowerCase();
  const digits = q.replace(/[^0-9]/g, "");
  const shownConversations = q
    ? state.conversations.filter(
        (c) => displayName(c).toLowerCase().includes(q) || (digits.length > 0 && c.conversationId.includes(digits)),
      )
    : state.conversations;
  const open = state.conversations.find((c) => c.conversationId === state.selected);
  const several = state.numbers.length >= 2;
  const shownResults = results && several ? results.filter((m) => ofNumber(m, state.number)) : results;
  /** The open chat's business number, in its header (with two or more numbers). */
  let via = null;
  if (several && state.selected) {
    const openMessages = state.messages[state.selected] || [];
    const last = openMessages[openMessages.length - 1];
    const id = open?.phoneNumberId || last?.phoneNumberId;
    const known = state.numbers.find((n) => n.phoneNumberId === id);
    const display = open?.businessNumber || last?.businessNumber || known?.businessNumber;
    if (id || display) via = numberLabel({ phoneNumberId: id || "", businessNumber: display });
  }
  const connectionText = state.connection === "online" ? "online" : state.connection === "connecting" ? "connecting…" : "offline, reconnecting…";

  return html`<div class=${`app${state.selected ? " chat-open" : ""}`}>
    <aside class="sidebar">
      <header class="side-header">
        <span class="brand-name"><${ChatIcon} /> Inbox</span>
        <span class="side-actions">
          <span class=${`connection ${state.connection}`} role="status" aria-label="Connection">${connectionText}</span>
          <button type="button" class="icon-button" aria-label="New chat" title="New chat"
            onClick=${() => dispatch({ type: "newChat", open: true })}><${NewChatIcon} /></button>
        </span>
      </header>
      ${state.newChat
        ? html`<${NewChat}
            numbers=${state.numbers}
            selected=${state.number}
            onStart=${startChat}
            onClose=${() => dispatch({ type: "newChat", open: false })}
          />`
        : null}
      <div class="search">
        <label class="search-box">
          <${SearchIcon} />
          <input type="search" aria-label="Search" placeholder="Search or start a new chat" value=${search}
            onInput=${(/** @type {any} */ e) => setSearch(e.currentTarget.value)} />
        </label>
      </div>
      ${several ? html`<${NumberSwitcher} numbers=${state.numbers} selected=${state.number} onChoose=${chooseNumber} />` : null}
      <${ConversationList}
        conversations=${shownConversations}
        selected=${state.selected}
        onSelect=${select}
        onMore=${moreConversations}
        more=${state.moreConversations && !q}
      >
        ${shownResults && shownResults.length
          ? html`<div class="results" role="list" aria-label="Messages found">
              <h2>Messages</h2>
              ${shownResults.map(
                (m) => html`<div role="listitem" class="result" key=${m._id}>
                  <button type="button" class="result-button" onClick=${() => openHit(m)}>
                    <span class="row-top">
                      <span class="row-name">${m.conversationName || m.userName || phoneOf(m.conversationId)}</span>
                      <span class="row-time">${listTime(m.timestamp)}</span>
                    </span>
                    <span class="preview-text">${m.direction === "outbound" ? "You: " : ""}${m.highlight
                      ? m.highlight.map((p) => (p.hit ? html`<mark>${p.text}</mark>` : p.text))
                      : m.body}</span>
                  </button>
                </div>`,
              )}
            </div>`
          : null}
      </${ConversationList}>
    </aside>
    <main class="main">
      ${state.selected
        ? html`<${Chat}
            conversation=${open}
            conversationId=${state.selected}
            messages=${state.messages[state.selected] || []}
            more=${!!state.moreMessages[state.selected]}
            onOlder=${() => olderMessages(/** @type {string} */ (state.selected))}
            onBack=${() => select(null)}
            onRetry=${retry}
            via=${via}
            found=${found && found.conversationId === state.selected ? found.messageId : null}
          >
            <${Composer}
              conversationId=${state.selected}
              focus=${focusComposer.current}
              windowOpen=${windowOpen(open)}
              onText=${sendText}
              onFile=${sendFile}
              onTemplate=${sendTemplate}
            />
          </${Chat}>`
        : html`<div class="intro">
            <${ChatIcon} />
            <h1>Inbox</h1>
            <p>Answer your customers' WhatsApp messages here. Pick a conversation on the left; new messages show up as they arrive.</p>
          </div>`}
      ${state.notice ? html`<div class="notice" role="alert">${state.notice}</div>` : null}
    </main>
  </div>`;
}

const root = document.getElementById("app");
if (root) render(html`<${App} />`, root);
