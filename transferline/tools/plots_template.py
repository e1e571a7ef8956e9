"""Write the page template that makes `dvc plots show` / `dvc plots diff` work offline.

DVC's default page loads Vega, Vega-Lite and vega-embed from a CDN, so on a machine without
network it opens blank. This template inlines them instead: the bundle that the pinned
`vl-convert-python` wheel ships (`vl_convert.javascript_bundle`, Vega-Lite 5 like the specs DVC
writes). `.dvc/config` points DVC at it (`plots.html_template = plots.html`, relative to .dvc/).
`make install` runs this; the output (about 0.9 MB of minified third-party JavaScript, fully
determined by the pinned wheel) is git-ignored rather than committed.

    transferline plots-template --out .dvc/plots.html   (make install runs it)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import vl_convert

from transferline.outputs.atomic import write_text

VEGA_LITE = "5.21"  # DVC's plot templates are Vega-Lite v5 specs
# DVC fills these by plain text replacement over the whole page; {scripts} (its CDN <script>
# tags) is deliberately left out.
PLACEHOLDERS = ("{refresh_tag}", "{plot_divs}")
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- Vega %(vega)s, Vega-Lite %(vega_lite)s, vega-embed %(embed)s, inlined from
         vl-convert-python %(vl_convert)s by `transferline plots-template`: no network needed -->
    <script>(function () {  // its own scope: only vegaEmbed, vega, vegaLite become globals
%(bundle)s
})();</script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def page() -> str:
    """The template text; AssertionError if the bundle would break the page."""
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    # an inline script ends at the first "</script"; DVC would replace a placeholder inside it
    assert "</script" not in bundle.lower(), "the bundle holds '</script': it cannot be inlined"
    assert not any(p in bundle for p in PLACEHOLDERS + ("{scripts}",)), (
        "the bundle holds a DVC placeholder"
    )
    return PAGE % {
        "bundle": bundle,
        "vega": vl_convert.get_vega_version(),
        "vega_lite": VEGA_LITE,
        "embed": vl_convert.get_vega_embed_version(),
        "vl_convert": _version(),
    }


def _version() -> str:
    from importlib.metadata import version

    return version("vl-convert-python")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="transferline plots-template", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(".dvc/plots.html"),
        help="where to write the template (default: .dvc/plots.html)",
    )
    args = parser.parse_args(argv)
    text = page()
    write_text(args.out, text)  # atomic: an interrupted run leaves no half-written page
    print(
        f"{args.out}: {len(text.encode()) / 1e6:.1f} MB, Vega-Lite {VEGA_LITE} inlined",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
