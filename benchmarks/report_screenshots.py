"""Screenshots of a report's sections in headless Chromium: what a reader sees, checked by eye after a report change.

    python benchmarks/report_screenshots.py demo_out            # a finished study (e.g. `synthtl demo`'s out)
    python benchmarks/report_screenshots.py demo_out --out benchmarks/screenshots

Builds nothing: it renders <study>/report/index.html once, 1280 px wide and up to 16,000 px tall, and cuts the
render into <out>/page-01.png, page-02.png ... of `--height` px each (blank ones dropped). Needs Chromium (Debian's
`chromium` package).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", help="a study folder with report/index.html")
    ap.add_argument("--out", default="benchmarks/screenshots", help="folder for the PNGs")
    ap.add_argument("--height", type=int, default=1400, help="pixels of each screenshot")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        raise SystemExit("needs Chromium: apt-get install chromium")
    page = Path(args.study).resolve() / "report" / "index.html"
    if not page.is_file():
        raise SystemExit(f"{page} does not exist: run `synthtl report {args.study}` first")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        whole = Path(tmp) / "page.png"
        subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp}/profile", "--window-size=1280,16000",
                        "--virtual-time-budget=10000", f"--screenshot={whole}", page.as_uri()],
                       capture_output=True, timeout=300, check=True)
        with Image.open(whole) as im:
            tiles = [im.crop((0, y, 1280, min(y + args.height, im.height))) for y in range(0, im.height, args.height)]
    kept = [t for t in tiles if t.convert("L").getextrema()[0] < 250]  # a tile with something drawn on it
    for i, tile in enumerate(kept, 1):
        tile.convert("RGB").quantize(256).save(out / f"page-{i:02d}.png", optimize=True)  # small enough to keep
        print(f"{out / f'page-{i:02d}.png'} ({(out / f'page-{i:02d}.png').stat().st_size // 1024} KB)")

if __name__ == "__main__":
    main()
