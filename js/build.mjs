// Bundles src/widget.js into the Python package, so `pip install` needs no Node and nothing is fetched from a
// CDN at run time.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

const outdir = process.env.DIFFLENS_BUNDLE_DIR || "../difflens_widgets/widgets/static";
mkdirSync(outdir, { recursive: true });
await build({
  entryPoints: ["src/widget.js"],
  bundle: true,
  format: "esm",
  minify: true,
  target: "es2020",
  outfile: `${outdir}/widget.js`,
  legalComments: "none",
});
copyFileSync("src/widget.css", `${outdir}/widget.css`);
console.log(`built ${outdir}/widget.js`);
