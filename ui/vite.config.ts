import { resolve } from "node:path";
import { defineConfig } from "vitest/config";

const root = __dirname;

// `--mode harness` builds the UI with a fake backend (tests/harness.html) for Playwright.
export default defineConfig(({ mode }) => ({
  root,
  base: "./",
  clearScreen: false,
  server: { port: 5173, strictPort: true, host: "127.0.0.1" },
  build:
    mode === "harness"
      ? {
          outDir: resolve(root, "tests/dist"),
          emptyOutDir: true,
          rollupOptions: { input: resolve(root, "tests/harness.html") },
          target: "es2022",
        }
      : { outDir: resolve(root, "dist"), emptyOutDir: true, target: "es2021" },
  test: { include: ["src/**/*.test.ts"], environment: "node" },
}));
