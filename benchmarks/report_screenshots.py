"""Screenshots of a report's sections in headless Chromium: what a reader sees, checked by eye after a report change.

    python benchmarks/report_screenshots.py demo_out            # a finished study (e.g. `synthtl demo`'s out)
    python benchmarks/report_screenshots.py demo_out --out benchmarks/screenshots

Builds nothing: it renders <study>/report/index.html once per section (the page scrolled to the section's anchor)
at 1280 px wide and writes <out>/<section>.png. Needs Chromium (Debian's `chromium` package).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

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
    anchors = re.findall(r"<h2 id='([^']+)'", page.read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        for anchor in ["top", *anchors]:
            shot = out / f"{anchor}.png"
            url = page.as_uri() + ("" if anchor == "top" else f"#{anchor}")
            subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size=1280,{args.height}",
                            "--virtual-time-budget=5000", f"--screenshot={shot.resolve()}", url],
                           capture_output=True, timeout=120, check=True)
            print(f"{shot} ({shot.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
