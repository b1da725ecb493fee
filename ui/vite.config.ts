import { resolve } from "node:path";
import { defineConfig } from "vitest/config";

const root = __dirname;

// `--mode harness` builds the UI with a fake backend (tests/harness.html) for Playwright.
// `--mode inspector` builds the CLI's web inspector (inspector/index.html) into dist-inspector,
// which tunnel/build.rs embeds in `ggrok`; there the views' "./api" is api.web.ts (HTTP, not IPC).
export default defineConfig(({ mode }) => ({
  root: mode === "inspector" ? resolve(root, "inspector") : root,
  base: "./",
  clearScreen: false,
  server: { port: 5173, strictPort: true, host: "127.0.0.1" },
  resolve:
    mode === "inspector"
      ? { alias: [{ find: /^(\.\.?\/)+api$/, replacement: resolve(root, "src/api.web.ts") }] }
      : {},
  build:
    mode === "inspector"
      ? { outDir: resolve(root, "dist-inspector"), emptyOutDir: true, target: "es2022" }
      : mode === "harness"
      ? {
          outDir: resolve(root, "tests/dist"),
          emptyOutDir: true,
          rollupOptions: { input: resolve(root, "tests/harness.html") },
          target: "es2022",
        }
      : { outDir: resolve(root, "dist"), emptyOutDir: true, target: "es2021" },
  test: { include: ["src/**/*.test.ts"], environment: "node" },
}));
