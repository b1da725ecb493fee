// QR codes of public URLs, for opening a tunnel on a phone. `uqr` encodes; the SVG is built
// with DOM calls from the module matrix (no markup string is parsed), so it fits the CSP.
import { encode } from "uqr";

const SVG = "http://www.w3.org/2000/svg";

/** Pixels per module at the size the window shows it. */
const SCALE = 4;

/** An `<svg>` of `text` as a QR code (error correction M, a 2-module quiet zone). */
export function qrSvg(text: string): SVGSVGElement {
  const { size, data } = encode(text, { ecc: "M", border: 2 });
  // One path of 1×1 squares: a few hundred bytes of attribute for a URL, one element to draw.
  let d = "";
  data.forEach((row, y) =>
    row.forEach((dark, x) => {
      if (dark) d += `M${x} ${y}h1v1h-1z`;
    }),
  );
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${size} ${size}`);
  svg.setAttribute("width", String(size * SCALE));
  svg.setAttribute("height", String(size * SCALE));
  svg.setAttribute("shape-rendering", "crispEdges");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `QR code of ${text}`);
  svg.dataset.modules = String(size);
  // Dark on light whatever the theme: scanners expect it.
  const bg = document.createElementNS(SVG, "rect");
  bg.setAttribute("width", String(size));
  bg.setAttribute("height", String(size));
  bg.setAttribute("fill", "#fff");
  const fg = document.createElementNS(SVG, "path");
  fg.setAttribute("d", d);
  fg.setAttribute("fill", "#000");
  svg.append(bg, fg);
  return svg;
}
