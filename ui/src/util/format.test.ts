import { describe, expect, it } from "vitest";
import { filterRows, pushConnection, pushRow, statusLabel, validatePort, validateRemotePort, validateSubdomain } from "./format";
import type { ConnectionRow, Summary } from "../types";

const row = (id: number, path = "/", method = "GET", status: number | null = 200): Summary => ({
  id,
  startedMs: 0,
  method,
  path,
  status,
  durationMs: 1,
  size: 1,
  error: null,
});

describe("validatePort", () => {
  it("accepts 1..65535", () => {
    expect(validatePort("1")).toEqual({ port: 1 });
    expect(validatePort(" 65535 ")).toEqual({ port: 65535 });
  });
  it("rejects the rest", () => {
    for (const bad of ["", "0", "65536", "-1", "80a", "1.5"]) {
      expect(validatePort(bad)).toHaveProperty("error");
    }
  });
});

describe("validateSubdomain", () => {
  it("empty means server picks", () => expect(validateSubdomain(" ")).toEqual({ name: null }));
  it("refuses uppercase with the lowercase spelling", () =>
    expect(validateSubdomain("My-App")).toEqual({ error: "Use lowercase: my-app" }));
  it("accepts a label", () => expect(validateSubdomain(" my-app ")).toEqual({ name: "my-app" }));
  it("rejects bad labels", () => {
    for (const bad of ["-a", "a-", "a.b", "a_b", "x".repeat(64), "ü"]) {
      expect(validateSubdomain(bad)).toHaveProperty("error");
    }
  });
});

describe("rows", () => {
  it("caps newest first", () => {
    let rows: Summary[] = [];
    for (let i = 1; i <= 5; i++) rows = pushRow(rows, row(i), 3);
    expect(rows.map((r) => r.id)).toEqual([5, 4, 3]);
  });
  it("filters by every word", () => {
    const rows = [row(1, "/api/users", "POST", 201), row(2, "/index.html"), row(3, "/api/x", "GET", 500)];
    expect(filterRows(rows, "api 500").map((r) => r.id)).toEqual([3]);
    expect(filterRows(rows, "post").map((r) => r.id)).toEqual([1]);
    expect(filterRows(rows, "").length).toBe(3);
  });
});

describe("statusLabel", () => {
  it("shows attempt and reason", () => {
    expect(statusLabel({ state: "reconnecting", attempt: 3, reason: "refused" })).toBe(
      "reconnecting (attempt 3): refused",
    );
    expect(statusLabel({ state: "failed", kind: "name_taken", message: "taken" })).toBe("error: taken");
  });
});

const conn = (id: number, end: string | null = null): ConnectionRow => ({
  id,
  from: "127.0.0.1:1",
  openedMs: 0,
  durationMs: 0,
  bytesUp: 0,
  bytesDown: 0,
  endKind: end === null ? null : "closed",
  end,
});

describe("pushConnection", () => {
  it("puts an opening on top and its end in place, within the cap", () => {
    let rows = [conn(1)];
    rows = pushConnection(rows, conn(2), 2);
    expect(rows.map((r) => r.id)).toEqual([2, 1]);
    rows = pushConnection(rows, conn(1, "closed"), 2);
    expect(rows.map((r) => [r.id, r.end])).toEqual([[2, null], [1, "closed"]]);
    rows = pushConnection(rows, conn(3), 2);
    expect(rows.map((r) => r.id)).toEqual([3, 2]);
  });
});

describe("validateRemotePort", () => {
  it("is optional, else a port", () => {
    expect(validateRemotePort(" ")).toEqual({ port: null });
    expect(validateRemotePort("20022")).toEqual({ port: 20022 });
    expect(validateRemotePort("0")).toHaveProperty("error");
  });
});
