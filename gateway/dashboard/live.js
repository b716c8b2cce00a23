// A live collection: list once, then follow the watch stream from the list's revision (the
// Kubernetes list-then-watch pattern). Never polls. A dropped stream resumes with Last-Event-ID; one
// too far behind (412) lists again.

import { ApiError, listAll, nsPath, stream } from "./api.js";

export class Live {
  /**
   * @param {string} ns namespace
   * @param {"services"|"instances"} kind the list route and its repeated field
   * @param {string} one the watch event's field ("service" / "instance")
   * @param {(o: object) => string} keyOf
   */
  constructor(ns, kind, one, keyOf) {
    this.ns = ns;
    this.kind = kind;
    this.one = one;
    this.keyOf = keyOf;
    this.items = new Map();
    this.listeners = new Set();
    this.revision = "0";
    this.loaded = false;
    this.error = null;
    this.abort = new AbortController();
    this.scheduled = false;
  }

  subscribe(fn) {
    this.listeners.add(fn);
    if (this.loaded || this.error) fn(this);
    return () => this.listeners.delete(fn);
  }

  /** Listeners run at most once per frame, however many events arrived. */
  changed() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      for (const fn of this.listeners) fn(this);
    });
  }

  async start() {
    const base = `${nsPath(this.ns)}/${this.kind}`;
    while (!this.abort.signal.aborted) {
      try {
        if (!this.loaded) {
          const { items, revision } = await listAll(base, this.kind);
          this.items = new Map(items.map((o) => [this.keyOf(o), o]));
          this.revision = revision;
          this.loaded = true;
          this.error = null;
          this.changed();
        }
        await stream(`${base}:watch?sinceRevision=${this.revision}`, {
          signal: this.abort.signal,
          lastEventId: this.revision,
          onEvent: (ev) => this.apply(ev),
        });
      } catch (err) {
        if (this.abort.signal.aborted) return;
        if (err instanceof ApiError) {
          if (err.status === 412) this.loaded = false;
          else if (err.status === 401 || err.status === 403) {
            this.error = err;
            this.changed();
            return;
          }
        }
      }
      // The stream ended or broke: resume after a pause (the server keeps every change since).
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  apply(ev) {
    if (ev.event === "error") {
      this.error = new ApiError(500, JSON.parse(ev.data));
      this.changed();
      return;
    }
    const msg = JSON.parse(ev.data);
    const obj = msg[this.one];
    if (ev.id) this.revision = ev.id;
    if (!obj) return;
    const kind = ev.event !== "message" ? ev.event : String(msg.eventType || "").replace("EVENT_TYPE_", "");
    if (kind === "DELETED") this.items.delete(this.keyOf(obj));
    else this.items.set(this.keyOf(obj), obj);
    this.changed();
  }

  stop() {
    this.abort.abort();
    this.listeners.clear();
  }
}
