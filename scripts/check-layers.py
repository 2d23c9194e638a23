#!/usr/bin/env python3
"""Keeps the layers of docs/architecture.md one-way.

- relay/: a module may import (``crate::x``) only modules of an earlier layer, or its own
  top-level module. Modules of the same layer (``transport`` and ``nat``) may not import
  each other.
- gateway/: the same for the sans-IO gateway crate's modules.
- The sans-IO crates must not depend on tokio (``cargo tree``).

``--self-test`` proves the check catches a back-edge: it adds ``use crate::http::AppState;``
to lan/mod.rs in memory and expects a failure.
"""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Layer rank of each top-level module; lower ranks may be imported by higher ones.
RELAY_LAYERS = {
    "shared": 0,
    "config": 1,
    "lan": 2,
    "admission": 3,
    "transport": 4,
    "nat": 4,
    "gateway_port": 5,
    "forward": 6,
    "cluster": 6,
    "http": 7,
    "reload": 8,
    "app": 9,
    "cli": 9,
    "tap": 10,
    "lib": 11,
    "main": 11,
}

GATEWAY_LAYERS = {
    "wire": 0,
    "emit": 0,
    "config": 1,
    "neighbors": 1,
    "nat": 2,
    "gateway": 3,
    "tests": 9,
    "lib": 9,
}

SANS_IO_CRATES = ["labels", "capture", "switch", "gateway", "dhcp", "dns", "webtransport", "webrtc-gw"]
OPTIONAL_SANS_IO_CRATES = ["wisp", "admission", "bus"]

USE_RE = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")


def top_module(src: pathlib.Path, path: pathlib.Path) -> str:
    rel = path.relative_to(src)
    return rel.parts[0].removesuffix(".rs")


def strip_comments(text: str) -> str:
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def violations(src: pathlib.Path, files: dict, layers: dict) -> list:
    found = []
    for path, text in sorted(files.items()):
        module = top_module(src, path)
        if module not in layers:
            found.append(f"{path}: module `{module}` has no layer; add it to {__file__}")
            continue
        for lineno, line in enumerate(strip_comments(text).splitlines(), 1):
            for target in USE_RE.findall(line):
                if target == module or target not in layers:
                    continue
                if layers[target] >= layers[module]:
                    found.append(
                        f"{path}:{lineno}: `{module}` (layer {layers[module]}) imports "
                        f"`crate::{target}` (layer {layers[target]}): a module may import "
                        "only earlier layers (docs/architecture.md, \"Layers\")"
                    )
    return found


def read_tree(src: pathlib.Path) -> dict:
    return {p: p.read_text() for p in src.rglob("*.rs")}


def check_sans_io() -> list:
    crates = SANS_IO_CRATES + [c for c in OPTIONAL_SANS_IO_CRATES if (ROOT / c).is_dir()]
    args = ["cargo", "tree", "--offline", "-e", "normal", "--prefix", "none"]
    for crate in crates:
        args += ["-p", crate]
    try:
        out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        return [f"cargo tree failed: {error}"]
    if re.search(r"^tokio v", out, re.MULTILINE):
        return [f"a sans-IO crate ({', '.join(crates)}) depends on tokio: `{' '.join(args)}`"]
    return []


def main() -> int:
    relay_src = ROOT / "relay" / "src"
    gateway_src = ROOT / "gateway" / "src"
    relay_files = read_tree(relay_src)
    if "--self-test" in sys.argv:
        lan = relay_src / "lan" / "mod.rs"
        relay_files[lan] = relay_files[lan] + "\nuse crate::http::AppState;\n"
        found = violations(relay_src, relay_files, RELAY_LAYERS)
        caught = [v for v in found if "imports `crate::http`" in v]
        if not caught:
            print("self-test FAILED: a back-edge from lan/ to http/ was not reported")
            return 1
        print("self-test ok: the check reports a back-edge:\n  " + caught[0])
        return 0
    found = violations(relay_src, relay_files, RELAY_LAYERS)
    found += violations(gateway_src, read_tree(gateway_src), GATEWAY_LAYERS)
    found += check_sans_io()
    for v in found:
        print(v)
    if found:
        return 1
    print("layers ok: relay/ and gateway/ import only earlier layers; sans-IO crates have no tokio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
