"""tools/offline_plots_template.py: the `make plots` template inlines Vega, so DVC's HTML needs no CDN.
No network here: npm is replaced by a stub that packs small fake libraries."""

import importlib.util
import sys
import textwrap

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("offline_plots_template", ROOT / "tools" / "offline_plots_template.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FAKE_JS = {  # what could break an inlined script: a closing tag in a string, a source map comment
    "vega": 'window.vega={ok:1};var s="</script>";\n//# sourceMappingURL=vega.min.js.map',
    "vega-lite": "window.vegaLite={ok:1};",
    "vega-embed": "window.vegaEmbed=function(el,spec){document.querySelector(el).dataset.drawn='yes'};",
}


@pytest.fixture
def fake_npm(tmp_path, monkeypatch):
    """An `npm` on PATH whose `pack` writes tarballs laid out as the registry's (package/package.json
    naming the CDN build in `jsdelivr`) and prints npm's --json answer."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "npm"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""
        import io, json, sys, tarfile
        from pathlib import Path
        FAKE_JS = {FAKE_JS!r}
        args = sys.argv[1:]
        dest = Path(args[args.index("--pack-destination") + 1])
        out = []
        for spec in [a for a in args[1:] if "@" in a and not a.startswith("-")]:
            name, version = spec.rsplit("@", 1)
            fname = f"{{name}}-{{version}}.tgz"
            files = {{"package/package.json": json.dumps({{"name": name, "version": version,
                                                          "jsdelivr": f"build/{{name}}.min.js"}}),
                      f"package/build/{{name}}.min.js": FAKE_JS[name]}}
            with tarfile.open(dest / fname, "w:gz") as tar:
                for path, text in files.items():
                    data = text.encode()
                    info = tarfile.TarInfo(path)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            out.append({{"name": name, "version": version, "filename": fname}})
        print(json.dumps(out[::-1]))  # any order
    """))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return script


def test_versions_are_the_ones_dvc_loads_from_the_cdn(tool):
    from dvc_render.vega import VegaRenderer

    versions = tool.dvc_versions()
    assert list(versions) == ["vega", "vega-lite", "vega-embed"]
    for lib, v in versions.items():
        assert f"/npm/{lib}@{v}\"" in VegaRenderer.SCRIPTS


def test_template_inlines_the_libraries_and_dvc_fills_it_without_a_cdn(tool, fake_npm, tmp_path, capsys):
    from dvc_render import render_html
    from dvc_render.vega import VegaRenderer

    out = tmp_path / "t" / "offline.html"
    assert tool.main([str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    template = out.read_text()
    assert "{plot_divs}" in template and "{scripts}" not in template
    assert "cdn.jsdelivr" not in template and "sourceMappingURL" not in template
    assert template.count("</script>") == 3  # the string in the fake vega was escaped
    assert template.index("window.vega=") < template.index("window.vegaLite=") < template.index("window.vegaEmbed=")

    renderer = VegaRenderer([{"step": 1, "loss": 0.5, "rev": "workspace"}], "losses", template="linear",
                            x="step", y="loss")
    page = (tmp_path / "index.html")
    render_html([renderer], page, html_template=out)
    html = page.read_text()
    assert "cdn.jsdelivr" not in html and "<script src=" not in html
    assert "vegaEmbed('#losses', spec)" in html and "window.vegaEmbed=" in html

    # a second run with the same versions neither calls npm nor rewrites the file
    fake_npm.unlink()
    before = out.stat().st_mtime_ns
    assert tool.main([str(out)]) == 0 and out.stat().st_mtime_ns == before


def test_without_npm_it_says_so_in_one_line(tool, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert tool.main([str(tmp_path / "offline.html")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "npm not found" in err and "dvc plots show --json" in err
    assert not (tmp_path / "offline.html").exists()


def test_npm_failure_is_one_line_naming_the_reason(tool, tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text("#!/bin/sh\necho '{\"error\": {\"summary\": \"request to x failed, reason: "
                                 "getaddrinfo ENOTFOUND registry.npmjs.org\"}}'\necho 'npm error many lines' >&2\nexit 1\n")
    (bin_dir / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert tool.main([str(tmp_path / "offline.html")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "ENOTFOUND registry.npmjs.org" in err
