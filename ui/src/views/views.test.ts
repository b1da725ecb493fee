// The store owns UI state (store.ts): a view module keeps none of its own between renders.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

const dir = __dirname;
const views = readdirSync(dir).filter((f) => f.endsWith(".ts") && !f.endsWith(".test.ts"));

describe("views", () => {
  it.each(views)("%s has no module-level state", (file) => {
    const src = readFileSync(join(dir, file), "utf8");
    // A top-level `let`, or a top-level `const` holding a collection or an object (constants
    // spelled `as const` are fine).
    const state = src
      .split("\n")
      .filter((line) => /^(export )?let /.test(line) || /^(export )?const \w+\s*(:[^=]+)?=\s*(new |\[|\{)/.test(line))
      .filter((line) => !line.endsWith("as const;"));
    expect(state).toEqual([]);
  });
});
