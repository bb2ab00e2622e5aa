// Builds the dashboard into dist/, which the aggregator embeds and serves at `/`.
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

export default defineConfig({
  plugins: [react()],
  base: "/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    target: "es2022",
    chunkSizeWarningLimit: 400,
  },
  server: {
    // `npm run dev` against a local aggregator (make run).
    proxy: {
      "/ws": { target: "ws://127.0.0.1:7071", ws: true },
      "/api": "http://127.0.0.1:7071",
    },
  },
});
