"""Build an HTML page template for `dvc plots show/diff --html-template` that renders offline.

DVC's own page loads Vega, Vega-Lite and Vega-Embed from a CDN, so without a network its charts are
blank. This template is DVC's page (dvc_render's PAGE_HTML) with the three libraries inlined instead of
its `{scripts}` slot, at the versions DVC's page names. They are fetched once with `npm pack` from the
npm registry (or whichever registry npm is configured to use; npm checks each tarball's integrity hash)
and the file each package serves to CDNs (its package.json `jsdelivr` entry) is inlined.

    python tools/offline_plots_template.py OUT.html

Writes OUT.html (about 0.8 MB), or leaves it alone when it already holds these versions. Exit status 1
with one line on stderr when npm is missing or the registry cannot be reached.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

LIBS = ("vega", "vega-lite", "vega-embed")  # load order: vega-lite needs vega, vega-embed needs both
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")  # what dvc_render replaces in a template
STAMP = "ganflow offline plots template:"
HINT = "`dvc plots show --json` and MLflow work offline"


class BuildError(Exception):
    pass


def dvc_versions() -> dict[str, str]:
    """The versions of the three libraries that DVC's default page loads from the CDN."""
    from dvc_render.vega import VegaRenderer

    found = dict(re.findall(r"/npm/(vega(?:-lite|-embed)?)@([0-9][\w.+-]*)", VegaRenderer.SCRIPTS))
    if set(found) != set(LIBS):
        raise BuildError(f"cannot read the Vega versions from dvc_render's page (found {found or 'none'})")
    return {lib: found[lib] for lib in LIBS}


def fetch(versions: dict[str, str], workdir: Path) -> dict[str, str]:
    """`npm pack` each library; return its CDN build (JavaScript source) by name."""
    npm = shutil.which("npm")
    if npm is None:
        raise BuildError(f"npm not found (install Node.js + npm, e.g. `apt-get install npm`); {HINT}")
    specs = [f"{lib}@{v}" for lib, v in versions.items()]
    try:
        # one quick retry: an unreachable registry answers in seconds, not after npm's default minute of retries
        r = subprocess.run([npm, "pack", "--json", "--fetch-retries=1", "--fetch-retry-mintimeout=2000",
                            "--pack-destination", str(workdir), *specs], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise BuildError(f"npm pack {' '.join(specs)} timed out (registry unreachable?); {HINT}") from None
    if r.returncode:
        try:
            why = str(json.loads(r.stdout)["error"]["summary"])
        except (ValueError, KeyError, TypeError):
            why = r.stderr
        why = next((ln.strip() for ln in why.splitlines() if ln.strip()), f"exit status {r.returncode}")
        raise BuildError(f"npm pack {' '.join(specs)} failed (registry unreachable?): {why}; {HINT}")
    packed = {info["name"]: info["filename"] for info in json.loads(r.stdout)}
    js = {}
    for lib in LIBS:
        with tarfile.open(workdir / packed[lib]) as tar:
            meta = json.load(tar.extractfile("package/package.json"))
            entry = meta.get("jsdelivr") or meta.get("unpkg")
            if meta.get("name") != lib or meta.get("version") != versions[lib] or not entry:
                raise BuildError(f"unexpected package {packed[lib]}: {meta.get('name')}@{meta.get('version')}")
            js[lib] = tar.extractfile(f"package/{entry.removeprefix('./')}").read().decode("utf-8")
    return js


def build(js: dict[str, str], versions: dict[str, str]) -> str:
    """DVC's page with the libraries inlined where its CDN <script> tags would go."""
    from dvc_render.html import PAGE_HTML

    scripts = []
    for lib in LIBS:
        src = js[lib]
        for ph in PLACEHOLDERS:  # dvc_render fills a template with str.replace: none may occur in the code
            if ph in src:
                raise BuildError(f"{lib} contains the template placeholder {ph}")
        src = re.sub(r"</(script)", r"<\\/\1", src, flags=re.IGNORECASE)  # cannot end the <script> early
        src = re.sub(r"^//# sourceMappingURL=.*$", "", src, flags=re.MULTILINE)  # no .map file beside it
        scripts.append(f"<script>/* {lib}@{versions[lib]} (npm) */\n{src}\n</script>")
    stamp = f"<!-- {STAMP} {' '.join(f'{lib}@{v}' for lib, v in versions.items())} -->"
    page = PAGE_HTML.replace("{scripts}", "\n".join(scripts))
    return page.replace("<head>", f"<head>\n    {stamp}", 1)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[0] + "\nusage: offline_plots_template.py OUT.html", file=sys.stderr)
        return 2
    out = Path(argv[0])
    try:
        versions = dvc_versions()
        want = f"{STAMP} {' '.join(f'{lib}@{v}' for lib, v in versions.items())} -->"
        if out.is_file() and want in out.read_text(encoding="utf-8", errors="replace")[:2000]:
            return 0  # already built for these versions
        with tempfile.TemporaryDirectory() as tmp:
            page = build(fetch(versions, Path(tmp)), versions)
    except BuildError as e:
        print(f"make plots: cannot build the offline plots template: {e}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.tmp")
    part.write_text(page, encoding="utf-8")
    os.replace(part, out)
    print(f"wrote {out} ({', '.join(f'{lib} {v}' for lib, v in versions.items())} inlined, {len(page) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
